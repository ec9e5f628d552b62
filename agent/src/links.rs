//! The write path to the vehicles: which MAVLink link (a source, or one connection of a `tcpin:`
//! source) last heard each system id, and a bounded queue of packets to write on each link.
//!
//! Sources register a link when they open it ([`Links::register`]), note every packet's sender
//! ([`Links::heard`]: one atomic load per packet, a store only when the system moved links) and
//! write what arrives on the link's queue. [`Links::send`] queues a packet for the link that last
//! heard a system; it never waits: a full queue ([`WRITE_QUEUE`] packets) is an error the caller
//! reports.
//!
//! Sources also hand every `COMMAND_ACK` they read to [`Links::observe`], which passes it to
//! the commands waiting for it ([`Links::wait_ack`]; bounded by [`MAX_ACK_WAITERS`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::mpsc;

/// Packets waiting to be written on one link.
pub const WRITE_QUEUE: usize = 16;
/// Commands waiting for a `COMMAND_ACK` at once.
pub const MAX_ACK_WAITERS: usize = 64;
/// MAVLink message id of `COMMAND_ACK`.
pub const COMMAND_ACK: u32 = 77;

/// A packet for a vehicle.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// The system it is for (a UDP link answers the address that system last sent from).
    pub system: u8,
    /// The whole MAVLink packet.
    pub packet: Bytes,
}

/// Why a packet could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// No link has heard the system (yet).
    #[error("no MAVLink link has heard system {0}")]
    NoRoute(u8),
    /// The link's write queue is full.
    #[error("the write queue of the link to system {0} is full")]
    Full(u8),
    /// The link closed.
    #[error("the link to system {0} closed")]
    Closed(u8),
}

/// Every link's write queue, and the link that last heard each system.
#[derive(Debug)]
pub struct Links {
    /// Link id (0: none) that last heard each system id.
    last: [AtomicU32; 256],
    writers: Mutex<HashMap<u32, mpsc::Sender<Outgoing>>>,
    next_id: AtomicU32,
    waiters: Mutex<Vec<Waiter>>,
    waiting: AtomicUsize,
    next_waiter: AtomicU32,
}

#[derive(Debug)]
struct Waiter {
    id: u32,
    system: u8,
    command: u16,
    tx: mpsc::Sender<u8>,
}

/// A command waiting for its `COMMAND_ACK`s (results, in order). Stops waiting on drop.
#[derive(Debug)]
pub struct AckWait {
    links: Arc<Links>,
    id: u32,
    /// MAV_RESULT of each matching ack.
    pub rx: mpsc::Receiver<u8>,
}

impl Drop for AckWait {
    fn drop(&mut self) {
        let mut w = self.links.waiters.lock();
        w.retain(|x| x.id != self.id);
        self.links.waiting.store(w.len(), Relaxed);
    }
}

impl Default for Links {
    fn default() -> Self {
        Links {
            last: std::array::from_fn(|_| AtomicU32::new(0)),
            writers: Mutex::new(HashMap::new()),
            next_id: AtomicU32::new(1),
            waiters: Mutex::new(Vec::new()),
            waiting: AtomicUsize::new(0),
            next_waiter: AtomicU32::new(1),
        }
    }
}

/// A registered link: its id and the packets to write on it. Unregisters on drop.
#[derive(Debug)]
pub struct LinkHandle {
    links: Arc<Links>,
    /// The link id.
    pub id: u32,
    /// Packets to write.
    pub rx: mpsc::Receiver<Outgoing>,
}

impl Drop for LinkHandle {
    fn drop(&mut self) {
        self.links.writers.lock().remove(&self.id);
    }
}

impl Links {
    /// Registers a new link.
    pub fn register(self: &Arc<Self>) -> LinkHandle {
        let id = self.next_id.fetch_add(1, Relaxed).max(1);
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        self.writers.lock().insert(id, tx);
        LinkHandle {
            links: self.clone(),
            id,
            rx,
        }
    }

    /// Notes that link `id` heard `system`.
    pub fn heard(&self, system: u8, id: u32) {
        let slot = &self.last[usize::from(system)];
        if slot.load(Relaxed) != id {
            slot.store(id, Relaxed);
        }
    }

    /// Waits for acks of `command` from `system`; `None` when [`MAX_ACK_WAITERS`] already wait.
    pub fn wait_ack(self: &Arc<Self>, system: u8, command: u16) -> Option<AckWait> {
        let mut w = self.waiters.lock();
        if w.len() >= MAX_ACK_WAITERS {
            return None;
        }
        let id = self.next_waiter.fetch_add(1, Relaxed);
        let (tx, rx) = mpsc::channel(8);
        w.push(Waiter {
            id,
            system,
            command,
            tx,
        });
        self.waiting.store(w.len(), Relaxed);
        Some(AckWait {
            links: self.clone(),
            id,
            rx,
        })
    }

    /// Looks at a packet a source read: a `COMMAND_ACK` goes to the commands waiting for it.
    pub fn observe(&self, p: &crate::framer::Packet) {
        if p.msg_id != COMMAND_ACK || self.waiting.load(Relaxed) == 0 {
            return;
        }
        // COMMAND_ACK: command (u16), result (u8), then extensions; MAVLink 2 trims zeros.
        let mut body = [0u8; 3];
        let payload = p.payload();
        let n = payload.len().min(3);
        body[..n].copy_from_slice(&payload[..n]);
        let command = u16::from_le_bytes([body[0], body[1]]);
        for w in self.waiters.lock().iter() {
            if w.system == p.system_id && w.command == command {
                let _ = w.tx.try_send(body[2]);
            }
        }
    }

    /// Queues `packet` on the link that last heard `system`.
    pub fn send(&self, system: u8, packet: Bytes) -> Result<(), LinkError> {
        let id = self.last[usize::from(system)].load(Relaxed);
        let tx = self
            .writers
            .lock()
            .get(&id)
            .cloned()
            .ok_or(LinkError::NoRoute(system))?;
        tx.try_send(Outgoing { system, packet })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => LinkError::Full(system),
                mpsc::error::TrySendError::Closed(_) => LinkError::Closed(system),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_go_to_the_link_that_last_heard_the_system_and_the_queue_is_bounded() {
        let links = Arc::new(Links::default());
        assert_eq!(
            links.send(1, Bytes::from_static(b"x")),
            Err(LinkError::NoRoute(1))
        );
        let mut a = links.register();
        let mut b = links.register();
        links.heard(1, a.id);
        links.send(1, Bytes::from_static(b"1")).expect("queued");
        links.heard(1, b.id);
        links.send(1, Bytes::from_static(b"2")).expect("queued");
        assert_eq!(&a.rx.try_recv().expect("on a").packet[..], b"1");
        assert_eq!(&b.rx.try_recv().expect("on b").packet[..], b"2");
        for _ in 0..WRITE_QUEUE {
            links.send(1, Bytes::from_static(b"y")).expect("room");
        }
        assert_eq!(
            links.send(1, Bytes::from_static(b"z")),
            Err(LinkError::Full(1))
        );
        let id = b.id;
        drop(b);
        assert!(!links.writers.lock().contains_key(&id));
        assert_eq!(
            links.send(1, Bytes::from_static(b"z")),
            Err(LinkError::NoRoute(1))
        );
        drop(a);
    }
}
