//! Reading a config file: TOML errors and our own checks both come out as
//! `FILE:LINE:COLUMN: message`, and relative paths are resolved against the
//! config file's folder (so a config works from any working directory).

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use super::file::{Config, SinkConfig, StoreBackend};
use super::policy_name;

#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based line and column, when the problem has a place in the file.
    pub position: Option<(usize, usize)>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some((line, col)) => {
                write!(f, "{}:{line}:{col}: {}", self.file.display(), self.message)
            }
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

/// Reads and validates a config file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_owned(),
        position: None,
        message: format!("cannot read config file: {e}"),
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    let base = if base.as_os_str().is_empty() {
        Path::new(".")
    } else {
        base
    };
    parse(&text, path, base)
}

/// Parses config text; `file` names it in errors, `base` anchors relative paths.
pub fn parse(text: &str, file: &Path, base: &Path) -> Result<Config, ConfigError> {
    let at = |span: Option<Range<usize>>, message: String| ConfigError {
        file: file.to_owned(),
        position: span.map(|s| line_col(text, s.start)),
        message,
    };
    let mut config: Config =
        toml::from_str(text).map_err(|e| at(e.span(), e.message().trim().to_owned()))?;

    let mut policies = vec![&mut config.reconcile.policy];
    for route in &mut config.reconcile.routes {
        if let Err(e) = glob::Pattern::new(route.set_ids.get_ref()) {
            return Err(at(
                Some(route.set_ids.span()),
                format!("invalid set-id glob: {e}"),
            ));
        }
        policies.push(&mut route.policy);
    }
    for spanned in policies {
        let span = spanned.span();
        let name = spanned.get_mut();
        if policy_name::is_plugin_path(name) {
            *name = base.join(&*name).to_string_lossy().into_owned();
        } else if !policy_name::is_builtin(name) {
            return Err(at(
                Some(span),
                format!(
                    "unknown reconcile policy {name:?}; bundled policies: {}, or the path of a .wasm component",
                    policy_name::builtin().collect::<Vec<_>>().join(", ")
                ),
            ));
        }
    }
    let store = &config.store;
    match (store.backend(), &store.table) {
        (StoreBackend::Dynamodb, None) => {
            return Err(at(
                Some(store.backend.span()),
                "[store] backend = \"dynamodb\" needs a table (the DynamoDB table's name)".into(),
            ));
        }
        (StoreBackend::Dynamodb, Some(t)) if t.get_ref().trim().is_empty() => {
            return Err(at(Some(t.span()), "[store] table must not be empty".into()));
        }
        (StoreBackend::Sqlite, Some(t)) => {
            return Err(at(
                Some(t.span()),
                "[store] table is for backend = \"dynamodb\"; the sqlite backend keeps its file in [agent] state_dir".into(),
            ));
        }
        _ => {}
    }
    if *config.http.protect_reads.get_ref() && config.http.api_key.is_none() {
        return Err(at(
            Some(config.http.protect_reads.span()),
            "[http] protect_reads = true needs an api_key to protect them with".into(),
        ));
    }
    for sink in &config.sinks {
        if let Err(message) = sink.get_ref().settings().validate() {
            return Err(at(Some(sink.span()), message));
        }
    }
    config.agent.state_dir = base.join(&config.agent.state_dir);
    config.share.path = base.join(&config.share.path);
    if config.sinks.is_empty() {
        config
            .sinks
            .push(toml::Spanned::new(0..0, SinkConfig::default()));
    }
    for sink in &mut config.sinks {
        sink.get_mut().settings_mut().resolve_paths(base);
    }
    let mut names = std::collections::HashSet::new();
    for sink in &config.sinks {
        let name = sink.get_ref().name();
        if !names.insert(name.clone()) {
            return Err(at(
                Some(sink.span()),
                format!("two [[sink]] entries share the name {name:?}; give one a distinct `name`"),
            ));
        }
    }
    Ok(config)
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn parse_str(text: &str) -> Result<Config, String> {
        parse(text, Path::new("agent.toml"), Path::new("/etc/vault")).map_err(|e| e.to_string())
    }

    #[test]
    fn verify_defaults_to_before_timeout_only_for_an_agent_that_uses_aws() {
        use crate::config::VerifyMode;
        assert_eq!(parse_str("").unwrap().verify_mode(), VerifyMode::Off);
        let dynamo = "[store]\nbackend = \"dynamodb\"\ntable = \"t\"\n";
        let expected = if cfg!(feature = "aws") {
            VerifyMode::BeforeTimeout
        } else {
            VerifyMode::Off
        };
        assert_eq!(parse_str(dynamo).unwrap().verify_mode(), expected);
        let off = format!("{dynamo}[reconcile]\nverify = \"off\"\n");
        assert_eq!(parse_str(&off).unwrap().verify_mode(), VerifyMode::Off);
        let periodic = parse_str("[reconcile]\nverify = \"periodic\"\n").unwrap();
        assert_eq!(periodic.verify_mode(), VerifyMode::Periodic);
        assert!(
            periodic
                .aws_users()
                .contains(&"[reconcile] verify".to_owned())
        );
        let e = parse_str("[reconcile]\nverify = \"always\"\n").unwrap_err();
        assert!(e.starts_with("agent.toml:2:10: "), "{e}");
    }

    #[test]
    fn empty_file_gives_reference_defaults() {
        let c = parse_str("").unwrap();
        assert_eq!(c.reconcile.wait.0, Duration::from_secs(30));
        assert_eq!(c.reconcile.iterations.get(), 960);
        assert_eq!(c.reconcile.deadline(), Duration::from_secs(8 * 3600));
        assert_eq!(c.share.job_dir_suffix.0, "-vaultjob");
        assert_eq!(c.share.manifest_suffix.0, ".manifest");
        assert_eq!(c.agent.state_dir, Path::new("/etc/vault/state"));
        assert_eq!(c.sinks.len(), 1);
    }

    #[test]
    fn the_issue_example_parses() {
        let c = parse_str(
            r#"
[agent]
state_dir = "state"
[share]
path = "/mnt/vaultdata"
job_dir_suffix = "-vaultjob"
manifest_suffix = ".manifest"
[reconcile]
wait = "30s"
iterations = 960
policy = "exact-match"
[store]
backend = "sqlite"
[http]
listen = "127.0.0.1:8787"
[source]
kind = "http"
[[sink]]
kind = "file"
path = "events.jsonl"
[[sink]]
kind = "stdout"
[aws]
region = "eu-west-1"
account = "123456789012"
"#,
        )
        .unwrap();
        assert_eq!(c.share.path, Path::new("/mnt/vaultdata"));
        assert!(
            c.sinks[0].get_ref().settings().local_file()
                == Some(Path::new("/etc/vault/events.jsonl"))
        );
    }

    #[test]
    fn errors_carry_line_and_column() {
        assert_eq!(
            parse_str("[share]\npath = \"/x\"\nsufix = \"-j\"\n").unwrap_err(),
            "agent.toml:3:1: unknown field `sufix`, expected one of `path`, `job_dir_suffix`, `manifest_suffix`, `watch`, `poll_interval`, `seal_after`, `max_manifest_bytes`, `manifest_read_timeout`, `bucket`"
        );
        let e = parse_str("[reconcile]\nwait = \"30 parsecs\"\n").unwrap_err();
        assert!(
            e.starts_with("agent.toml:2:8: invalid duration \"30 parsecs\""),
            "{e}"
        );
        let e = parse_str("[reconcile]\niterations = 0\n").unwrap_err();
        assert!(e.starts_with("agent.toml:2:14: "), "{e}");
        let e = parse_str("[reconcile]\npolicy = \"most-things\"\n").unwrap_err();
        assert!(
            e.starts_with(
                "agent.toml:2:10: unknown reconcile policy \"most-things\"; bundled policies: exact-match, ignore-patterns, marker, size-verified"
            ),
            "{e}"
        );
        let e = parse_str("[http]\nlisten = \"localhost\"\n").unwrap_err();
        assert!(e.starts_with("agent.toml:2:10: "), "{e}");
        let e = parse_str("[share]\njob_dir_suffix = \"\"\n").unwrap_err();
        assert_eq!(e, "agent.toml:2:18: suffix must not be empty");
        let e = parse_str("[[sink]]\nkind = \"carrier-pigeon\"\n").unwrap_err();
        assert!(
            e.starts_with("agent.toml:2:8: unknown variant `carrier-pigeon`"),
            "{e}"
        );
        let e = parse_str("[[sink]]\nkind = \"stdout\"\ncolour = true\n").unwrap_err();
        assert!(e.contains("unknown field `colour`"), "{e}");
        let e = parse_str("[store]\nbackend = \"postgres\"\n").unwrap_err();
        assert!(
            e.starts_with("agent.toml:2:11: unknown variant `postgres`"),
            "{e}"
        );
        let e = parse_str("[store]\nbackend = \"dynamodb\"\n").unwrap_err();
        assert!(e.contains("needs a table"), "{e}");
        let e = parse_str("[store]\ntable = \"t\"\n").unwrap_err();
        assert!(e.contains("table is for backend = \"dynamodb\""), "{e}");
    }

    #[test]
    fn policies_settings_and_routes() {
        let c = parse_str(
            "[reconcile]\npolicy = \"plugins/mine.wasm\"\n[reconcile.policy_config]\npatterns = [\".nfs*\", \"*.tmp\"]\nstrict = true\n\
             [[reconcile.route]]\nset_ids = \"GEN*\"\npolicy = \"size-verified\"\n",
        )
        .unwrap();
        assert_eq!(c.reconcile.policy.get_ref(), "/etc/vault/plugins/mine.wasm");
        assert_eq!(
            c.reconcile.policy_config.0,
            [
                ("patterns".to_string(), ".nfs*,*.tmp".to_string()),
                ("strict".to_string(), "true".to_string())
            ]
        );
        assert_eq!(c.reconcile.routes[0].policy.get_ref(), "size-verified");
        let e = parse_str("[[reconcile.route]]\nset_ids = \"[\"\npolicy = \"exact-match\"\n")
            .unwrap_err();
        assert!(e.starts_with("agent.toml:2:11: invalid set-id glob"), "{e}");
        let e = parse_str("[reconcile.policy_config]\nx = { y = 1 }\n").unwrap_err();
        assert!(e.contains("setting `x` must be a string"), "{e}");
    }

    #[test]
    fn aws_sources_and_sinks_are_checked() {
        let c = parse_str(
            "[source]\nkind = \"sqs\"\nqueue_url = \"https://sqs.eu-west-1.amazonaws.com/1/q\"\n\
             [[sink]]\nkind = \"eventbridge\"\nevent_bus = \"vault-application\"\npublish_upload_events = true\n\
             [[sink]]\nkind = \"webhook\"\nurl = \"https://hooks.example/vault\"\n\
             [aws]\nregion = \"eu-west-1\"\naccount = \"123456789012\"\nendpoint_url = \"http://127.0.0.1:5000\"\n",
        )
        .unwrap();
        assert!(c.sinks[0].get_ref().settings().wants_upload_events());
        assert_eq!(c.aws.endpoint_url.as_deref(), Some("http://127.0.0.1:5000"));
        let e = parse_str("[source]\nkind = \"sqs\"\n").unwrap_err();
        assert!(e.contains("missing field `queue_url`"), "{e}");
        let e = parse_str("[source]\nkind = \"sqs\"\nqueue_url = \"my-queue\"\n").unwrap_err();
        assert!(e.contains("must be an https:// URL"), "{e}");
        let e = parse_str("[[sink]]\nkind = \"webhook\"\nurl = \"hooks.example\"\n").unwrap_err();
        assert!(e.contains("must start with http"), "{e}");
        let e = parse_str(
            "[[sink]]\nkind = \"eventbridge\"\nevent_bus = \"b\"\nmax_request_bytes = 5\n",
        )
        .unwrap_err();
        assert!(e.contains("between 1024 and 1048576"), "{e}");
    }

    /// Every error the loader gives after parsing, with where it points.
    #[test]
    fn protect_reads_needs_an_api_key() {
        let e = parse_str("[http]\nprotect_reads = true\n").unwrap_err();
        assert_eq!(
            e,
            "agent.toml:2:17: [http] protect_reads = true needs an api_key to protect them with"
        );
        let c = parse_str("[http]\napi_key = \"k\"\nprotect_reads = true\n").unwrap();
        assert!(*c.http.protect_reads.get_ref());
    }

    #[test]
    fn every_semantic_error_names_its_line_and_column() {
        let cases = [
            (
                "[aws]\naccount = \"12\"\n",
                "agent.toml:2:11: [aws] account",
            ),
            (
                "[store]\nbackend = \"dynamodb\"\n",
                "agent.toml:2:11: [store] backend = \"dynamodb\" needs a table",
            ),
            (
                "[store]\nbackend = \"dynamodb\"\ntable = \" \"\n",
                "agent.toml:3:9: [store] table must not be empty",
            ),
            (
                "[store]\ntable = \"t\"\n",
                "agent.toml:2:9: [store] table is for",
            ),
            (
                "[source]\nkind = \"sqs\"\nqueue_url = \"q\"\n",
                "agent.toml:1:1: \"q\" must be an https:// URL",
            ),
            (
                "[[sink]]\nkind = \"webhook\"\nurl = \"x\"\n",
                "agent.toml:1:1: [[sink]] kind = \"webhook\": url",
            ),
            (
                "[[sink]]\nkind = \"eventbridge\"\nevent_bus = \" \"\n",
                "agent.toml:1:1: [[sink]] kind = \"eventbridge\" needs an event_bus",
            ),
            (
                "[[sink]]\nkind = \"eventbridge\"\nevent_bus = \"b\"\nmax_request_bytes = 5\n",
                "agent.toml:1:1: [[sink]] max_request_bytes = 5",
            ),
            (
                "[[sink]]\nkind=\"stdout\"\n[[sink]]\nkind=\"stdout\"\n",
                "agent.toml:3:1: two [[sink]] entries share the name",
            ),
            (
                "[reconcile]\npolicy = \"most-things\"\n",
                "agent.toml:2:10: unknown reconcile policy",
            ),
            (
                "[[reconcile.route]]\nset_ids = \"[\"\npolicy = \"exact-match\"\n",
                "agent.toml:2:11: invalid set-id glob",
            ),
        ];
        for (text, expected) in cases {
            let e = parse_str(text).unwrap_err();
            assert!(e.starts_with(expected), "{text:?}: {e}");
        }
    }

    #[test]
    fn duplicate_sink_names_are_refused() {
        let e = parse_str("[[sink]]\nkind=\"stdout\"\n[[sink]]\nkind=\"stdout\"\n").unwrap_err();
        assert!(e.contains("share the name \"stdout\""), "{e}");
    }
}
