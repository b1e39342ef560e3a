//! Free loopback ports for test servers, reserved within this process until released.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::{Mutex, PoisonError};

use super::HarnessError;

/// Ports are drawn below the kernel's usual ephemeral range (32768 and up), so an outgoing
/// client connection can never be given the port of a server that is briefly stopped for a
/// restart. The cluster bus port (`port + 10000`) stays below that range too.
const FIRST_PORT: u16 = 15_000;
const LAST_PORT: u16 = 22_767;
/// Redis Cluster listens for its node-to-node bus on the client port plus this offset.
const BUS_OFFSET: u16 = 10_000;
const TRIES: usize = 200;

/// Ports handed out and not yet released by this process. Other processes are caught by the
/// bind check; this set also covers servers of this process that are stopped for a while.
static RESERVED: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// A port (and for cluster nodes its bus port) reserved until this value is dropped.
#[derive(Debug)]
pub(super) struct PortReservation {
    port: u16,
    with_bus: bool,
}

impl PortReservation {
    pub(super) fn port(&self) -> u16 {
        self.port
    }

    fn ports(&self) -> impl Iterator<Item = u16> {
        ports_of(self.port, self.with_bus)
    }
}

fn ports_of(port: u16, with_bus: bool) -> impl Iterator<Item = u16> {
    std::iter::once(port).chain(with_bus.then_some(port + BUS_OFFSET))
}

impl Drop for PortReservation {
    fn drop(&mut self) {
        let mut reserved = RESERVED.lock().unwrap_or_else(PoisonError::into_inner);
        for port in self.ports() {
            reserved.remove(&port);
        }
    }
}

/// Picks a port that is free now, plus its bus port when `with_bus` is set.
pub(super) fn reserve(with_bus: bool) -> Result<PortReservation, HarnessError> {
    let mut reserved = RESERVED.lock().unwrap_or_else(PoisonError::into_inner);
    for _ in 0..TRIES {
        let port = rand::random_range(FIRST_PORT..=LAST_PORT);
        if ports_of(port, with_bus).all(|p| !reserved.contains(&p) && is_free(p)) {
            reserved.extend(ports_of(port, with_bus));
            return Ok(PortReservation { port, with_bus });
        }
    }
    Err(HarnessError::NoFreePort(TRIES))
}

fn is_free(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
}
