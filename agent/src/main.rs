//! The `vault-agent` command line.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;

use vault_agent::config;
use vault_agent::logging::{self, LogFormat};
use vault_agent::{Agent, cli};

mod args;
use args::{
    AgentArgs, Cli, Command, GenDataArgs, PluginCommand, SealArgs, ServiceArgs, StatusArgs,
    ThenWait, VaultArgs, VerifyArgs, WaitOptions,
};

/// `--version`: the version and the git commit built (see `build/`).
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("VAULT_AGENT_COMMIT"),
    ")"
);

/// SIGTERM exits within this, committed or not.
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(15);

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
        Command::Run(args) => run(args).await,
        Command::CheckConfig(args) => {
            cli::check_config::run(&args.config, args.state_dir.as_deref()).await
        }
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

async fn run(args: ServiceArgs) -> anyhow::Result<ExitCode> {
    let config = config::load(&args.config)?.with_state_dir(args.state_dir);
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
