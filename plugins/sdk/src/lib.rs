//! Write vault-agent reconcile policies in a few lines of Rust.
//!
//! ```ignore
//! use vault_policy_sdk::{Policy, Settings, Upload, UploadVerdict};
//!
//! struct SkipTemp;
//!
//! impl Policy for SkipTemp {
//!     fn init(settings: &Settings) -> Result<Self, String> {
//!         settings.allow_only(&[])?;
//!         Ok(SkipTemp)
//!     }
//!     fn on_upload(&self, upload: &Upload) -> UploadVerdict {
//!         if upload.entry.ends_with(".tmp") { UploadVerdict::Ignore } else { UploadVerdict::Count }
//!     }
//! }
//!
//! vault_policy_sdk::policy!(SkipTemp);
//! ```
//!
//! Build with `cargo build --release --target wasm32-wasip2`; the `.wasm` in
//! `target/wasm32-wasip2/release/` is the component the agent loads.
//!
//! The hooks are the methods of [`Policy`]; each has the exact-match
//! behaviour by default. The types a hook sees ([`Upload`], [`Summary`], ...)
//! come from the interface `wit/0.2.0/reconcile.wit`. Read this documentation with
//! `cargo doc --open -p vault-policy-sdk` (in the agent's `plugins/`
//! workspace, or in a crate made by `vault-agent plugin new`).

#![warn(missing_docs)]

/// The bindings generated from `wit/0.2.0/reconcile.wit`.
#[allow(missing_docs)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "reconcile-policy",
        path: "wit",
        pub_export_macro: true,
        export_macro_name: "export_component",
        default_bindings_module: "vault_policy_sdk::bindings",
    });
}

pub use bindings::vault::reconcile::host::Level;
pub use bindings::vault::reconcile::types::{
    Decision, ExpectedEntry, Summary, Upload, UploadKind, UploadVerdict,
};

/// What a policy decides. Every hook has the exact-match behaviour by
/// default, so a policy overrides only what it changes.
pub trait Policy: Sized + 'static {
    /// Validates the settings from the agent config and builds the policy.
    /// An error stops the plugin from loading, with this message shown.
    fn init(settings: &Settings) -> Result<Self, String>;

    /// Ask the agent for the sizes of manifest entries (read from the share).
    fn wants_expected_sizes(&self) -> bool {
        false
    }

    /// Whether a manifest line takes part in the comparison.
    fn expects(&self, _entry: &str) -> bool {
        true
    }

    /// Count, ignore or reject an upload as it arrives.
    fn on_upload(&self, _upload: &Upload) -> UploadVerdict {
        UploadVerdict::Count
    }

    /// Does a counted upload satisfy its manifest entry?
    fn entry_matches(&self, _expected: &ExpectedEntry, _upload: &Upload) -> bool {
        true
    }

    /// Complete, wait or fail, given the dataset's counters.
    fn decide(&self, summary: &Summary) -> Decision {
        exact_decision(summary)
    }
}

mod exact_match;

/// Complete when every manifest entry matched and nothing else was counted
/// (the agent's native exact-match runs this same code).
pub fn exact_decision(s: &Summary) -> Decision {
    match exact_match::why_incomplete(s.manifest_entries, s.missing, s.mismatched, s.unexpected, s.rejected) {
        None => Decision::Complete,
        Some(why) => Decision::Wait(why),
    }
}

/// What the policy keeps about the dataset of the current call: a small
/// value ([`state::MAX_BYTES`] at most) the agent stores with the dataset,
/// in the same transaction as the notification whose call set it. It
/// survives agent restarts, plugin reloads and traps; keep here whatever a
/// later call must know (a marker seen, a running total), never in the
/// policy's own memory, which the agent may throw away at any time.
///
/// A call that fails (traps, panics, runs out of time) changes nothing.
pub mod state {
    /// The largest value [`set`] accepts.
    pub const MAX_BYTES: usize = 4096;

    /// The dataset's state: empty until set, and in `init` and
    /// `wants_expected_sizes` (which are about no dataset).
    pub fn get() -> Vec<u8> {
        crate::bindings::vault::reconcile::state::get()
    }

