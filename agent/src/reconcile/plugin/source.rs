//! Where a plugin's component comes from: bundled, or a file.

use std::borrow::Cow;
use std::fmt;
use std::path::PathBuf;

use super::{PluginError, bundled};
use crate::reconcile::policy;

/// Where a plugin's component comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginSource {
    Bundled(&'static str),
    File(PathBuf),
}

impl PluginSource {
    /// The component's bytes; a file larger than `limit` is refused
    /// before it is read whole (compiling is costly in time and memory).
    pub fn bytes(&self, plugin: &str, limit: u64) -> Result<Cow<'static, [u8]>, PluginError> {
        match self {
            PluginSource::Bundled(name) => bundled::bytes(name)
                .map(Cow::Borrowed)
                .ok_or_else(|| PluginError::Unknown((*name).to_owned())),
            PluginSource::File(path) => {
                use std::io::Read;
                let read_error = |e: std::io::Error| PluginError::Read {
                    plugin: plugin.to_owned(),
                    path: path.display().to_string(),
                    message: e.to_string(),
                };
                let mut bytes = Vec::new();
                std::fs::File::open(path)
                    .and_then(|f| f.take(limit.saturating_add(1)).read_to_end(&mut bytes))
                    .map_err(read_error)?;
                if bytes.len() as u64 > limit {
                    return Err(PluginError::TooLarge {
                        plugin: plugin.to_owned(),
                        path: path.display().to_string(),
                        limit,
                    });
                }
                Ok(Cow::Owned(bytes))
            }
        }
    }

    /// The source a configured policy name refers to.
    pub fn for_name(name: &str) -> Result<PluginSource, PluginError> {
        if policy::is_plugin_path(name) {
            return Ok(PluginSource::File(PathBuf::from(name)));
        }
        bundled::BUNDLED
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(n, _)| PluginSource::Bundled(n))
            .ok_or_else(|| PluginError::Unknown(name.to_owned()))
    }
}

impl fmt::Display for PluginSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PluginSource::Bundled(_) => write!(f, "bundled"),
            PluginSource::File(path) => write!(f, "{}", path.display()),
        }
    }
}
