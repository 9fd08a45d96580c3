//! The configuration file's sections. Every section and key has a default, so
//! an empty file is a valid config; unknown keys are errors.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

pub use crate::sinks::SinkConfig;

use super::values::{AccountId, ApiKey, ByteCount, HttpUrl, HumanDuration, PolicySettings, Suffix};

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub agent: AgentSection,
    pub share: ShareSection,
    pub reconcile: ReconcileSection,
    pub store: StoreSection,
    pub http: HttpSection,
    pub source: SourceConfig,
    #[serde(rename = "sink")]
    /// Each entry with where it is in the file (for error positions).
    pub sinks: Vec<Spanned<SinkConfig>>,
    pub aws: AwsSection,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentSection {
    /// Where the SQLite database lives. Must be on a local filesystem.
    pub state_dir: PathBuf,
}

impl Default for AgentSection {
    fn default() -> Self {
        AgentSection {
            state_dir: PathBuf::from("state"),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShareSection {
    /// Where the File Gateway share is mounted on this host.
    pub path: PathBuf,
    pub job_dir_suffix: Suffix,
    pub manifest_suffix: Suffix,
    /// How the share watcher sees local writes.
    pub watch: WatchKind,
    /// Rescan period in `watch = "poll"` mode.
    pub poll_interval: HumanDuration,
    /// Seal (write the manifest of) a dataset after this long without
    /// local changes; off when absent.
    pub seal_after: Option<HumanDuration>,
    /// Largest manifest the agent reads; a larger one leaves its dataset
    /// unreadable (the default fits 10 million lines of ~100 bytes).
    pub max_manifest_bytes: ByteCount,
    /// Longest one manifest read may take (a hung NFS server) before its
    /// dataset is noted as unreadable and the read retried later.
    pub manifest_read_timeout: HumanDuration,
    /// The S3 bucket behind the share: where `verify` and `[reconcile]
    /// verify` list a dataset no notification has named a bucket for.
    pub bucket: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum WatchKind {
    /// Kernel notifications: instant, sees writes made on this host.
    #[default]
    Inotify,
    /// Periodic rescans: also sees files written by other NFS clients.
    Poll,
    /// No share watcher.
    Off,
}

impl Default for ShareSection {
    fn default() -> Self {
        ShareSection {
            path: PathBuf::from("/mnt/vaultdata"),
            job_dir_suffix: Suffix("-vaultjob".into()),
            manifest_suffix: Suffix(".manifest".into()),
            watch: WatchKind::Inotify,
            poll_interval: HumanDuration(Duration::from_secs(10)),
            seal_after: None,
            max_manifest_bytes: ByteCount(1 << 30),
            manifest_read_timeout: HumanDuration(Duration::from_secs(10)),
            bucket: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReconcileSection {
    /// The reference's `reconcileWaitIterations`: the re-check period.
    pub wait: HumanDuration,
    /// The reference's `reconcileCountIterations`; deadline = wait x iterations.
    pub iterations: NonZeroU32,
    /// A bundled policy's name or the path of a `.wasm` component.
    pub policy: Spanned<String>,
    /// Settings handed to the policy's `init`.
    pub policy_config: PolicySettings,
    /// Per-set-id policies; the first route whose glob matches wins.
    #[serde(rename = "route")]
    pub routes: Vec<RouteConfig>,
    /// Longest a single plugin call may run.
    pub plugin_timeout: HumanDuration,
    /// Most linear memory a plugin instance may use, in MiB.
    pub plugin_memory_mb: NonZeroU32,
    /// A plugin's time per engine batch: calls past it are deferred to the
    /// next batch, so a slow policy never holds up other datasets' commits.
    pub plugin_time_per_batch: HumanDuration,
    /// Largest component file loaded (compiling costs time and memory).
    pub plugin_max_size: ByteCount,
    /// Longest a component may take to compile (in a child process).
    pub plugin_compile_timeout: HumanDuration,
    /// Most memory compiling a component may use, in MiB.
    pub plugin_compile_memory_mb: NonZeroU32,
    /// Cross-check datasets against the S3 listing of their prefix: `off`,
    /// `before-timeout`, or `periodic`. Absent: `before-timeout` when the
    /// agent uses AWS (an SQS source, an EventBridge sink, the DynamoDB
    /// store, or `[aws]` settings), else `off`.
    pub verify: Option<VerifyMode>,
    /// With `verify = "periodic"`: how often a waiting dataset is listed...
    pub verify_every: HumanDuration,
    /// ...once it has waited this long since its first notification.
    pub verify_after: HumanDuration,
    /// Most S3 listing requests per second, over all datasets.
    pub verify_requests_per_second: NonZeroU32,
    /// Prove uploads' bytes: compare S3's checksum of each object with the
    /// file's on the share. `off`, `report` (outcomes recorded and shown;
    /// decisions as without) or `required` (`Successful` only once every
    /// file of the manifest is verified). Absent: `report` when the agent
    /// uses AWS, else `off`.
    pub verify_content: Option<ContentMode>,
    /// Most `HeadObject` requests per second for content checks.
    pub verify_content_requests_per_second: NonZeroU32,
}

/// Whether uploads' bytes are proven (see `[reconcile] verify_content`).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ContentMode {
    /// No checks.
    Off,
    /// Checked and reported; decisions as without.
    Report,
    /// `Successful` only once every file of the manifest is verified.
    Required,
}

/// When the agent lists a dataset's S3 prefix (see `[reconcile] verify`).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum VerifyMode {
    Off,
    /// Once, when a dataset would time out.
    BeforeTimeout,
    /// Also every `verify_every` while a dataset waits past `verify_after`.
    Periodic,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// A glob over set-ids, e.g. `"GEN*"`.
    pub set_ids: Spanned<String>,
    pub policy: Spanned<String>,
    #[serde(default)]
    pub policy_config: PolicySettings,
    /// This route's `verify_content` (absent: `[reconcile] verify_content`).
    #[serde(default)]
    pub verify_content: Option<ContentMode>,
}

impl ReconcileSection {
    /// How long after the manifest's notification a dataset times out.
    pub fn deadline(&self) -> Duration {
        self.wait.0.saturating_mul(self.iterations.get())
    }
}

impl Default for ReconcileSection {
    fn default() -> Self {
        ReconcileSection {
            wait: HumanDuration(Duration::from_secs(30)),
            iterations: NonZeroU32::new(960).expect("960 is not zero"),
            policy: Spanned::new(0..0, "exact-match".into()),
            policy_config: PolicySettings::default(),
            routes: Vec::new(),
            plugin_timeout: HumanDuration(Duration::from_millis(100)),
            plugin_memory_mb: NonZeroU32::new(64).expect("64 is not zero"),
            plugin_time_per_batch: HumanDuration(Duration::from_millis(10)),
            plugin_max_size: ByteCount(16 << 20),
            plugin_compile_timeout: HumanDuration(Duration::from_secs(30)),
            plugin_compile_memory_mb: NonZeroU32::new(1024).expect("1024 is not zero"),
            verify: None,
            verify_every: HumanDuration(Duration::from_secs(600)),
            verify_after: HumanDuration(Duration::from_secs(3600)),
            verify_requests_per_second: NonZeroU32::new(20).expect("20 is not zero"),
            verify_content: None,
            verify_content_requests_per_second: NonZeroU32::new(100).expect("100 is not zero"),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSection {
    /// Spanned: errors about the table point at it.
    pub backend: Spanned<StoreBackend>,
    /// SQLite only.
    pub sync: SyncMode,
    /// DynamoDB only: the table, in the reference's key schema.
    pub table: Option<Spanned<String>>,
}

impl Config {
    /// This config with its state kept in `dir` instead, if given (`run
    /// --state-dir`: one config file can serve several instances).
    pub fn with_state_dir(mut self, dir: Option<PathBuf>) -> Config {
        if let Some(dir) = dir {
            self.agent.state_dir = dir;
        }
        self
    }

    /// The parts of this config that talk to AWS (empty: none).
    pub fn aws_users(&self) -> Vec<String> {
        let mut users = Vec::new();
        if matches!(self.source, SourceConfig::Sqs { .. }) {
            users.push("[source] kind = \"sqs\"".to_owned());
        }
        if self.store.backend() == StoreBackend::Dynamodb {
            users.push("[store] backend = \"dynamodb\"".to_owned());
        }
        for sink in &self.sinks {
            if sink.get_ref().settings().needs_aws() {
                users.push(format!("[[sink]] {}", sink.get_ref().name()));
            }
        }
        if matches!(
            self.reconcile.verify,
            Some(VerifyMode::BeforeTimeout | VerifyMode::Periodic)
        ) {
            users.push("[reconcile] verify".to_owned());
        }
        let routed = self
            .reconcile
            .routes
            .iter()
            .filter_map(|r| r.verify_content);
        if self
            .reconcile
            .verify_content
            .into_iter()
            .chain(routed)
            .any(|m| m != ContentMode::Off)
        {
            users.push("[reconcile] verify_content".to_owned());
        }
        users
    }

    /// `[reconcile] verify_content` as it applies: when absent, `report` for
    /// an agent that uses AWS anyway, `off` for one that does not.
    pub fn content_mode(&self) -> ContentMode {
        match self.reconcile.verify_content {
            Some(mode) => mode,
            None if cfg!(feature = "aws") && !self.aws_users().is_empty() => ContentMode::Report,
            None => ContentMode::Off,
        }
    }

    /// `[reconcile] verify` as it applies: when absent, `before-timeout`
    /// for an agent that uses AWS anyway (it has credentials and a region),
    /// `off` for one that does not (a laptop, the demo).
    pub fn verify_mode(&self) -> VerifyMode {
        match self.reconcile.verify {
            Some(mode) => mode,
            None if cfg!(feature = "aws") && !self.aws_users().is_empty() => {
                VerifyMode::BeforeTimeout
            }
            None => VerifyMode::Off,
        }
    }
}

impl Default for StoreSection {
    fn default() -> Self {
        StoreSection {
            backend: Spanned::new(0..0, StoreBackend::default()),
            sync: SyncMode::default(),
            table: None,
        }
    }
}

impl StoreSection {
    pub fn backend(&self) -> StoreBackend {
        *self.backend.get_ref()
    }

    pub fn table(&self) -> Option<&str> {
        self.table.as_ref().map(|t| t.get_ref().as_str())
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    #[default]
    Sqlite,
    /// Shared by several agents (one queue, one table).
    Dynamodb,
}

/// What a `202 Accepted` promises (see README, "Durability").
#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    /// fsync the write-ahead log at every commit: accepted events survive
    /// power loss.
    #[default]
    Full,
    /// No fsync per commit: accepted events survive a crash of the agent, but
    /// the last commits may be lost if the host loses power.
    Normal,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSection {
    pub listen: SocketAddr,
    /// If set, `POST /events` requires `x-api-key` or `Authorization: Bearer`.
    pub api_key: Option<ApiKey>,
    /// A request's headers must arrive within this.
    pub header_read_timeout: HumanDuration,
    /// A connection with no request in flight is closed after this.
    pub idle_timeout: HumanDuration,
    /// Most connections open at once; at the cap the longest-idle one is
    /// closed for a new one.
    pub max_connections: NonZeroU32,
    /// Also require the API key for `/metrics` and `/status` (hosts on
    /// shared networks); `/healthz` stays open for probes.
    pub protect_reads: toml::Spanned<bool>,
    /// Serve Prometheus metrics at `/metrics` (and count them).
    pub metrics: bool,
}

impl Default for HttpSection {
    fn default() -> Self {
        HttpSection {
            listen: SocketAddr::from(([127, 0, 0, 1], 8787)),
            api_key: None,
            header_read_timeout: HumanDuration(Duration::from_secs(10)),
            idle_timeout: HumanDuration(Duration::from_secs(60)),
            max_connections: NonZeroU32::new(1024).expect("1024 is not zero"),
            protect_reads: toml::Spanned::new(0..0, false),
            metrics: true,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "lowercase")]
pub enum SourceConfig {
    /// `POST /events` on the HTTP server (EventBridge API destination).
    #[default]
    Http,
    /// An SQS queue fed by an EventBridge rule (long polling).
    Sqs {
        queue_url: HttpUrl,
        /// Visibility given to received messages; extended while a batch is
        /// still being committed.
        #[serde(default = "default_visibility")]
        visibility_timeout: HumanDuration,
        /// Receive loops polling at once: their batches are committed
        /// together, so more loops mean fewer, larger transactions.
        #[serde(default = "default_receivers")]
        receivers: NonZeroU32,
    },
}

fn default_receivers() -> NonZeroU32 {
    NonZeroU32::new(4).expect("4 is not zero")
}

fn default_visibility() -> HumanDuration {
    HumanDuration(Duration::from_secs(60))
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AwsSection {
    /// Used by the AWS clients and written into the envelopes of events the
    /// agent emits.
    pub region: String,
    pub account: AccountId,
    /// An endpoint for every AWS service (an emulator, say); the
    /// `AWS_ENDPOINT_URL` environment variable works too.
    pub endpoint_url: Option<String>,
}

impl Default for AwsSection {
    fn default() -> Self {
        AwsSection {
            region: "eu-west-1".into(),
            account: AccountId("000000000000".into()),
            endpoint_url: None,
        }
    }
}
