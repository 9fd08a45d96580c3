//! Compiling a component in a child process, bounded in time and memory.
//!
//! Compiling is the one step of loading a plugin whose cost the plugin's
//! author controls: a 1 MB component with many data segments once took 5 to
//! 9 s and up to 1.5 GB. In a child (`vault-agent plugin compile IN OUT`,
//! with a data-size limit and a deadline) a pathological component
//! costs the agent nothing but the wait, and is refused with a clear error.
//! The child writes the compiled artifact; the agent loads it like a cache
//! entry (the same binary, so the same engine settings).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Where and how a child compiles.
#[derive(Debug, Clone)]
pub struct CompileJob {
    /// The agent's own binary.
    pub exe: PathBuf,
    pub timeout: Duration,
    /// The child's data limit (heap and private writable mappings).
    pub memory_bytes: u64,
}

impl CompileJob {
    /// Compiles `wasm` into `out` in a child; Err is the reason, for the
    /// operator.
    pub fn run(&self, wasm: &Path, out: &Path) -> Result<(), String> {
        use std::os::unix::process::CommandExt;
        let memory = self.memory_bytes;
        let mut command = Command::new(&self.exe);
        command
            .args(["plugin", "compile"])
            .arg(wasm)
            .arg(out)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // SAFETY: setrlimit is async-signal-safe; it runs in the child
        // between fork and exec.
        unsafe {
            command.pre_exec(move || {
                let limit = libc::rlimit {
                    rlim_cur: memory as libc::rlim_t,
                    rlim_max: memory as libc::rlim_t,
                };
                // RLIMIT_DATA counts what the process writes to (heap and
                // private mappings), not address space merely reserved.
                if libc::setrlimit(libc::RLIMIT_DATA, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command
            .spawn()
            .map_err(|e| format!("cannot start the compiler process: {e}"))?;
        let started = Instant::now();
        loop {
            match child.try_wait() {
                Ok(Some(status)) if status.success() => return Ok(()),
                Ok(Some(status)) => {
                    let mut reason = String::new();
                    if let Some(mut stderr) = child.stderr.take() {
                        use std::io::Read;
                        let _ = (&mut stderr).take(4096).read_to_string(&mut reason);
                    }
                    let reason = reason.trim();
                    return Err(if reason.is_empty() {
                        format!(
                            "compiling failed ({status}); its memory is limited to {} MiB",
                            memory >> 20
                        )
                    } else {
                        reason.to_owned()
                    });
                }
                Ok(None) if started.elapsed() > self.timeout => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!(
                        "compiling took longer than {:?} and was stopped",
                        self.timeout
                    ));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                Err(e) => return Err(format!("waiting for the compiler process: {e}")),
            }
        }
    }
}
