//! `vault:reconcile@0.2.0` (`wit/`, the current interface): 0.1.0 plus
//! durable per-dataset policy state.

wasmtime::component::bindgen!({ path: "../wit", world: "reconcile-policy" });

version_module!();

impl self::vault::reconcile::state::Host for HostState {
    fn get(&mut self) -> Vec<u8> {
        self.state.get()
    }

    fn set(&mut self, value: Vec<u8>) -> Result<(), String> {
        self.state.set(value)
    }
}
