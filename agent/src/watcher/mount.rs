//! The share may be mounted after the agent starts (NFS at boot) or
//! remounted while it runs. The watcher waits for the share, attaches when it
//! appears, and attaches again when its device changes; until then
//! `/status` and `/healthz` say it is not mounted.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tracing::{error, info, warn};

use super::{EngineHandle, Exit, WatcherSettings, run};
use crate::health::Health;

/// How often a missing share is looked for.
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// What `/status` shows of the share.
#[derive(Clone, Default)]
pub struct ShareStatus {
    inner: Arc<Mutex<Mount>>,
    health: Health,
}

#[derive(Default)]
struct Mount {
    path: String,
    /// None: the watcher is off, so the share is not looked at.
    mounted: Option<bool>,
}

impl ShareStatus {
    pub fn new(path: &Path, health: Health) -> ShareStatus {
        ShareStatus {
            inner: Arc::new(Mutex::new(Mount {
                path: path.display().to_string(),
                mounted: None,
            })),
            health,
        }
    }

    fn set_mounted(&self, mounted: bool) {
        let mut m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        m.mounted = Some(mounted);
        if mounted {
            self.health.clear("share");
        } else {
            self.health.set(
                "share",
                format!(
                    "{} is not mounted (no such directory); waiting for it",
                    m.path
                ),
            );
        }
    }

    pub fn describe(&self) -> Value {
        let m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        json!({ "path": m.path, "mounted": m.mounted, "watched": m.mounted.is_some() })
    }
}

/// The device of the directory at `path` (following a link at the mount
/// point itself, which operators use), or None if it is not a directory.
pub fn device_of(path: &Path) -> Option<u64> {
    std::fs::metadata(path)
        .ok()
        .filter(|m| m.is_dir())
        .map(|m| m.dev())
}

pub(super) fn supervise(settings: WatcherSettings, engine: EngineHandle, status: ShareStatus) {
    let mut said_missing = false;
    loop {
        if !engine.is_running() {
            return;
        }
        let Some(device) = device_of(&settings.share) else {
            status.set_mounted(false);
            if !said_missing {
                warn!(share = %settings.share.display(), "the share is not mounted; watching for it to appear");
                said_missing = true;
            }
            std::thread::sleep(LOOK_EVERY);
            continue;
        };
        said_missing = false;
        status.set_mounted(true);
        match run(settings.clone(), engine.clone(), device) {
            Ok(Exit::Stopped) => return,
            Ok(Exit::ShareChanged) => {
                info!(share = %settings.share.display(), "the share was unmounted or remounted; attaching again")
            }
            Err(e) => {
                error!(error = %e, "the share watcher failed; attaching again shortly");
                std::thread::sleep(LOOK_EVERY * 5);
            }
        }
    }
}
