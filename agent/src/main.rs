//! The `vault-agent` command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use vault_agent::config;
use vault_agent::logging::{self, LogFormat};
use vault_agent::{Agent, cli};

/// SIGTERM exits within this, committed or not.
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(15);

#[derive(Parser)]
#[command(
    version = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("VAULT_AGENT_COMMIT"), ")"),
    about = "Tells you when a dataset written to a File Gateway share is completely in S3"
)]
struct Cli {
    /// Log format on standard error.
    #[arg(long, global = true, value_enum, default_value = "human")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent as a service until SIGINT or SIGTERM.
    Run {
        #[arg(long, short, env = "VAULT_AGENT_CONFIG")]
        config: PathBuf,
    },
    /// Validate a config file and print what it resolves to.
    CheckConfig {
        #[arg(long, short, env = "VAULT_AGENT_CONFIG")]
        config: PathBuf,
    },
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

/// How `wait`, `vault --wait` and `seal --wait` reach the agent.
#[derive(Args)]
struct AgentArgs {
    /// The agent's base URL, e.g. http://127.0.0.1:8787 (default: the
    /// `[http] listen` of --config).
    #[arg(long)]
    url: Option<String>,
    /// The API key, for an agent with `[http] protect_reads` (with --config
    /// it is read from the config).
    #[arg(long, env = "VAULT_AGENT_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
}

/// What waiting prints and how long it may take.
#[derive(Args)]
struct WaitOptions {
    /// Give up after this long (exit 124, as timeout(1)).
    #[arg(long, value_parser = humantime::parse_duration)]
    timeout: Option<std::time::Duration>,
    /// Print each dataset's final `/status` record as JSON.
    #[arg(long)]
    json: bool,
    /// Print only the outcome.
    #[arg(long, short)]
    quiet: bool,
}

#[derive(Args)]
struct WaitArgs {
    /// The datasets to wait for (set-ids not seen yet are waited for).
    #[arg(required = true)]
    set_ids: Vec<String>,
    /// The agent's config (its `[http] listen` is asked).
    #[arg(long, short, env = "VAULT_AGENT_CONFIG", conflicts_with = "url")]
    config: Option<PathBuf>,
    #[command(flatten)]
    agent: AgentArgs,
    #[command(flatten)]
    options: WaitOptions,
}

#[derive(Args)]
struct StatusArgs {
    /// The agent's config (its `[http] listen` is asked).
    #[arg(long, short, env = "VAULT_AGENT_CONFIG", conflicts_with = "url")]
    config: Option<PathBuf>,
    /// The agent's base URL, e.g. http://127.0.0.1:8787.
    #[arg(long)]
    url: Option<String>,
    /// The API key, for an agent with `[http] protect_reads` (with --config
    /// it is read from the config).
    #[arg(long, env = "VAULT_AGENT_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// One dataset, with example paths of what it waits for.
    #[arg(long)]
    set_id: Option<String>,
    /// A live view, redrawn every second; q or Ctrl-C quits.
    #[arg(long, conflicts_with_all = ["set_id", "pending", "json"])]
    watch: bool,
    /// List the paths of a dataset still pending (written here, not yet confirmed).
    #[arg(long, value_name = "SET-ID", conflicts_with = "set_id")]
    pending: Option<String>,
    /// Print the JSON the agent answered.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct VerifyArgs {
    /// The dataset: lists s3://BUCKET/<SET-ID><job_dir_suffix>/.
    set_id: String,
    /// The bucket behind the share (default: `[share] bucket` of --config).
    #[arg(long)]
    bucket: Option<String>,
    /// Take the share, suffixes, bucket and AWS settings from this config.
    #[arg(long, short, env = "VAULT_AGENT_CONFIG")]
    config: Option<PathBuf>,
    /// Compare with this manifest instead of the one on the share.
    #[arg(long, value_name = "FILE")]
    manifest: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
    /// Prove every file's bytes: compare S3's checksum of each object
    /// (CRC64NVME, S3's default) with the file's on the share. Exit 3 when
    /// only files that cannot be verified remain.
    #[arg(long)]
    content: bool,
}

#[derive(Args)]
struct SealArgs {
    /// The dataset directory, <share>/<SET-ID>-vaultjob.
    dir: PathBuf,
    /// How long to wait for files still open for writing.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    wait_for_writers: std::time::Duration,
    #[command(flatten)]
    then: ThenWait,
    /// Write the manifest even if one exists.
    #[arg(long)]
    force: bool,
    /// Skip the checksums (`<share>/.vault-agent/checksums/<SET-ID>.jsonl`):
    /// the agent then computes each file's when it verifies its content.
    #[arg(long)]
    no_checksums: bool,
    /// Take the suffixes from this config.
    #[arg(long, short, env = "VAULT_AGENT_CONFIG")]
    config: Option<PathBuf>,
}

#[derive(Args)]
struct VaultArgs {
    #[arg(long)]
    source: PathBuf,
    /// The share's mount point (default: `[share] path` of --config).
    #[arg(long, required_unless_present = "config")]
    share: Option<PathBuf>,
    /// Default: 16 random letters and digits.
    #[arg(long)]
    set_id: Option<String>,
    /// Files copied in parallel.
    #[arg(long, default_value_t = 8)]
    jobs: usize,
    /// Take the share and the suffixes from this config.
    #[arg(long, short, env = "VAULT_AGENT_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    then: ThenWait,
}

/// `--wait` of `vault` and `seal`: once done, wait as `wait` does.
#[derive(Args)]
struct ThenWait {
    /// Then wait until the agent decides the dataset (exit codes of `wait`;
    /// `vault` still prints the set-id first).
    #[arg(long)]
    wait: bool,
    #[command(flatten)]
    agent: AgentArgs,
    #[command(flatten)]
    options: WaitOptions,
}

impl ThenWait {
    /// Waits for `set_id` if `--wait` was given; else the command succeeded.
    async fn run(
        self,
        set_id: String,
        config: Option<&config::Config>,
    ) -> anyhow::Result<ExitCode> {
        if !self.wait {
            return Ok(ExitCode::SUCCESS);
        }
        wait(vec![set_id], config, self.agent, self.options).await
    }
}

#[derive(Args)]
struct GenDataArgs {
    #[arg(long)]
    target: PathBuf,
    /// Total size, e.g. 1GiB.
    #[arg(long, value_parser = parse_size)]
    total: u64,
    #[arg(long, value_parser = parse_size, default_value = "1MiB")]
    min: u64,
    #[arg(long, value_parser = parse_size, default_value = "16MiB")]
    max: u64,
}

#[derive(Subcommand)]
enum PluginCommand {
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

fn parse_size(text: &str) -> Result<u64, String> {
    text.parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| format!("{text:?}: {e}"))
}

/// The dataset naming of a config, or the reference's defaults.
fn classifier(
    config: Option<&std::path::Path>,
) -> anyhow::Result<vault_agent::notification::Classifier> {
    let c = match config {
        Some(path) => config::load(path)?,
        None => config::Config::default(),
    };
    Ok(vault_agent::notification::Classifier::new(
        c.share.job_dir_suffix.0,
        c.share.manifest_suffix.0,
    ))
}

fn parse_setting(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.trim().to_owned(), v.to_owned()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("{text:?} is not KEY=VALUE"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let serving = matches!(cli.command, Command::Run { .. } | Command::Demo { .. });
    if !serving {
        // Printing commands end quietly on a closed pipe (`| head`), as Unix
        // tools do, instead of panicking on EPIPE.
        // SAFETY: resetting a signal to its default action at start-up,
        // before any thread exists.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let demo_quiet =
        matches!(cli.command, Command::Demo { .. }) && std::env::var_os("RUST_LOG").is_none();
    if !demo_quiet {
        logging::init(cli.log_format);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => return fail(anyhow::anyhow!("cannot start the async runtime: {e}")),
    };
    let result = runtime.block_on(dispatch(cli.command));
    // A wedged task must not hold the exit (SIGTERM's limit).
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(code) => code,
        Err(e) => fail(e),
    }
}

/// Prints an error for a person: the chain of causes, never a backtrace.
fn fail(e: anyhow::Error) -> ExitCode {
    eprintln!("error: {e:#}");
    ExitCode::FAILURE
}

/// One function per command.
async fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run { config } => run(&config).await,
        Command::CheckConfig { config } => cli::check_config::run(&config).await,
        Command::Status(args) => status(args).await,
        Command::Wait(args) => {
            let config = args.config.as_deref().map(config::load).transpose()?;
            wait(args.set_ids, config.as_ref(), args.agent, args.options).await
        }
        Command::Verify(args) => Ok(verify(args).await),
        Command::Seal(args) => seal(args).await,
        Command::Vault(args) => vault(args).await,
        Command::GenData(args) => gen_data(args),
        Command::Plugin { command } => plugin(command).await,
        Command::Completions { shell } => completions(shell),
        Command::Demo { files } => demo(files).await,
    }
}

async fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let mut api_key = args.api_key;
    let base = match (args.url, args.config) {
        (Some(url), _) => url.trim_end_matches('/').to_owned(),
        (None, Some(path)) => {
            let http = config::load(&path)?.http;
            if *http.protect_reads.get_ref() {
                api_key = api_key.or(http.api_key.map(|k| k.0));
            }
            cli::status::url_for(http.listen)
        }
        (None, None) => cli::status::url_for(config::Config::default().http.listen),
    };
    if args.watch {
        cli::watch::run(&base, api_key.as_deref()).await?;
        return Ok(ExitCode::SUCCESS);
    }
    let mode = match (args.set_id, args.pending) {
        (Some(id), _) => cli::status::Mode::Dataset(id),
        (None, Some(id)) => cli::status::Mode::Pending(id),
        (None, None) => cli::status::Mode::All,
    };
    cli::status::run(&base, api_key.as_deref(), mode, args.json).await?;
    Ok(ExitCode::SUCCESS)
}

/// Exit 0 when S3 holds the dataset, 1 when it does not, 2 when it could
/// not tell (an error, not an answer); with `--content`, 3 when only files
/// that cannot be verified remain.
async fn verify(args: VerifyArgs) -> ExitCode {
    let result: anyhow::Result<u8> = async {
        let config = match &args.config {
            Some(path) => config::load(path)?,
            None => config::Config::default(),
        };
        #[cfg(feature = "aws")]
        return cli::verify::run(cli::verify::VerifyArgs {
            set_id: args.set_id,
            bucket: args.bucket,
            config,
            manifest: args.manifest,
            json: args.json,
            content: args.content,
        })
        .await;
        #[cfg(not(feature = "aws"))]
        {
            let _ = (config, args);
            anyhow::bail!("this build has no AWS support (built without the `aws` feature)")
        }
    }
    .await;
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn gen_data(args: GenDataArgs) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(&args.target)?;
    let r = vault_agent::share::gen_data::generate(&args.target, args.total, args.min, args.max)?;
    println!(
        "wrote {} files ({}) in {} directories under {}",
        r.files,
        bytesize::ByteSize(r.bytes),
        r.directories,
        args.target.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn completions(shell: clap_complete::Shell) -> anyhow::Result<ExitCode> {
    use clap::CommandFactory;
    let mut cli = Cli::command();
    clap_complete::generate(shell, &mut cli, "vault-agent", &mut std::io::stdout());
    Ok(ExitCode::SUCCESS)
}

async fn demo(files: usize) -> anyhow::Result<ExitCode> {
    cli::demo::run(files).await?;
    Ok(ExitCode::SUCCESS)
}

async fn run(path: &std::path::Path) -> anyhow::Result<ExitCode> {
    let config = config::load(path)?;
    let agent = Agent::start(&config)
        .await
        .context("cannot start vault-agent")?;
    shutdown_signal().await;
    tracing::info!("shutting down");
    if tokio::time::timeout(SHUTDOWN_LIMIT, agent.shutdown())
        .await
        .is_err()
    {
        tracing::error!(
            "shutdown took longer than {SHUTDOWN_LIMIT:?}; exiting with what is committed"
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// Waits for datasets through the agent (`wait`, `vault --wait`, `seal
/// --wait`); the exit code says how they ended.
async fn wait(
    set_ids: Vec<String>,
    config: Option<&config::Config>,
    agent: AgentArgs,
    options: WaitOptions,
) -> anyhow::Result<ExitCode> {
    let (base, api_key) = cli::wait::agent_of(agent.url, config, agent.api_key)?;
    let code = cli::wait::run(cli::wait::WaitArgs {
        set_ids,
        base,
        api_key,
        timeout: options.timeout,
        json: options.json,
        quiet: options.quiet,
    })
    .await;
    Ok(ExitCode::from(code))
}

async fn seal(args: SealArgs) -> anyhow::Result<ExitCode> {
    let c = classifier(args.config.as_deref())?;
    let options = vault_agent::share::seal::SealOptions {
        wait_for_writers: args.wait_for_writers,
        force: args.force,
        checksums: (!args.no_checksums).then(Default::default),
    };
    let r = vault_agent::share::seal::seal(&args.dir, &c, &options)?;
    println!(
        "sealed {}: {} lines ({} directories, {} files) in {}",
        r.set_id,
        r.lines,
        r.directories,
        r.files,
        r.manifest.display()
    );
    if let Some((path, read)) = &r.checksums {
        println!(
            "checksums (CRC64NVME) of {} files in {} ({} read)",
            r.files,
            path.display(),
            bytesize::ByteSize(*read)
        );
    }
    let config = match args.then.wait {
        true => args.config.as_deref().map(config::load).transpose()?,
        false => None,
    };
    args.then.run(r.set_id, config.as_ref()).await
}

async fn vault(args: VaultArgs) -> anyhow::Result<ExitCode> {
    let VaultArgs {
        source,
        share,
        set_id,
        jobs,
        config,
        then,
    } = args;
    let loaded = config.as_deref().map(config::load).transpose()?;
    let share = match (share, &loaded) {
        (Some(s), _) => s,
        (None, Some(c)) => c.share.path.clone(),
        (None, None) => anyhow::bail!("give --share, or --config to take the share from it"),
    };
    let c = classifier(config.as_deref())?;
    let r = tokio::task::spawn_blocking(move || {
        vault_agent::share::vault::vault(&source, &share, set_id.as_deref(), jobs, &c)
    })
    .await??;
    eprintln!(
        "vaulted {} files ({}) into {} in {:.1}s ({}/s){}",
        r.files,
        bytesize::ByteSize(r.bytes),
        r.dest.display(),
        r.elapsed.as_secs_f64(),
        bytesize::ByteSize((r.bytes as f64 / r.elapsed.as_secs_f64().max(1e-3)) as u64),
        if r.skipped_links > 0 {
            format!("; skipped {} symlinks/special files", r.skipped_links)
        } else {
            String::new()
        }
    );
    println!("{}", r.set_id);
    then.run(r.set_id, loaded.as_ref()).await
}

async fn plugin(command: PluginCommand) -> anyhow::Result<ExitCode> {
    match command {
        PluginCommand::List => cli::plugin::list(),
        PluginCommand::Test {
            policy,
            manifest,
            events,
            settings,
            json,
        } => {
            let args = cli::plugin::TestArgs {
                policy,
                manifest,
                events,
                settings,
                json,
            };
            // Off the async runtime: plugin calls may block.
            let complete = tokio::task::spawn_blocking(move || cli::plugin::test(args)).await??;
            if !complete {
                return Ok(ExitCode::from(2));
            }
        }
        PluginCommand::Compile { wasm, out } => {
            let host = vault_agent::reconcile::plugin::PluginHost::new(
                None,
                vault_agent::reconcile::plugin::Limits::default(),
            )?;
            host.precompile_file(&wasm, &out)?;
        }
        PluginCommand::RunTests { test, args } => {
            // WASI's sync shims block: not on an async worker.
            let passed =
                tokio::task::spawn_blocking(move || cli::plugin::run_tests(&test, &args)).await??;
            if !passed {
                return Ok(ExitCode::from(101));
            }
        }
        PluginCommand::New { name, dir } => {
            let root = cli::plugin::new(&name, &dir)?;
            println!("created {}", root.display());
            println!("build it:  cd {} && cargo build --release", root.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
