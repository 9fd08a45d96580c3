//! Wires one running agent together: store -> reconcile engine (own thread)
//! -> sink dispatchers, the periodic re-check, and the HTTP server. Used by
//! `vault-agent run`, the demo and the benchmark alike.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::{Config, SourceConfig, StoreBackend, WatchKind};
use crate::health::Health;
use crate::notification::Classifier;
use crate::outbound::Origin;
use crate::reconcile::plugin::{self, PolicyHealth};
use crate::reconcile::{Engine, EngineHandle, EngineSettings};
use crate::server::{self, AppState};
use crate::sinks::{self, AwsConfig, dispatcher};
use crate::sources::http::HttpSource;
#[cfg(feature = "aws")]
use crate::store::dynamodb::DynamoStore;
use crate::store::local_fs::prepare_state_dir;
use crate::store::sqlite::SqliteStore;
use crate::store::state_lock::{self, StateLock};
use crate::store::{Outbox, Store, StoreError, StoreReader};
use crate::watcher::{self, ShareStatus, WatchMode, WatcherSettings};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Sink(#[from] sinks::SinkError),
    #[error(transparent)]
    Policy(#[from] plugin::PluginError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the engine thread: {0}")]
    Thread(std::io::Error),
    #[error(transparent)]
    Preflight(#[from] crate::preflight::PreflightError),
}

pub struct Agent {
    addr: SocketAddr,
    engine: EngineHandle,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    engine_thread: std::thread::JoinHandle<()>,
    /// Released when the agent is dropped (or the process ends).
    _state_lock: StateLock,
}

impl Agent {
    pub async fn start(config: &Config) -> Result<Agent, StartError> {
        // Nothing is created before every check passed; then the state
        // directory is this agent's alone.
        crate::preflight::check(config)?;
        if let Some((before, now)) = server::listener::raise_fd_limit()
            && before != now
        {
            info!(before, now, "raised the open-file limit");
        }
        prepare_state_dir(&config.agent.state_dir, Some(&config.share.path))?;
        let state_lock = state_lock::lock(&config.agent.state_dir)?;
        if config.http.metrics && crate::telemetry::install().is_none() {
            warn!("cannot install the metrics recorder; /metrics stays empty");
        }
        let aws = load_aws(config).await;
        let mut sinks = Vec::new();
        for sink_config in &config.sinks {
            sinks.push(sink_config.get_ref().open(aws.as_ref())?);
        }
        let (store, status_reader, outbox) = open_store(config, aws.as_ref(), &sinks).await?;
        let policy_name = config.reconcile.policy.get_ref();
        let policy_health = PolicyHealth::default();
        let health = Health::default();
        health.expect_rechecks(config.reconcile.wait.0);
        // Plugins are built off the async runtime: a plugin's WASI calls
        // (its panic message, say) block, which is not allowed on a worker.
        let policy = {
            let reconcile = config.reconcile.clone();
            let cache = config.agent.state_dir.join("plugin-cache");
            let policy_health = policy_health.clone();
            tokio::task::spawn_blocking(move || plugin::build(&reconcile, &cache, &policy_health))
                .await
                .map_err(|e| StartError::Thread(std::io::Error::other(e.to_string())))??
        };
        let classifier = Classifier::new(
            config.share.job_dir_suffix.0.clone(),
            config.share.manifest_suffix.0.clone(),
        );
        let settings = EngineSettings {
            share_path: config.share.path.clone(),
            classifier: classifier.clone(),
            deadline: config.reconcile.deadline(),
            origin: Origin {
                account: config.aws.account.0.clone(),
                region: config.aws.region.clone(),
            },
            upload_events: config
                .sinks
                .iter()
                .any(|s| s.get_ref().settings().wants_upload_events()),
            max_manifest_bytes: config.share.max_manifest_bytes.0,
            manifest_read_timeout: config.share.manifest_read_timeout.0,
            health: health.clone(),
            verify: verify_settings(config, aws.as_ref()),
            content: content_settings(config, aws.as_ref()),
        };
        let (outbox_tx, outbox_rx) = watch::channel(0);
        let (engine, handle) = Engine::new(store, policy, settings, outbox_tx);
        let classifier_for_watcher = classifier.clone();
        let engine_thread = std::thread::Builder::new()
            .name("reconcile-engine".into())
            .spawn(move || {
                if let Err(e) = engine.run() {
                    error!(error = %e, "reconcile engine stopped on an error");
                }
            })
            .map_err(StartError::Thread)?;

        let share_status = ShareStatus::new(&config.share.path, health.clone());
        start_watcher(
            config,
            classifier_for_watcher,
            handle.clone(),
            share_status.clone(),
        );

        let shutdown = CancellationToken::new();
        let mut tasks = Vec::new();
        for sink in sinks {
            tasks.push(tokio::spawn(dispatcher::run(
                sink,
                outbox.clone(),
                outbox_rx.clone(),
                shutdown.clone(),
            )));
        }
        #[cfg(feature = "aws")]
        if let (SourceConfig::Sqs { .. }, Some(aws)) = (&config.source, &aws) {
            tasks.extend(start_sqs(&config.source, aws, &handle, &shutdown));
        }
        tasks.push(tokio::spawn(recheck(
            handle.clone(),
            config.reconcile.wait.0,
            shutdown.clone(),
        )));

        let listener = tokio::net::TcpListener::bind(config.http.listen)
            .await
            .map_err(|source| StartError::Listen {
                addr: config.http.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| StartError::Listen {
            addr: config.http.listen,
            source,
        })?;
        let state = AppState {
            engine: handle.clone(),
            reader: status_reader,
            policies: policy_health,
            health: health.clone(),
            share: share_status,
            read_key: config
                .http
                .api_key
                .as_ref()
                .filter(|_| *config.http.protect_reads.get_ref())
                .map(|k| k.0.clone()),
            shutdown: shutdown.clone(),
            shared_reads: Default::default(),
        };
        let mut source_routes = Vec::new();
        if let SourceConfig::Http = config.source {
            let http = HttpSource::new(
                handle.clone(),
                config.http.api_key.as_ref().map(|k| k.0.clone()),
            );
            source_routes.push(http.routes());
        }
        let app = server::router(state, source_routes);
        let limits = server::listener::Limits {
            header_read_timeout: config.http.header_read_timeout.0,
            idle_timeout: config.http.idle_timeout.0,
            max_connections: config.http.max_connections.get() as usize,
        };
        tasks.push(tokio::spawn(server::listener::serve(
            listener,
            app,
            limits,
            shutdown.clone(),
        )));
        info!(%addr, policy = %policy_name, sinks = config.sinks.len(), "vault-agent listening");
        Ok(Agent {
            addr,
            engine: handle,
            shutdown,
            tasks,
            engine_thread,
            _state_lock: state_lock,
        })
    }

    /// The address the HTTP server is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn engine(&self) -> &EngineHandle {
        &self.engine
    }

    /// Stops accepting, lets the engine commit what it holds, and waits.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
        self.engine.shutdown().await;
        let thread = self.engine_thread;
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        info!("vault-agent stopped");
    }
}

/// The AWS SDK configuration, if some part of the config needs it.
async fn load_aws(config: &Config) -> Option<AwsConfig> {
    if config.aws_users().is_empty() {
        return None;
    }
    #[cfg(feature = "aws")]
    return Some(crate::aws::sdk_config(&config.aws).await);
    // Refused by the preflight check.
    #[cfg(not(feature = "aws"))]
    None
}

/// `[reconcile] verify_content` as the engine needs it (None: off for every
/// set-id). It is on only where the config uses AWS, so `aws` is loaded.
fn content_settings(
    config: &Config,
    aws: Option<&AwsConfig>,
) -> Option<crate::reconcile::content::ContentSettings> {
    use crate::config::ContentMode;
    let default = config.content_mode();
    let routes: Vec<(glob::Pattern, ContentMode)> = config
        .reconcile
        .routes
        .iter()
        .filter_map(|r| {
            let mode = r.verify_content?;
            Some((glob::Pattern::new(r.set_ids.get_ref()).ok()?, mode))
        })
        .collect();
    if default == ContentMode::Off && routes.iter().all(|(_, m)| *m == ContentMode::Off) {
        return None;
    }
    #[cfg(feature = "aws")]
    {
        let r = &config.reconcile;
        let heads = crate::sources::s3_objects::S3Heads::from_sdk(
            aws?,
            r.verify_content_requests_per_second.get(),
        );
        info!(mode = ?default, routes = routes.len(), "uploads' bytes are checked against S3's checksums");
        Some(crate::reconcile::content::ContentSettings {
            heads: std::sync::Arc::new(heads),
            default,
            routes,
            share: config.share.path.clone(),
            give_up_after: r.wait.0.max(std::time::Duration::from_secs(60)),
            claim_expires_after: (r.wait.0 * 4).max(std::time::Duration::from_secs(300)),
        })
    }
    // Refused by the preflight check.
    #[cfg(not(feature = "aws"))]
    {
        let _ = aws;
        None
    }
}

/// `[reconcile] verify` as the engine needs it (None: off). It is on only
/// where the config uses AWS, so `aws` is loaded then.
fn verify_settings(
    config: &Config,
    aws: Option<&AwsConfig>,
) -> Option<crate::reconcile::listing::VerifySettings> {
    use crate::config::VerifyMode;
    let mode = config.verify_mode();
    if mode == VerifyMode::Off {
        return None;
    }
    #[cfg(feature = "aws")]
    {
        let r = &config.reconcile;
        let lister = crate::sources::s3_listing::S3Lister::from_sdk(
            aws?,
            r.verify_requests_per_second.get(),
        );
        info!(mode = ?mode, "datasets are cross-checked against their S3 listing");
        Some(crate::reconcile::listing::VerifySettings {
            lister: std::sync::Arc::new(lister),
            periodic: (mode == VerifyMode::Periodic)
                .then_some((r.verify_every.0, r.verify_after.0)),
            recheck: r.wait.0,
            // Listings wait for the shared request rate: generous, so only
            // a listing that never answers is cut.
            hung_after: r.wait.0.max(std::time::Duration::from_secs(60)),
            default_bucket: config.share.bucket.clone(),
            share: Some(config.share.path.clone()),
        })
    }
    // Refused by the preflight check.
    #[cfg(not(feature = "aws"))]
    {
        let _ = aws;
        None
    }
}

/// The SQS receive loops.
#[cfg(feature = "aws")]
fn start_sqs(
    source: &SourceConfig,
    aws: &AwsConfig,
    handle: &EngineHandle,
    shutdown: &CancellationToken,
) -> Vec<JoinHandle<()>> {
    let SourceConfig::Sqs {
        queue_url,
        visibility_timeout,
        receivers,
    } = source
    else {
        return Vec::new();
    };
    let client = aws_sdk_sqs::Client::from_conf(
        aws_sdk_sqs::config::Builder::from(aws)
            .timeout_config(
                aws_config::timeout::TimeoutConfig::builder()
                    // Longer than the 20 s long poll.
                    .operation_attempt_timeout(std::time::Duration::from_secs(40))
                    .build(),
            )
            .build(),
    );
    info!(queue = %queue_url, receivers, "consuming notifications from SQS");
    (0..receivers.get())
        .map(|_| {
            tokio::spawn(crate::sources::sqs::run(
                client.clone(),
                queue_url.0.clone(),
                visibility_timeout.0,
                handle.clone(),
                shutdown.clone(),
            ))
        })
        .collect()
}

/// The configured store, its read side for `/status`, and its outbox.
async fn open_store(
    config: &Config,
    aws: Option<&AwsConfig>,
    sinks: &[Box<dyn sinks::Sink>],
) -> Result<(Box<dyn Store>, Arc<dyn StoreReader>, Arc<dyn Outbox>), StartError> {
    match config.store.backend() {
        #[cfg(feature = "aws")]
        StoreBackend::Dynamodb => {
            // Config validation requires the table, and `start` loads the
            // AWS configuration for this backend.
            let (Some(table), Some(aws)) = (config.store.table(), aws) else {
                return Err(StoreError::Backend {
                    store: "DynamoDB".into(),
                    message: "backend = \"dynamodb\" needs [store] table and AWS settings".into(),
                }
                .into());
            };
            let names = sinks.iter().map(|s| s.name().to_owned()).collect();
            let store = DynamoStore::open(aws_sdk_dynamodb::Client::new(aws), table, names).await?;
            let reader = Arc::new(store.reader());
            info!(%table, "state is shared in DynamoDB");
            Ok((Box::new(store), reader.clone(), reader))
        }
        // Refused by the preflight check.
        #[cfg(not(feature = "aws"))]
        StoreBackend::Dynamodb => {
            let _ = (aws, sinks);
            Err(StoreError::Backend {
                store: "DynamoDB".into(),
                message: "this build has no AWS support".into(),
            }
            .into())
        }
        StoreBackend::Sqlite => {
            let suffix = &config.share.job_dir_suffix.0;
            let store = SqliteStore::open(&config.agent.state_dir, config.store.sync, suffix)?;
            let reader = Arc::new(store.reader()?);
            let outbox = Arc::new(store.outbox()?);
            Ok((Box::new(store), reader, outbox))
        }
    }
}

/// Starts the share watcher unless it is off; it waits for the share to be
/// mounted if it is not yet.
fn start_watcher(
    config: &Config,
    classifier: Classifier,
    engine: EngineHandle,
    status: ShareStatus,
) {
    let mode = match config.share.watch {
        WatchKind::Off => return,
        WatchKind::Inotify => WatchMode::Inotify,
        WatchKind::Poll => WatchMode::Poll(config.share.poll_interval.0),
    };
    let settings = WatcherSettings {
        share: config.share.path.clone(),
        classifier,
        mode,
        seal_after: config.share.seal_after.map(|d| d.0),
    };
    if let Err(e) = watcher::spawn(settings, engine, status) {
        error!(error = %e, "cannot start the share watcher");
    }
}

/// The reference's re-check every `wait`: deadlines and unreadable manifests.
async fn recheck(engine: EngineHandle, every: std::time::Duration, shutdown: CancellationToken) {
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval.tick().await;
    loop {
        tokio::select! {
            _ = interval.tick() => {
                if engine.recheck().await.is_err() {
                    return;
                }
            }
            _ = shutdown.cancelled() => return,
        }
    }
}
