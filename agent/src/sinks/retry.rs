//! One retry rule for every sink, as Vector's `RetryLogic`: a sink says of
//! each event whether it was delivered, and if not whether delivering it
//! again may help; only the dispatcher acts on that (backs off and retries,
//! or reports the event as refused and moves past it).

use super::SinkError;

/// Whether delivering an event again may succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// A transient failure (network, throttling, a server error, a full
    /// disk): the dispatcher delivers it again after a backoff. An event
    /// never given up on for these stays in the outbox until it is out.
    Later,
    /// The receiver refused this event for good (a 4xx, a validation
    /// error): delivering it again cannot help. The dispatcher reports it
    /// (`EVENT NOT DELIVERED`) and moves past it; it stays in the outbox.
    Never,
}

impl Retry {
    /// An HTTP answer that is not 2xx: timeouts, throttling and server
    /// errors pass; any other 4xx is the receiver's final word.
    pub fn http(status: u16) -> Retry {
        match status {
            408 | 429 => Retry::Later,
            400..=499 => Retry::Never,
            _ => Retry::Later,
        }
    }

    /// An EventBridge `PutEvents` entry's error code: throttling and the
    /// service's own failures pass; the others (a malformed or too large
    /// entry, a missing bus) refuse the event.
    pub fn eventbridge(code: &str) -> Retry {
        match code {
            "ThrottlingException"
            | "InternalFailure"
            | "InternalException"
            | "ServiceUnavailable" => Retry::Later,
            _ => Retry::Never,
        }
    }
}

/// What became of each event given to a sink, in the same order.
pub type Delivery = Vec<Result<(), SinkError>>;

/// A delivery that stopped at event `at` with `error`: those before it are
/// out, and those after it were not tried (they are delivered again).
pub fn stopped_at(total: usize, at: usize, error: SinkError) -> Delivery {
    let mut results: Delivery = (0..at.min(total)).map(|_| Ok(())).collect();
    if at < total {
        let not_tried = SinkError {
            message: format!("not tried after an earlier event failed: {}", error.message),
            retry: Retry::Later,
            sink: error.sink.clone(),
        };
        results.push(Err(error));
        results.extend((at + 1..total).map(|_| Err(not_tried.clone())));
    }
    results
}

/// A delivery of `total` events that succeeded or failed as one.
pub fn all(total: usize, result: Result<(), SinkError>) -> Delivery {
    match result {
        Ok(()) => (0..total).map(|_| Ok(())).collect(),
        Err(e) => stopped_at(total, 0, e),
    }
}

/// The failures of one attempt, for its log line: each distinct message
/// once, with how many events it failed (the first `KINDS` messages; the
/// rest counted), so the line names every kind of failure, not only the
/// last, and stays short whatever the sink answered.
#[derive(Debug, Default)]
pub struct FailureSummary {
    kinds: Vec<(String, usize)>,
    others: usize,
}

impl FailureSummary {
    const KINDS: usize = 3;

    pub fn add(&mut self, error: &SinkError) {
        if let Some((_, n)) = self.kinds.iter_mut().find(|(m, _)| *m == error.message) {
            *n += 1;
        } else if self.kinds.len() < Self::KINDS {
            self.kinds.push((error.message.clone(), 1));
        } else {
            self.others += 1;
        }
    }

    pub fn is_empty(&self) -> bool {
        self.kinds.is_empty()
    }
}

impl std::fmt::Display for FailureSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (message, n)) in self.kinds.iter().enumerate() {
            let sep = if i == 0 { "" } else { "; " };
            let events = if *n == 1 { "event" } else { "events" };
            write!(f, "{sep}{message} ({n} {events})")?;
        }
        if self.others > 0 {
            write!(f, "; {} more with other errors", self.others)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_summary_names_each_kind_once_and_stays_short() {
        let mut summary = FailureSummary::default();
        assert!(summary.is_empty());
        for message in ["throttled", "internal", "throttled", "a", "b", "b"] {
            summary.add(&SinkError::new("s", Retry::Later, message));
        }
        assert_eq!(
            summary.to_string(),
            "throttled (2 events); internal (1 event); a (1 event); 2 more with other errors"
        );
    }

    fn error(retry: Retry) -> SinkError {
        SinkError::new("s", retry, "boom")
    }

    #[test]
    fn http_answers_are_retried_unless_the_receiver_refused_the_event() {
        assert_eq!(Retry::http(500), Retry::Later);
        assert_eq!(Retry::http(503), Retry::Later);
        assert_eq!(Retry::http(429), Retry::Later);
        assert_eq!(Retry::http(408), Retry::Later);
        assert_eq!(Retry::http(400), Retry::Never);
        assert_eq!(Retry::http(404), Retry::Never);
        assert_eq!(Retry::eventbridge("ThrottlingException"), Retry::Later);
        assert_eq!(Retry::eventbridge("ValidationException"), Retry::Never);
    }

    #[test]
    fn a_stopped_delivery_retries_the_failed_event_and_those_not_tried() {
        let d = stopped_at(4, 1, error(Retry::Never));
        assert!(d[0].is_ok());
        assert_eq!(d[1].as_ref().unwrap_err().retry, Retry::Never);
        assert_eq!(d[2].as_ref().unwrap_err().retry, Retry::Later);
        assert_eq!(d.len(), 4);
        assert!(all(3, Ok(())).iter().all(Result::is_ok));
        assert_eq!(all(2, Err(error(Retry::Later))).len(), 2);
    }
}
