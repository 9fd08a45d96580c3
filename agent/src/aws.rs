//! AWS client configuration, the SDK way: the default credential chain,
//! `[aws] region`, and `[aws] endpoint_url` (or `AWS_ENDPOINT_URL`) for an
//! emulator.

use aws_config::{BehaviorVersion, Region, SdkConfig};

use crate::config::AwsSection;

pub async fn sdk_config(aws: &AwsSection) -> SdkConfig {
    let mut loader =
        aws_config::defaults(BehaviorVersion::latest()).region(Region::new(aws.region.clone()));
    if let Some(url) = &aws.endpoint_url {
        loader = loader.endpoint_url(url);
    }
    loader.load().await
}
