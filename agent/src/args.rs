//! The command line's definition, and nothing else: clap's derive types
//! and their value parsers. `main.rs` acts on them; `build/` includes this
//! file too, to write the man pages and shell completions the package
//! installs, so it may use only clap, humantime, bytesize and std (and
//! `crate::LogFormat`, which both provide).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::LogFormat;

#[derive(Parser)]
#[command(
    version = crate::VERSION,
    about = "Tells you when a dataset written to a File Gateway share is completely in S3"
)]
pub struct Cli {
    /// Log format on standard error.
    #[arg(long, global = true, value_enum, default_value = "human")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the agent as a service until SIGINT or SIGTERM.
    Run(ServiceArgs),
    /// Validate a config file and print what it resolves to.
    CheckConfig(ServiceArgs),
    /// Show the datasets of a running agent.
    Status(StatusArgs),
    /// Block until every named dataset is decided. Exit 0: all Successful;
    /// 1: any timed out; 124: --timeout passed first; 2: cannot tell.
    Wait(WaitArgs),
    /// Compare a dataset's manifest with the S3 listing of its prefix
    /// (read-only; no agent needed). Exit 0: complete, 1: incomplete, 2: error.
    Verify(VerifyArgs),
    /// Write a dataset's manifest (reference format, crash-safe).
    Seal(SealArgs),
    /// Copy a directory onto the share as a dataset, then write its manifest.
    Vault(VaultArgs),
    /// Generate test data: random files in 10 to 50 sub-directories.
    GenData(GenDataArgs),
    /// Reconcile policy plugins: list, test, scaffold.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
    /// Watch a dataset reconcile end to end on this machine: no AWS, no set-up.
    Demo {
        /// Files in the sample dataset.
        #[arg(long, default_value_t = 300)]
        files: usize,
    },
    /// Print a shell completion script (e.g. `vault-agent completions bash >
    /// /etc/bash_completion.d/vault-agent`).
    Completions { shell: clap_complete::Shell },
}

/// The config of `run` and `check-config`.
#[derive(Args)]
pub struct ServiceArgs {
    #[arg(long, short, env = "VAULT_AGENT_CONFIG")]
    pub config: PathBuf,
    /// Keep the state here instead of `[agent] state_dir` (the unit
    /// `vault-agent@NAME` gives each instance /var/lib/vault-agent/NAME).
    #[arg(long, env = "VAULT_AGENT_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
}

/// How `wait`, `vault --wait` and `seal --wait` reach the agent.
#[derive(Args)]
pub struct AgentArgs {
    /// The agent's base URL, e.g. http://127.0.0.1:8787 (default: the
    /// `[http] listen` of --config).
    #[arg(long)]
    pub url: Option<String>,
    /// The API key, for an agent with `[http] protect_reads` (with --config
    /// it is read from the config).
    #[arg(long, env = "VAULT_AGENT_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
}

/// What waiting prints and how long it may take.
#[derive(Args)]
pub struct WaitOptions {
    /// Give up after this long (exit 124, as timeout(1)).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub timeout: Option<std::time::Duration>,
    /// Print each dataset's final `/status` record as JSON.
    #[arg(long)]
    pub json: bool,
    /// Print only the outcome.
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(Args)]
pub struct WaitArgs {
    /// The datasets to wait for (set-ids not seen yet are waited for).
    #[arg(required = true)]
    pub set_ids: Vec<String>,
    /// The agent's config (its `[http] listen` is asked).
    #[arg(long, short, env = "VAULT_AGENT_CONFIG", conflicts_with = "url")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub agent: AgentArgs,
    #[command(flatten)]
    pub options: WaitOptions,
}

#[derive(Args)]
pub struct StatusArgs {
    /// The agent's config (its `[http] listen` is asked).
    #[arg(long, short, env = "VAULT_AGENT_CONFIG", conflicts_with = "url")]
    pub config: Option<PathBuf>,
    /// The agent's base URL, e.g. http://127.0.0.1:8787.
    #[arg(long)]
    pub url: Option<String>,
    /// The API key, for an agent with `[http] protect_reads` (with --config
    /// it is read from the config).
    #[arg(long, env = "VAULT_AGENT_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// One dataset, with example paths of what it waits for.
    #[arg(long)]
    pub set_id: Option<String>,
    /// A live view, redrawn every second; q or Ctrl-C quits.
    #[arg(long, conflicts_with_all = ["set_id", "pending", "json"])]
    pub watch: bool,
    /// List the paths of a dataset still pending (written here, not yet confirmed).
    #[arg(long, value_name = "SET-ID", conflicts_with = "set_id")]
    pub pending: Option<String>,
    /// Print the JSON the agent answered.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct VerifyArgs {
    /// The dataset: lists s3://BUCKET/<SET-ID><job_dir_suffix>/.
    pub set_id: String,
    /// The bucket behind the share (default: `[share] bucket` of --config).
    #[arg(long)]
    pub bucket: Option<String>,
    /// Take the share, suffixes, bucket and AWS settings from this config.
    #[arg(long, short, env = "VAULT_AGENT_CONFIG")]
    pub config: Option<PathBuf>,
    /// Compare with this manifest instead of the one on the share.
    #[arg(long, value_name = "FILE")]
    pub manifest: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// Prove every file's bytes: compare S3's checksum of each object
    /// (CRC64NVME, S3's default) with the file's on the share. Exit 3 when
    /// only files that cannot be verified remain.
    #[arg(long)]
    pub content: bool,
}

