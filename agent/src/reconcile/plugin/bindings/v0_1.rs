//! `vault:reconcile@0.1.0` (`wit/0.1.0/`): the first interface, without
//! policy state.

wasmtime::component::bindgen!({ path: "../wit/0.1.0", world: "reconcile-policy" });

pub const PACKAGE: &str = "vault:reconcile@0.1.0";

version_module!();