    /// Replaces the dataset's state; an empty value clears it. Errors,
    /// changing nothing, over [`MAX_BYTES`] or outside a dataset's call.
    pub fn set(value: &[u8]) -> Result<(), String> {
        crate::bindings::vault::reconcile::state::set(value)
    }
}

/// Writes a line to the agent's log, attributed to this plugin.
pub fn log(level: Level, message: &str) {
    bindings::vault::reconcile::host::log(level, message);
}

/// The plugin's settings: `[reconcile.policy_config]` (or a route's
/// `policy_config`) as key/value strings.
#[derive(Debug, Clone, Default)]
pub struct Settings(Vec<(String, String)>);

impl Settings {
    /// Settings from key/value pairs (the agent passes them to `init`).
    pub fn new(pairs: Vec<(String, String)>) -> Self {
        Settings(pairs)
    }

    /// The value of `key` (the last one, if given twice).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// The value of `key`, or an error naming it for `init` to return.
    pub fn require(&self, key: &str) -> Result<&str, String> {
        self.get(key).ok_or_else(|| format!("setting `{key}` is required"))
    }

    /// A comma-separated list, items trimmed, empty items dropped.
    pub fn list(&self, key: &str) -> Vec<&str> {
        self.get(key)
            .map(|v| v.split(',').map(str::trim).filter(|s| !s.is_empty()).collect())
            .unwrap_or_default()
    }

    /// Refuses keys this policy does not know, naming them.
    pub fn allow_only(&self, known: &[&str]) -> Result<(), String> {
        match self.0.iter().find(|(k, _)| !known.contains(&k.as_str())) {
            None => Ok(()),
            Some((k, _)) if known.is_empty() => Err(format!("unknown setting `{k}`: this policy takes no settings")),
            Some((k, _)) => Err(format!("unknown setting `{k}`; known: {}", known.join(", "))),
        }
    }
}

#[doc(hidden)]
pub mod __private {
    use std::cell::OnceCell;

    /// Runs `f` on the initialised policy; a hook called before `init`
    /// traps, which the agent reports and treats as a failed call.
    pub fn with<P, T>(cell: &'static std::thread::LocalKey<OnceCell<P>>, f: impl FnOnce(&P) -> T) -> T {
        cell.with(|c| match c.get() {
            Some(p) => f(p),
            None => panic!("policy hook called before init"),
        })
    }
}

/// Exports a [`Policy`] implementation as the component's `policy` interface.
#[macro_export]
macro_rules! policy {
    ($ty:ty) => {
        struct __VaultPolicyComponent;

        ::std::thread_local! {
            static __VAULT_POLICY: ::std::cell::OnceCell<$ty> = const { ::std::cell::OnceCell::new() };
        }

        impl $crate::bindings::exports::vault::reconcile::policy::Guest for __VaultPolicyComponent {
            fn init(settings: ::std::vec::Vec<(::std::string::String, ::std::string::String)>)
                -> ::std::result::Result<(), ::std::string::String> {
                let policy = <$ty as $crate::Policy>::init(&$crate::Settings::new(settings))?;
                __VAULT_POLICY.with(|c| c.set(policy).map_err(|_| "init called twice".to_string()))
            }
            fn wants_expected_sizes() -> bool {
                $crate::__private::with(&__VAULT_POLICY, |p| $crate::Policy::wants_expected_sizes(p))
            }
            fn expects(entry: ::std::string::String) -> bool {
                $crate::__private::with(&__VAULT_POLICY, |p| $crate::Policy::expects(p, &entry))
            }
            fn on_upload(upload: $crate::Upload) -> $crate::UploadVerdict {
                $crate::__private::with(&__VAULT_POLICY, |p| $crate::Policy::on_upload(p, &upload))
            }
            fn entry_matches(expected: $crate::ExpectedEntry, upload: $crate::Upload) -> bool {
                $crate::__private::with(&__VAULT_POLICY, |p| $crate::Policy::entry_matches(p, &expected, &upload))
            }
            fn decide(summary: $crate::Summary) -> $crate::Decision {
                $crate::__private::with(&__VAULT_POLICY, |p| $crate::Policy::decide(p, &summary))
            }
        }

        $crate::bindings::export_component!(__VaultPolicyComponent with_types_in $crate::bindings);
    };
}
