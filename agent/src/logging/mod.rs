//! Logs on standard error: the agent's stand-in for the reference's log
//! groups (one line per classified upload and per reconcile event).
//! Human-readable by default, JSON lines with `--log-format json`; the level
//! comes from `RUST_LOG` (default `info`).

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing_subscriber::EnvFilter;

mod format;
pub use format::LogFormat;

pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only on a terminal: not in files, journald or pipes.
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Lets through at most `burst` log lines per `window` and counts the
/// rest, so a flood of bad requests cannot flood the log.
pub struct RateLimit {
    burst: u32,
    window: Duration,
    /// (window start, lines let through in it, lines held back).
    state: Mutex<Option<(Instant, u32, u64)>>,
}

impl RateLimit {
    pub const fn new(burst: u32, window: Duration) -> RateLimit {
        RateLimit {
            burst,
            window,
            state: Mutex::new(None),
        }
    }

    /// `Some(n)` if this line may be logged, `n` being how many were held
    /// back since the last one logged; `None` if it is held back.
    pub fn allow(&self) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let (start, passed, held) = state.get_or_insert((now, 0, 0));
        if now.duration_since(*start) >= self.window {
            *start = now;
            *passed = 0;
        }
        if *passed < self.burst {
            *passed += 1;
            Some(std::mem::take(held))
        } else {
            *held += 1;
            None
        }
    }
}

/// Longest text from outside (an AWS error answer, a listing failure) kept
/// in a note, `/status` or a log line.
pub const EXTERNAL_TEXT_BYTES: usize = 1024;

/// Text that came from outside, made safe to keep and show: control
/// characters become spaces, runs of whitespace one space, and it is cut to
/// [`EXTERNAL_TEXT_BYTES`] at a character boundary. An endpoint answering
/// a megabyte of junk costs one kilobyte per note.
pub fn clean_external(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(EXTERNAL_TEXT_BYTES + 8));
    let mut space = false;
    for c in text.chars() {
        let c = if c.is_control() || c.is_whitespace() {
            ' '
        } else {
            c
        };
        if c == ' ' && (space || out.is_empty()) {
            continue;
        }
        space = c == ' ';
        if out.len() + c.len_utf8() > EXTERNAL_TEXT_BYTES {
            out.push_str(" [cut]");
            return out;
        }
        out.push(c);
    }
    out.truncate(out.trim_end().len());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn external_text_is_cleaned_and_capped() {
        assert_eq!(
            clean_external("  SlowDown:\n\treduce\u{1b}[31m rate  "),
            "SlowDown: reduce [31m rate"
        );
        let junk = "é".repeat(1 << 20);
        let kept = clean_external(&junk);
        assert!(kept.len() <= EXTERNAL_TEXT_BYTES + " [cut]".len());
        assert!(kept.ends_with(" [cut]"));
    }

    #[test]
    fn rate_limit_holds_back_and_counts() {
        let limit = RateLimit::new(2, Duration::from_secs(3600));
        assert_eq!(limit.allow(), Some(0));
        assert_eq!(limit.allow(), Some(0));
        assert_eq!(limit.allow(), None);
        assert_eq!(limit.allow(), None);
        let limit = RateLimit::new(1, Duration::ZERO);
        assert_eq!(limit.allow(), Some(0));
        assert_eq!(limit.allow(), Some(0));
    }
}
