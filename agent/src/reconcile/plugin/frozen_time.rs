//! Time as a plugin sees it: it stands still at the epoch, and every wait on
//! it ends at once.
//!
//! A policy is a pure function of what it is told, so it needs no clock. A
//! sleep is a host call (subscribe to a clock, then poll), and the epoch
//! deadline only interrupts guest code: a plugin that slept forever once
//! wedged the engine. Here both clock subscriptions give a pollable that is
//! already ready, so a sleep returns at once and a sleep in a loop is a busy
//! loop, which the call deadline stops.

use std::time::Duration;

use wasmtime::component::{Linker, Resource};
use wasmtime_wasi::p2::{DynPollable, Pollable, subscribe};
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiView};

/// The interface whose subscriptions are replaced; its version is the one
/// the linked `wasmtime-wasi` defines (the linker matches 0.2.x imports).
const MONOTONIC_CLOCK: &str = "wasi:clocks/monotonic-clock@0.2.12";

/// The clock handed to every plugin (wall and monotonic).
pub struct FrozenClock;

impl HostWallClock for FrozenClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl HostMonotonicClock for FrozenClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

/// A pollable that is ready from the start.
struct Ready;

#[wasmtime_wasi::async_trait]
impl Pollable for Ready {
    async fn ready(&mut self) {}
}

/// Replaces `subscribe-duration` and `subscribe-instant` in a linker that
/// already holds the WASI interfaces.
pub fn add_to_linker<T: WasiView + 'static>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let mut clock = linker.instance(MONOTONIC_CLOCK)?;
    clock.func_wrap("subscribe-duration", |mut store, (_nanos,): (u64,)| {
        ready_now(store.data_mut())
    })?;
    clock.func_wrap("subscribe-instant", |mut store, (_when,): (u64,)| {
        ready_now(store.data_mut())
    })?;
    linker.allow_shadowing(false);
    Ok(())
}

fn ready_now<T: WasiView>(state: &mut T) -> wasmtime::Result<(Resource<DynPollable>,)> {
    let table = state.ctx().table;
    let ready = table.push(Ready)?;
    Ok((subscribe(table, ready)?,))
}
