//! The bundled policies: components built from `plugins/` by the agent's
//! build script (see `agent/build.rs`) and compiled into the binary, so a
//! fresh install has them with no extra files.

macro_rules! component {
    ($file:literal) => {
        include_bytes!(concat!(env!("OUT_DIR"), "/plugins/", $file))
    };
}

/// Name and component bytes of every bundled policy.
pub const BUNDLED: &[(&str, &[u8])] = &[
    ("exact-match", component!("exact_match.wasm")),
    ("size-verified", component!("size_verified.wasm")),
    ("ignore-patterns", component!("ignore_patterns.wasm")),
];

pub fn bytes(name: &str) -> Option<&'static [u8]> {
    BUNDLED.iter().find(|(n, _)| *n == name).map(|(_, b)| *b)
}
