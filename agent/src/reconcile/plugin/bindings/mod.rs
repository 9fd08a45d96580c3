//! One module per supported version of the plugin interface, as Zed's
//! extension host does: each binds its frozen WIT (`v0_1`: `wit/0.1.0/`,
//! `v0_2`: `wit/0.2.0/`, the current one), names its package, and converts between the agent's policy
//! types and that version's generated ones ([`version_module!`]). A component
//! is bound to the version it was built against, so a plugin built years ago
//! keeps loading unchanged.
//!
//! Adding a version: write it in `wit/<version>/` (the newest folder is the
//! current interface; point `plugins/sdk/wit` at it), add a module here for
//! it, and an arm to [`PolicyPre::new`] and to [`each!`].

#[macro_use]
mod version_module;
mod v0_1;
mod v0_2;

use wasmtime::Store;
use wasmtime::component::{InstancePre, Linker};

use super::host::HostState;
use crate::reconcile::policy::{Decision, ExpectedEntry, Summary, UploadVerdict, UploadView};

/// Registers every version's host interfaces (`host`, and `state` from 0.2).
pub fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    v0_1::add_to_linker(linker)?;
    v0_2::add_to_linker(linker)
}

/// A component linked and bound to its interface version, ready to
/// instantiate.
#[derive(Clone)]
pub enum PolicyPre {
    V0_1(v0_1::ReconcilePolicyPre<HostState>),
    V0_2(v0_2::ReconcilePolicyPre<HostState>),
}

impl PolicyPre {
    /// Binds `pre` as a policy of `package` (one of `SUPPORTED_PACKAGES`).
    pub fn new(package: &str, pre: InstancePre<HostState>) -> wasmtime::Result<PolicyPre> {
        Ok(match package {
            v0_1::PACKAGE => PolicyPre::V0_1(v0_1::ReconcilePolicyPre::new(pre)?),
            v0_2::PACKAGE => PolicyPre::V0_2(v0_2::ReconcilePolicyPre::new(pre)?),
            other => wasmtime::bail!("no bindings for {other}"),
        })
    }

    pub fn instantiate(&self, store: &mut Store<HostState>) -> wasmtime::Result<BoundPolicy> {
        Ok(match self {
            PolicyPre::V0_1(pre) => BoundPolicy::V0_1(v0_1::Bound::new(pre.instantiate(store)?)),
            PolicyPre::V0_2(pre) => BoundPolicy::V0_2(v0_2::Bound::new(pre.instantiate(store)?)),
        })
    }
}

/// An instance of a policy component, whatever its version.
pub enum BoundPolicy {
    V0_1(v0_1::Bound),
    V0_2(v0_2::Bound),
}

/// Runs the same call on whichever version is bound.
macro_rules! each {
    ($policy:expr, $bound:ident => $call:expr) => {
        match $policy {
            BoundPolicy::V0_1($bound) => $call,
            BoundPolicy::V0_2($bound) => $call,
        }
    };
}

type Call<T> = wasmtime::Result<T>;

impl BoundPolicy {
    pub fn init(
        &self,
        store: &mut Store<HostState>,
        settings: &[(String, String)],
    ) -> Call<Result<(), String>> {
        each!(self, b => b.init(store, settings))
    }

    pub fn wants_expected_sizes(&self, store: &mut Store<HostState>) -> Call<bool> {
        each!(self, b => b.wants_expected_sizes(store))
    }

    pub fn expects(&self, store: &mut Store<HostState>, entry: &str) -> Call<bool> {
        each!(self, b => b.expects(store, entry))
    }

    pub fn on_upload(
        &mut self,
        store: &mut Store<HostState>,
        upload: &UploadView<'_>,
    ) -> Call<UploadVerdict> {
        each!(self, b => b.on_upload(store, upload))
    }

    pub fn entry_matches(
        &mut self,
        store: &mut Store<HostState>,
        expected: &ExpectedEntry<'_>,
        upload: &UploadView<'_>,
    ) -> Call<bool> {
        each!(self, b => b.entry_matches(store, expected, upload))
    }

    pub fn decide(&self, store: &mut Store<HostState>, summary: &Summary<'_>) -> Call<Decision> {
        each!(self, b => b.decide(store, summary))
    }
}

#[cfg(test)]
mod tests {
    use super::super::host::{Limits, PluginHost, SUPPORTED_PACKAGES};

    /// Every version in `wit/` has bindings here, each binds a real
    /// component built against it, and no other version is bound.
    #[test]
    fn every_wit_version_is_bound() {
        let host = PluginHost::new(None, Limits::default()).unwrap();
        let built = [
            (
                super::v0_2::PACKAGE,
                super::super::bundled::bytes("exact-match")
                    .unwrap()
                    .to_vec(),
            ),
            (
                super::v0_1::PACKAGE,
                std::fs::read(concat!(
                    env!("OUT_DIR"),
                    "/plugins/fixture_legacy_v0_1.wasm"
                ))
                .unwrap(),
            ),
        ];
        assert_eq!(
            SUPPORTED_PACKAGES.len(),
            built.len(),
            "a new version needs a module and a component here"
        );
        for (package, bytes) in built {
            assert!(SUPPORTED_PACKAGES.contains(&package), "{package}");
            let (component, _) = host.compile(package, &bytes).unwrap();
            assert_eq!(host.check_world(package, &component).unwrap(), package);
            let pre = host.instantiate_pre(package, &component, package).unwrap();
            let expected = match package {
                "vault:reconcile@0.1.0" => matches!(pre, super::PolicyPre::V0_1(_)),
                _ => matches!(pre, super::PolicyPre::V0_2(_)),
            };
            assert!(expected, "{package} bound to the wrong module");
        }
    }
}
