//! Share-side figures:
//! - `vault` copy throughput against `cp -r` of the same tree;
//! - the share watcher's CPU time and memory while 100,000 files are written
//!   into a dataset by another process;
//! - the agent's RSS with 1,000,000 tracked files (start-up scan).
//!
//!     cargo bench -p vault-agent --bench share -- [--only vault|watch|scale] [--vault-mib N] [--files N] [--tracked N]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use vault_agent::Agent;
use vault_agent::config;
use vault_agent::notification::Classifier;
use vault_agent::share::{gen_data, vault};

const BIN: &str = env!("CARGO_BIN_EXE_vault-agent");

/// `cargo bench --bench share -- [OPTIONS]`
#[derive(clap::Parser)]
struct Args {
    /// Run one part only.
    #[arg(long, value_parser = ["vault", "watch", "scale"])]
    only: Option<String>,
    /// MiB copied by the vault part.
    #[arg(long, default_value_t = 2048)]
    vault_mib: u64,
    /// Files the watch part writes.
    #[arg(long, default_value_t = 100_000)]
    files: u64,
    /// Files the scale part tracks.
    #[arg(long, default_value_t = 1_000_000)]
    tracked: u64,
    /// Passed by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

fn status_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// User + system CPU time of this process so far.
fn cpu_time() -> Duration {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage fills the struct we own.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

fn mib(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64()
}

fn bench_vault(mib_total: u64) {
    let tmp = tempfile::tempdir_in(".").expect("temp dir");
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let report = gen_data::generate(&src, mib_total << 20, 64 << 10, 4 << 20).expect("gen-data");
    let share = tmp.path().join("share");
    std::fs::create_dir_all(&share).unwrap();
    println!(
        "vault vs cp -r: {} files, {} MiB in {} dirs (source in page cache)",
        report.files, mib_total, report.directories
    );
    let classifier = Classifier::new("-vaultjob", ".manifest");
    let mut ratios = Vec::new();
    for round in 0..3 {
        let cp_dest = share.join(format!("cp{round}"));
        let t = Instant::now();
        let ok = Command::new("cp")
            .arg("-r")
            .arg(&src)
            .arg(&cp_dest)
            .status()
            .unwrap()
            .success();
        let _ = Command::new("sync").status();
        let cp = t.elapsed();
        assert!(ok);
        let t = Instant::now();
        vault::vault(&src, &share, Some(&format!("V{round}")), 8, &classifier).expect("vault");
        let _ = Command::new("sync").status();
        let v = t.elapsed();
        println!(
            "  round {round}: cp -r {:>7.1} MiB/s ({:.2} s)   vault --jobs 8 {:>7.1} MiB/s ({:.2} s)   vault/cp {:>5.0}%",
            mib(report.bytes, cp),
            cp.as_secs_f64(),
            mib(report.bytes, v),
            v.as_secs_f64(),
            100.0 * cp.as_secs_f64() / v.as_secs_f64()
        );
        ratios.push(cp.as_secs_f64() / v.as_secs_f64());
        let _ = std::fs::remove_dir_all(&cp_dest);
        let _ = std::fs::remove_dir_all(share.join(format!("V{round}-vaultjob")));
    }
    ratios.sort_by(f64::total_cmp);
    println!(
        "  median vault throughput: {:.0}% of cp -r",
        100.0 * ratios[1]
    );
}

fn start_agent(root: &Path, rt: &tokio::runtime::Runtime) -> Agent {
    let text = "[agent]\nstate_dir = \"state\"\n[share]\npath = \"share\"\n[http]\nlisten = \"127.0.0.1:0\"\n\
                [store]\nsync = \"normal\"\n[[sink]]\nkind = \"file\"\npath = \"events.jsonl\"\n";
    let config = config::parse(text, Path::new("bench.toml"), root).expect("config");
    rt.block_on(Agent::start(&config)).expect("agent")
}

fn local_files(agent: &Agent, rt: &tokio::runtime::Runtime, set_id: &str) -> u64 {
    let base = format!("http://{}", agent.local_addr());
    rt.block_on(vault_agent::cli::status::fetch(&base, Some(set_id)))
        .ok()
        .and_then(|v| v["local-files"].as_u64())
        .unwrap_or(0)
}

fn wait_tracked(
    agent: &Agent,
    rt: &tokio::runtime::Runtime,
    set_id: &str,
    count: u64,
    limit: Duration,
) -> Duration {
    let t = Instant::now();
    while local_files(agent, rt, set_id) < count {
        assert!(t.elapsed() < limit, "watcher did not catch up");
        std::thread::sleep(Duration::from_millis(50));
    }
    t.elapsed()
}

fn bench_watch(files: u64) {
    let tmp = tempfile::tempdir_in(".").expect("temp dir");
    std::fs::create_dir_all(tmp.path().join("share/WATCH-vaultjob")).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let agent = start_agent(tmp.path(), &rt);
    std::thread::sleep(Duration::from_millis(300));
    let (cpu0, rss0) = (cpu_time(), status_kb("VmRSS:"));
    let t = Instant::now();
    // Another process writes the files (1 KiB each, 10 to 50 directories).
    let out = Command::new(BIN)
        .args(["gen-data", "--target"])
        .arg(tmp.path().join("share/WATCH-vaultjob"))
        .args([
            "--total",
            &format!("{}KiB", files),
            "--min",
            "1KiB",
            "--max",
            "1KiB",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let writing = t.elapsed();
    let dirs = std::fs::read_dir(tmp.path().join("share/WATCH-vaultjob"))
        .unwrap()
        .count() as u64;
    let lag = wait_tracked(
        &agent,
        &rt,
        "WATCH",
        files + dirs + 1,
        Duration::from_secs(600),
    );
    let cpu = cpu_time() - cpu0;
    let wall = t.elapsed();
    println!(
        "watcher: {files} files written by another process in {:.2} s",
        writing.as_secs_f64()
    );
    println!(
        "  all tracked {:.2} s after the writer finished; agent CPU {:.2} s ({:.0}% of one core over {:.2} s), \
         {:.1} us CPU per file; RSS {} -> {} MiB (peak {} MiB)",
        lag.as_secs_f64(),
        cpu.as_secs_f64(),
        100.0 * cpu.as_secs_f64() / wall.as_secs_f64(),
        wall.as_secs_f64(),
        cpu.as_secs_f64() * 1e6 / files as f64,
        rss0 / 1024,
        status_kb("VmRSS:") / 1024,
        status_kb("VmHWM:") / 1024
    );
    rt.block_on(agent.shutdown());
}

fn bench_scale(tracked: u64) {
    let tmp = tempfile::tempdir_in(".").expect("temp dir");
    let root = tmp.path().join("share/SCALE-vaultjob");
    let t = Instant::now();
    let per_dir = 1000;
    for d in 0..tracked.div_ceil(per_dir) {
        let dir = root.join(format!("d{d:04}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..per_dir.min(tracked - d * per_dir) {
            std::fs::File::create(dir.join(format!("file-{f:04}.dat"))).unwrap();
        }
    }
    let dirs = tracked.div_ceil(per_dir);
    println!(
        "scale: {tracked} files in {dirs} directories created in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let rss_before = status_kb("VmRSS:");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let t = Instant::now();
    let agent = start_agent(tmp.path(), &rt);
    let scan = wait_tracked(
        &agent,
        &rt,
        "SCALE",
        tracked + dirs + 1,
        Duration::from_secs(1800),
    );
    let db = std::fs::metadata(tmp.path().join("state/vault-agent.db"))
        .map(|m| m.len())
        .unwrap_or(0);
    println!(
        "  start-up scan tracked all in {:.1} s ({:.0} files/s); agent RSS now {} MiB, peak {} MiB (before start {} MiB); database {} MiB",
        scan.as_secs_f64(),
        tracked as f64 / t.elapsed().as_secs_f64(),
        status_kb("VmRSS:") / 1024,
        status_kb("VmHWM:") / 1024,
        rss_before / 1024,
        db >> 20
    );
    rt.block_on(agent.shutdown());
}

fn main() {
    let args: Args = clap::Parser::parse();
    let run = |name: &str| args.only.as_deref().is_none_or(|o| o == name);
    if run("vault") {
        bench_vault(args.vault_mib);
    }
    if run("watch") {
        bench_watch(args.files);
    }
    if run("scale") {
        bench_scale(args.tracked);
    }
}