#[derive(Args)]
pub struct SealArgs {
    /// The dataset directory, <share>/<SET-ID>-vaultjob.
    pub dir: PathBuf,
    /// How long to wait for files still open for writing.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub wait_for_writers: std::time::Duration,
    #[command(flatten)]
    pub then: ThenWait,
    /// Write the manifest even if one exists.
    #[arg(long)]
    pub force: bool,
    /// Skip the checksums (`<share>/.vault-agent/checksums/<SET-ID>.jsonl`):
    /// the agent then computes each file's when it verifies its content.
    #[arg(long)]
    pub no_checksums: bool,
    /// Take the suffixes from this config.
    #[arg(long, short, env = "VAULT_AGENT_CONFIG")]
    pub config: Option<PathBuf>,
}

#[derive(Args)]
pub struct VaultArgs {
    #[arg(long)]
    pub source: PathBuf,
    /// The share's mount point (default: `[share] path` of --config).
    #[arg(long, required_unless_present = "config")]
    pub share: Option<PathBuf>,
    /// Default: 16 random letters and digits.
    #[arg(long)]
    pub set_id: Option<String>,
    /// Files copied in parallel.
    #[arg(long, default_value_t = 8)]
    pub jobs: usize,
    /// Take the share and the suffixes from this config.
    #[arg(long, short, env = "VAULT_AGENT_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub then: ThenWait,
}

/// `--wait` of `vault` and `seal`: once done, wait as `wait` does.
#[derive(Args)]
pub struct ThenWait {
    /// Then wait until the agent decides the dataset (exit codes of `wait`;
    /// `vault` still prints the set-id first).
    #[arg(long)]
    pub wait: bool,
    #[command(flatten)]
    pub agent: AgentArgs,
    #[command(flatten)]
    pub options: WaitOptions,
}

#[derive(Args)]
pub struct GenDataArgs {
    #[arg(long)]
    pub target: PathBuf,
    /// Total size, e.g. 1GiB.
    #[arg(long, value_parser = parse_size)]
    pub total: u64,
    #[arg(long, value_parser = parse_size, default_value = "1MiB")]
    pub min: u64,
    #[arg(long, value_parser = parse_size, default_value = "16MiB")]
    pub max: u64,
}

#[derive(Subcommand)]
pub enum PluginCommand {
    /// The bundled policies and the supported plugin interface.
    List,
    /// Run a policy on a manifest and upload events, without an agent.
    /// Exits 0 if the dataset comes out complete, 2 if not.
    Test {
        /// A bundled policy's name or a .wasm file.
        #[arg(long)]
        policy: String,
        /// The dataset's manifest (reference format; `path<TAB>size` lines give sizes).
        #[arg(long)]
        manifest: PathBuf,
        /// Upload notifications: one EventBridge event per line, or a JSON
        /// array of them (what `POST /events` takes).
        #[arg(long)]
        events: PathBuf,
        /// A setting for the policy's init, repeatable.
        #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_setting)]
        settings: Vec<(String, String)>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Compile a component into IN's loadable artifact OUT (the agent runs
    /// this as a bounded child process).
    #[command(hide = true)]
    Compile { wasm: PathBuf, out: PathBuf },
    /// Run a policy crate's unit tests (cargo's runner in a crate made by
    /// `plugin new`): TEST is the wasm32-wasip2 test binary.
    RunTests {
        test: PathBuf,
        /// Passed to the test harness (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Scaffold a policy crate that builds with one cargo command.
    New {
        name: String,
        /// Where to create it.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
}

pub fn parse_size(text: &str) -> Result<u64, String> {
    text.parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| format!("{text:?}: {e}"))
}

pub fn parse_setting(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.trim().to_owned(), v.to_owned()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("{text:?} is not KEY=VALUE"))
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// clap's own checks of the definition (conflicting names, bad
    /// defaults), which it otherwise makes only when a flag is used.
    #[test]
    fn the_command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
