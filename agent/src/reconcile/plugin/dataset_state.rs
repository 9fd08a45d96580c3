//! The policy state a call sees (interface 0.2 `state`): the dataset's
//! stored value goes in before the call, and what the call `set` comes out
//! only if the call returned; a failed call leaves the stored value as it was.

use crate::reconcile::policy::{POLICY_STATE_BYTES, PolicyState};

/// One call's view of its dataset's state. Moved in and out, never copied,
/// unless the plugin asks for it.
#[derive(Debug, Default)]
pub struct CallState {
    /// False for calls about no dataset (`init`, `wants-expected-sizes`).
    about_dataset: bool,
    stored: Vec<u8>,
    /// What the call set, if it did.
    replaced: Option<Vec<u8>>,
}

impl CallState {
    /// Before a call about a dataset: its stored state, if `policy` wrote it
    /// (another policy's state reads as empty).
    pub fn enter(&mut self, policy: &str, state: &mut Option<PolicyState>) {
        self.about_dataset = true;
        self.replaced = None;
        self.stored = match state {
            Some(s) if s.policy == policy => std::mem::take(&mut s.value),
            _ => Vec::new(),
        };
    }

    /// Before a call about no dataset.
    pub fn enter_none(&mut self) {
        self.about_dataset = false;
        self.replaced = None;
        self.stored = Vec::new();
    }

    /// After the call: the stored value goes back, replaced by what the
    /// call set if it `returned`.
    pub fn leave(&mut self, policy: &str, state: &mut Option<PolicyState>, returned: bool) {
        let stored = std::mem::take(&mut self.stored);
        let value = match self.replaced.take() {
            Some(new) if returned => new,
            _ => stored,
        };
        self.about_dataset = false;
        match state {
            // Untouched: the record keeps what it had (another policy's state too).
            Some(s) if s.policy != policy && value.is_empty() => {}
            _ if value.is_empty() => *state = None,
            Some(s) if s.policy == policy => s.value = value,
            _ => {
                *state = Some(PolicyState {
                    policy: policy.to_owned(),
                    value,
                })
            }
        }
    }

    pub fn get(&self) -> Vec<u8> {
        if !self.about_dataset {
            return Vec::new();
        }
        self.replaced.as_ref().unwrap_or(&self.stored).clone()
    }

    pub fn set(&mut self, value: Vec<u8>) -> Result<(), String> {
        if !self.about_dataset {
            return Err(
                "this call is about no dataset (`init`, `wants-expected-sizes`): there is no state to set"
                    .into(),
            );
        }
        if value.len() > POLICY_STATE_BYTES {
            return Err(format!(
                "a state of {} bytes is over the limit of {POLICY_STATE_BYTES} bytes; nothing was set",
                value.len()
            ));
        }
        self.replaced = Some(value);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(policy: &str, value: &[u8]) -> Option<PolicyState> {
        Some(PolicyState {
            policy: policy.into(),
            value: value.to_vec(),
        })
    }

    #[test]
    fn a_returned_call_keeps_what_it_set_and_a_failed_one_nothing() {
        let mut call = CallState::default();
        let mut state = stored("p", b"old");
        call.enter("p", &mut state);
        assert_eq!(call.get(), b"old");
        call.set(b"new".to_vec()).unwrap();
        assert_eq!(call.get(), b"new");
        call.leave("p", &mut state, false);
        assert_eq!(state, stored("p", b"old"));

        call.enter("p", &mut state);
        call.set(b"new".to_vec()).unwrap();
        call.leave("p", &mut state, true);
        assert_eq!(state, stored("p", b"new"));

        call.enter("p", &mut state);
        call.set(Vec::new()).unwrap();
        call.leave("p", &mut state, true);
        assert_eq!(state, None);
    }

    #[test]
    fn each_policy_sees_only_its_own_state() {
        let mut call = CallState::default();
        let mut state = stored("other", b"theirs");
        call.enter("p", &mut state);
        assert_eq!(call.get(), b"");
        call.leave("p", &mut state, true);
        assert_eq!(state, stored("other", b"theirs"), "untouched stays");
        call.enter("p", &mut state);
        call.set(b"mine".to_vec()).unwrap();
        call.leave("p", &mut state, true);
        assert_eq!(state, stored("p", b"mine"));
    }

    #[test]
    fn oversized_values_and_calls_about_no_dataset_are_refused() {
        let mut call = CallState::default();
        call.enter_none();
        assert!(call.set(b"x".to_vec()).unwrap_err().contains("no dataset"));
        assert_eq!(call.get(), b"");
        let mut state = None;
        call.enter("p", &mut state);
        let err = call.set(vec![0; POLICY_STATE_BYTES + 1]).unwrap_err();
        assert!(err.contains("4096"), "{err}");
        call.set(vec![7; POLICY_STATE_BYTES]).unwrap();
        call.leave("p", &mut state, true);
        assert_eq!(state.unwrap().value.len(), POLICY_STATE_BYTES);
    }
}
