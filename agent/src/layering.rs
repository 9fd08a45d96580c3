//! The module graph's layers, lowest first, checked by a test. A module
//! may use modules of lower layers only: nothing upward, nothing circular.
//! ARCHITECTURE.md explains each layer.

/// Top-level modules by layer. A new module must be placed here.
pub const LAYERS: &[&[&str]] = &[
    // Crash-safe file writes (the manifest, checksum files).
    &["durable_file"],
    // Contracts and utilities: the inbound notification, logging, retries,
    // metric names, checksums in S3's terms.
    &[
        "notification",
        "logging",
        "backoff",
        "telemetry",
        "checksum",
    ],
    // The outbound events and their outbox; health reporting.
    &["outbound", "health"],
    // The sink kinds, each with its settings, and the dispatcher.
    &["sinks"],
    // The configuration (it holds the sinks' settings).
    &["config"],
    // Durable state, and the AWS SDK configuration.
    &["store", "aws"],
    // The engine and its policies; operations on the share.
    &["reconcile", "share"],
    // What feeds the engine.
    &["sources", "watcher"],
    // The HTTP front; the start-up checks.
    &["server", "preflight"],
    // One running agent.
    &["agent"],
    // The commands.
    &["cli"],
];

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    use super::LAYERS;

    fn layer_of(module: &str) -> Option<usize> {
        LAYERS.iter().position(|l| l.contains(&module))
    }

    /// (from, to, file) for every `crate::` path outside test code.
    fn edges(src: &Path) -> Vec<(String, String, String)> {
        let mut found = Vec::new();
        let mut stack = vec![src.to_owned()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                    continue;
                }
                // A module's `tests.rs` is its unit tests (declared under
                // `#[cfg(test)]`), which may reach anywhere.
                if path.extension().is_none_or(|e| e != "rs")
                    || path.file_name().is_some_and(|n| n == "tests.rs")
                {
                    continue;
                }
                let rel = path
                    .strip_prefix(src)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                let from = rel
                    .split('/')
                    .next()
                    .unwrap()
                    .trim_end_matches(".rs")
                    .to_owned();
                let text = std::fs::read_to_string(&path).unwrap();
                // Unit tests may reach anywhere.
                let code = text.split("#[cfg(test)]").next().unwrap_or_default();
                for (i, _) in code.match_indices("crate::") {
                    let to: String = code[i + 7..]
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    // `crate::Agent` is the root's re-export of `agent`.
                    let to = if to == "Agent" { "agent".into() } else { to };
                    if to != from {
                        found.push((from.clone(), to, rel.clone()));
                    }
                }
            }
        }
        found
    }

    #[test]
    fn modules_only_use_lower_layers() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut problems = BTreeSet::new();
        for (from, to, file) in edges(&src) {
            if ["lib", "main", "args", "layering"].contains(&from.as_str()) {
                continue;
            }
            match (layer_of(&from), layer_of(&to)) {
                (None, _) => {
                    problems.insert(format!("{from}: not in layering::LAYERS"));
                }
                (_, None) => {
                    problems.insert(format!("{file}: uses crate::{to}, which is not in LAYERS"));
                }
                (Some(a), Some(b)) if b >= a => {
                    problems.insert(format!(
                        "{file}: {from} (layer {a}) uses crate::{to} (layer {b}): only lower layers may be used"
                    ));
                }
                _ => {}
            }
        }
        assert!(
            problems.is_empty(),
            "layering broken:\n{}",
            problems.into_iter().collect::<Vec<_>>().join("\n")
        );
    }

    #[test]
    fn every_module_has_a_layer() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        for entry in std::fs::read_dir(&src).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            let module = name.trim_end_matches(".rs");
            if ["lib", "main", "args", "layering"].contains(&module) {
                continue;
            }
            assert!(
                layer_of(module).is_some(),
                "{module} is not in layering::LAYERS"
            );
        }
    }
}
