//! `cargo bench -p vault-agent --bench listing`: the S3 cross-check on
//! moto (loopback). Prints, per prefix size, the ListObjectsV2 requests one
//! listing takes (the target: ceil(objects / 1000)) and how long it took,
//! up to a 100,000-object prefix. moto is far slower than S3, so the times
//! measure moto more than the agent; the request counts are exact.

#[allow(dead_code)] // the tests' moto helpers; this bench needs only S3
#[path = "../../tests/moto.rs"]
mod moto;

use std::time::Instant;

use vault_agent::config::AwsSection;
use vault_agent::sources::s3_listing::S3Lister;

const BUCKET: &str = "bench-bucket";
/// Objects put at once while filling a prefix.
const PUTS_IN_FLIGHT: usize = 32;

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![1, 999, 1000, 1001, 10_000, 100_000]
    } else {
        sizes
    };
    let moto = moto::Moto::start();
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    rt.block_on(async {
        let sdk = moto.sdk().await;
        let s3 = aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&sdk)
                .force_path_style(true)
                .build(),
        );
        s3.create_bucket()
            .bucket(BUCKET)
            .send()
            .await
            .expect("bucket");
        let aws = AwsSection {
            region: "us-east-1".into(),
            endpoint_url: Some(moto.endpoint.clone()),
            ..AwsSection::default()
        };
        // No pacing in the way: the figure is one listing's own cost.
        let lister = S3Lister::new(&aws, 10_000).await;
        println!(
            "{:>9} {:>9} {:>8} {:>10}",
            "objects", "requests", "target", "seconds"
        );
        for (i, &n) in sizes.iter().enumerate() {
            let prefix = format!("BENCH{i:011}-vaultjob/");
            fill(&s3, &prefix, n).await;
            let started = Instant::now();
            let listing = lister.list(BUCKET, &prefix, |_| {}).await.expect("listing");
            let seconds = started.elapsed().as_secs_f64();
            assert_eq!(listing.objects.len(), n);
            println!(
                "{n:>9} {:>9} {:>8} {seconds:>10.2}",
                listing.requests,
                n.div_ceil(1000).max(1)
            );
        }
    });
}

async fn fill(s3: &aws_sdk_s3::Client, prefix: &str, n: usize) {
    let mut next = 0;
    while next < n {
        let batch: Vec<_> = (next..(next + PUTS_IN_FLIGHT).min(n))
            .map(|j| {
                let s3 = s3.clone();
                let key = format!("{prefix}d{}/f{j:07}.dat", j % 10);
                tokio::spawn(async move {
                    s3.put_object()
                        .bucket(BUCKET)
                        .key(key)
                        .body(b"x".to_vec().into())
                        .send()
                        .await
                        .expect("put")
                })
            })
            .collect();
        for put in batch {
            put.await.expect("a put task");
        }
        next += PUTS_IN_FLIGHT;
    }
}
