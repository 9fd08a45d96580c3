//! `vault:reconcile@0.2.0` (`wit/0.2.0/`, the current interface): 0.1.0
//! plus durable per-dataset policy state.

wasmtime::component::bindgen!({ path: "../wit/0.2.0", world: "reconcile-policy" });

pub const PACKAGE: &str = "vault:reconcile@0.2.0";

version_module!();

impl self::vault::reconcile::state::Host for HostState {
    fn get(&mut self) -> Vec<u8> {
        self.state.get()
    }

    fn set(&mut self, value: Vec<u8>) -> Result<(), String> {
        self.state.set(value)
    }
}
