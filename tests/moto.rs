//! moto (an AWS API emulator) on 127.0.0.1, started and stopped by the
//! end-to-end tests and the benchmarks alike (each includes this file).
//! `moto_server.py` beside it wraps moto so DynamoDB requests are applied
//! one at a time, as the service does.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const MOTO_SERVER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/moto_server.py");

/// A moto server on 127.0.0.1, killed on drop.
pub struct Moto {
    child: Child,
    pub endpoint: String,
}

impl Moto {
    /// Starts moto on a free port (installing it with pip if missing) and
    /// waits until it accepts connections.
    pub fn start() -> Moto {
        Self::start_with(&[])
    }

    /// Like [`Moto::start`], with environment variables for the server
    /// (`MOTO_HISTORY`, `MOTO_TRACE`: see `moto_server.py`).
    pub fn start_with(envs: &[(&str, &str)]) -> Moto {
        let installed = Command::new("python3")
            .args(["-c", "import moto.server"])
            .status()
            .is_ok_and(|s| s.success());
        if !installed {
            // The README's test command installs what it needs.
            let ok = Command::new("python3")
                .args(["-m", "pip", "install", "--quiet", "moto[server]"])
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "moto is missing and `pip install moto[server]` failed");
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new("python3")
            .args([MOTO_SERVER, "127.0.0.1", &port.to_string()])
            .envs(envs.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto starts");
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "moto did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Moto {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        }
    }

    /// The environment an agent process needs to talk to this moto.
    pub fn envs(&self) -> Vec<(String, String)> {
        [
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_REGION", "us-east-1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    /// An AWS SDK configuration pointed at this moto.
    pub async fn sdk(&self) -> aws_config::SdkConfig {
        for (k, v) in self.envs() {
            // SAFETY: set before any client is built; every caller sets the
            // same values.
            unsafe { std::env::set_var(k, v) };
        }
        aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .endpoint_url(&self.endpoint)
            .load()
            .await
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Creates `name` as `config/cloudformation.yaml` creates the table (the
/// reference's key schema), and waits for nothing: moto creates it at once.
pub async fn create_table(ddb: &aws_sdk_dynamodb::Client, name: &str) {
    use aws_sdk_dynamodb::types::{
        AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
    };
    let key = |attr: &str, kind: KeyType| {
        KeySchemaElement::builder()
            .attribute_name(attr)
            .key_type(kind)
            .build()
            .expect("a key schema element")
    };
    let attr = |attr: &str| {
        AttributeDefinition::builder()
            .attribute_name(attr)
            .attribute_type(ScalarAttributeType::S)
            .build()
            .expect("an attribute definition")
    };
    ddb.create_table()
        .table_name(name)
        .key_schema(key("setId", KeyType::Hash))
        .key_schema(key("objectKey", KeyType::Range))
        .attribute_definitions(attr("setId"))
        .attribute_definitions(attr("objectKey"))
        .billing_mode(BillingMode::PayPerRequest)
        .send()
        .await
        .expect("moto creates the table");
}
