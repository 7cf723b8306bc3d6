//! Ports, messages and rights: the kernel's message passing.
//!
//! # Design
//!
//! A **port** is a kernel object: a bounded queue of small fixed-size [`Message`]s
//! (`id`, `size`, four payload words) in a static table of [`MAX_PORTS`]. Threads never
//! name a port directly: each thread has a [`RightTable`] of [`RIGHTS_PER_THREAD`]
//! entries, and a [`RightName`] is an index into the caller's own table, as a Mach port
//! name is in a task's space. An entry is a **send** right or the **receive** right to
//! one port. A port has at most one receive right, held by one thread — or by the
//! kernel itself: the probe port's receive right belongs to the stub side
//! (`probe_port.rs`), and messages to it are not queued but handed over by
//! `probe_port::submit`.
//!
//! [`port_send`] needs a send right and blocks while the queue is full (each port has
//! its own limit, at most [`QUEUE_CAPACITY`]); [`port_receive`] needs the receive right
//! and blocks while it is empty. Blocking and waking go through the scheduler's wait
//! lists under the port's lock (`sched.rs` explains why no wake-up is lost). Rights are
//! granted by the kernel when it sets threads up; there is no transfer in messages.
//!
//! The queue and the right table are plain code and unit-tested on the host; the port
//! table and the blocking calls exist only in the kernel.
//!
//! # Invariants
//!
//! - Using a right that is missing, empty or of the wrong kind is an error, never a
//!   panic: a thread without a send right cannot put anything on a port.
//! - `ipc:send` / `ipc:receive` fire exactly once per message queued / dequeued, and the
//!   counters `SENDS` / `RECEIVES` / `BYTES` count the same events.

use core::fmt;

/// Bytes a message's payload can carry.
pub(crate) const PAYLOAD_BYTES: u32 = 32;
/// Messages a port's queue can hold at most.
pub(crate) const QUEUE_CAPACITY: usize = 8;
/// Entries of a thread's right table.
pub(crate) const RIGHTS_PER_THREAD: usize = 8;

/// A small fixed-size message.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Message {
    /// What the message is (request id, reply id, ...).
    pub(crate) id: u32,
    /// How many payload bytes are meaningful (at most [`PAYLOAD_BYTES`]).
    pub(crate) size: u32,
    /// The payload.
    pub(crate) payload: [u64; 4],
}

/// A port: index into the kernel's port table.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PortId(pub(crate) u32);

/// A right's name: index into the calling thread's right table.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RightName(pub(crate) u32);

/// What a right allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RightKind {
    /// Putting messages on the port.
    Send,
    /// Taking messages off the port (one holder per port).
    Receive,
}

/// One entry of a right table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Right {
    pub(crate) port: PortId,
    pub(crate) kind: RightKind,
}

/// Why an IPC operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub(crate) enum IpcError {
    /// The name is outside the table or its entry is empty.
    InvalidName(RightName),
    /// The entry is not a send right.
    NoSendRight(RightName),
    /// The entry is not a receive right.
    NoReceiveRight(RightName),
    /// The thread's right table is full.
    RightTableFull,
    /// The port table is full.
    NoFreePort,
    /// The port already has a receive right.
    ReceiverExists(PortId),
    /// The port's receiver is the kernel: messages go through its own entry point.
    KernelReceiver(PortId),
    /// The message's size field is larger than the payload.
    TooLarge { size: u32 },
}

impl fmt::Display for IpcError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IpcError::InvalidName(name) => write!(formatter, "no right named {}", name.0),
            IpcError::NoSendRight(name) => {
                write!(formatter, "right {} is not a send right", name.0)
            }
            IpcError::NoReceiveRight(name) => {
                write!(formatter, "right {} is not a receive right", name.0)
            }
            IpcError::RightTableFull => formatter.write_str("the right table is full"),
            IpcError::NoFreePort => formatter.write_str("the port table is full"),
            IpcError::ReceiverExists(port) => {
                write!(formatter, "port {} already has a receive right", port.0)
            }
            IpcError::KernelReceiver(port) => {
                write!(formatter, "port {} is received by the kernel", port.0)
            }
            IpcError::TooLarge { size } => {
                write!(
                    formatter,
                    "message size {size} exceeds {PAYLOAD_BYTES} bytes"
                )
            }
        }
    }
}

/// A thread's rights (see the module docs).
#[derive(Debug)]
pub(crate) struct RightTable {
    entries: [Option<Right>; RIGHTS_PER_THREAD],
}

impl RightTable {
    /// An empty table.
    pub(crate) const fn new() -> RightTable {
        RightTable {
            entries: [None; RIGHTS_PER_THREAD],
        }
    }

    /// Puts `right` in the first free entry and returns its name.
    pub(crate) fn insert(&mut self, right: Right) -> Result<RightName, IpcError> {
        let index = self
            .entries
            .iter()
            .position(Option::is_none)
            .ok_or(IpcError::RightTableFull)?;
        self.entries[index] = Some(right);
        Ok(RightName(index as u32))
    }

    /// The port `name` gives `kind` access to.
    pub(crate) fn lookup(&self, name: RightName, kind: RightKind) -> Result<PortId, IpcError> {
        let right = self
            .entries
            .get(name.0 as usize)
            .copied()
            .flatten()
            .ok_or(IpcError::InvalidName(name))?;
        match (right.kind, kind) {
            (RightKind::Send, RightKind::Send) | (RightKind::Receive, RightKind::Receive) => {
                Ok(right.port)
            }
            (_, RightKind::Send) => Err(IpcError::NoSendRight(name)),
            (_, RightKind::Receive) => Err(IpcError::NoReceiveRight(name)),
        }
    }
}

/// A port's bounded FIFO of messages.
#[derive(Debug)]
pub(crate) struct MessageQueue {
    slots: [Message; QUEUE_CAPACITY],
    head: usize,
    length: usize,
    limit: usize,
}

impl MessageQueue {
    /// An empty queue holding at most `limit` messages (1..=[`QUEUE_CAPACITY`]).
    pub(crate) const fn new(limit: usize) -> MessageQueue {
        assert!(limit >= 1 && limit <= QUEUE_CAPACITY);
        MessageQueue {
            slots: [Message {
                id: 0,
                size: 0,
                payload: [0; 4],
            }; QUEUE_CAPACITY],
            head: 0,
            length: 0,
            limit,
        }
    }

    /// Appends a copy of `message`; `false` (and nothing changes) when full.
    pub(crate) fn push(&mut self, message: &Message) -> bool {
        if self.length == self.limit {
            return false;
        }
        self.slots[(self.head + self.length) % QUEUE_CAPACITY] = *message;
        self.length += 1;
        true
    }

    /// Takes the oldest message.
    pub(crate) fn pop(&mut self) -> Option<Message> {
        if self.length == 0 {
            return None;
        }
        let message = self.slots[self.head];
        self.head = (self.head + 1) % QUEUE_CAPACITY;
        self.length -= 1;
        Some(message)
    }

    /// Messages waiting.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.length
    }
}

#[cfg(target_os = "none")]
pub(crate) use ports::{
    BYTES, RECEIVES, SENDS, attach_kernel_receiver, create_port, grant, label, port_receive,
    port_send, resolve,
};

#[cfg(target_os = "none")]
mod ports {
    use core::sync::atomic::{AtomicU64, Ordering};

    use super::{
        IpcError, MAX_PORTS, Message, MessageQueue, PAYLOAD_BYTES, PortId, Right, RightKind,
        RightName,
    };
    use crate::marker::trace_marker;
    use crate::sched::{self, Thread, WaitList};
    use crate::sync::SpinLock;

    /// Messages queued on any port since boot.
    pub(crate) static SENDS: AtomicU64 = AtomicU64::new(0);
    /// Messages taken off any port since boot.
    pub(crate) static RECEIVES: AtomicU64 = AtomicU64::new(0);
    /// Sum of the size fields of the messages queued since boot.
    pub(crate) static BYTES: AtomicU64 = AtomicU64::new(0);

    /// Who holds a port's receive right.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Receiver {
        Nobody,
        Thread(u32),
        /// The kernel: the probe stub's side of the probe port.
        Kernel,
    }

    struct PortState {
        in_use: bool,
        label: &'static str,
        receiver: Receiver,
        queue: MessageQueue,
        waiting_receivers: WaitList,
        waiting_senders: WaitList,
    }

    static PORTS: [SpinLock<PortState>; MAX_PORTS] = [const {
        SpinLock::new(PortState {
            in_use: false,
            label: "",
            receiver: Receiver::Nobody,
            queue: MessageQueue::new(1),
            waiting_receivers: WaitList::new(),
            waiting_senders: WaitList::new(),
        })
    }; MAX_PORTS];

    /// Creates a port holding at most `queue_limit` messages; nobody has rights yet.
    pub(crate) fn create_port(label: &'static str, queue_limit: usize) -> Result<PortId, IpcError> {
        for (index, slot) in PORTS.iter().enumerate() {
            let mut port = slot.lock();
            if !port.in_use {
                port.in_use = true;
                port.label = label;
                port.receiver = Receiver::Nobody;
                port.queue = MessageQueue::new(queue_limit);
                return Ok(PortId(index as u32));
            }
        }
        Err(IpcError::NoFreePort)
    }

    fn port(id: PortId) -> &'static SpinLock<PortState> {
        &PORTS[id.0 as usize]
    }

    /// Gives `thread` a right to `port` and returns its name in the thread's table.
    /// A port has one receive right at most.
    pub(crate) fn grant(
        thread: &Thread,
        port_id: PortId,
        kind: RightKind,
    ) -> Result<RightName, IpcError> {
        let mut port = port(port_id).lock();
        assert!(port.in_use, "granting a right to a free port");
        if kind == RightKind::Receive && port.receiver != Receiver::Nobody {
            return Err(IpcError::ReceiverExists(port_id));
        }
        let name = thread.rights.lock().insert(Right {
            port: port_id,
            kind,
        })?;
        if kind == RightKind::Receive {
            port.receiver = Receiver::Thread(thread.id);
        }
        Ok(name)
    }

    /// Gives the receive right of `port` to the kernel (the stub side).
    pub(crate) fn attach_kernel_receiver(port_id: PortId) -> Result<(), IpcError> {
        let mut port = port(port_id).lock();
        if port.receiver != Receiver::Nobody {
            return Err(IpcError::ReceiverExists(port_id));
        }
        port.receiver = Receiver::Kernel;
        Ok(())
    }

    /// The port `right` names in the current thread's table, if it is a `kind` right.
    pub(crate) fn resolve(right: RightName, kind: RightKind) -> Result<PortId, IpcError> {
        sched::current().rights.lock().lookup(right, kind)
    }

    /// Queues a copy of `message` on the port `right` names (a send right of the
    /// calling thread); blocks while the port's queue is full.
    #[inline(never)]
    pub(crate) fn port_send(right: RightName, message: &Message) -> Result<(), IpcError> {
        let port_id = resolve(right, RightKind::Send)?;
        if message.size > PAYLOAD_BYTES {
            return Err(IpcError::TooLarge { size: message.size });
        }
        loop {
            let mut port = port(port_id).lock();
            if port.receiver == Receiver::Kernel {
                return Err(IpcError::KernelReceiver(port_id));
            }
            if port.queue.push(message) {
                trace_marker!(
                    "ipc:send",
                    port: U32 = port_id.0,
                    id: U32 = message.id,
                    size: U32 = message.size,
                    tid: U32 = sched::current_tid()
                );
                SENDS.fetch_add(1, Ordering::Relaxed);
                BYTES.fetch_add(u64::from(message.size), Ordering::Relaxed);
                let receivers = port.waiting_receivers.take();
                drop(port);
                receivers.wake_all();
                return Ok(());
            }
            port.waiting_senders.add(sched::current());
            sched::block(port);
        }
    }

    /// Takes the oldest message off the port `right` names (the calling thread's
    /// receive right); blocks while the queue is empty.
    #[inline(never)]
    pub(crate) fn port_receive(right: RightName) -> Result<Message, IpcError> {
        let port_id = resolve(right, RightKind::Receive)?;
        loop {
            let mut port = port(port_id).lock();
            if let Some(message) = port.queue.pop() {
                trace_marker!(
                    "ipc:receive",
                    port: U32 = port_id.0,
                    id: U32 = message.id,
                    size: U32 = message.size,
                    tid: U32 = sched::current_tid()
                );
                RECEIVES.fetch_add(1, Ordering::Relaxed);
                let senders = port.waiting_senders.take();
                drop(port);
                senders.wake_all();
                return Ok(message);
            }
            port.waiting_receivers.add(sched::current());
            sched::block(port);
        }
    }

    /// A port's label, for reports.
    pub(crate) fn label(port_id: PortId) -> &'static str {
        port(port_id).lock().label
    }
}

/// Ports the kernel can have.
pub(crate) const MAX_PORTS: usize = 16;

#[cfg(test)]
mod tests {
    use super::*;

    fn message(id: u32) -> Message {
        Message {
            id,
            size: 8,
            payload: [u64::from(id); 4],
        }
    }

    #[test]
    fn queue_is_fifo_and_bounded_by_its_limit() {
        let mut queue = MessageQueue::new(3);
        assert!(queue.push(&message(1)) && queue.push(&message(2)) && queue.push(&message(3)));
        assert!(!queue.push(&message(4)), "a full queue refuses");
        assert_eq!(queue.len(), 3);
        assert_eq!(queue.pop(), Some(message(1)));
        assert!(queue.push(&message(5)), "room again after a pop");
        let drained: Vec<u32> = core::iter::from_fn(|| queue.pop()).map(|m| m.id).collect();
        assert_eq!(drained, [2, 3, 5]);
        assert_eq!(queue.pop(), None);
    }

    #[test]
    fn queue_wraps_around_its_storage() {
        let mut queue = MessageQueue::new(QUEUE_CAPACITY);
        for id in 0..100 {
            assert!(queue.push(&message(id)));
            assert_eq!(queue.pop(), Some(message(id)));
        }
    }

    #[test]
    fn rights_are_checked_by_name_and_kind() {
        let mut table = RightTable::new();
        let send = table
            .insert(Right {
                port: PortId(3),
                kind: RightKind::Send,
            })
            .unwrap();
        let receive = table
            .insert(Right {
                port: PortId(4),
                kind: RightKind::Receive,
            })
            .unwrap();
        assert_eq!((send, receive), (RightName(0), RightName(1)));
        assert_eq!(table.lookup(send, RightKind::Send), Ok(PortId(3)));
        assert_eq!(table.lookup(receive, RightKind::Receive), Ok(PortId(4)));
        assert_eq!(
            table.lookup(receive, RightKind::Send),
            Err(IpcError::NoSendRight(receive))
        );
        assert_eq!(
            table.lookup(send, RightKind::Receive),
            Err(IpcError::NoReceiveRight(send))
        );
        assert_eq!(
            table.lookup(RightName(5), RightKind::Send),
            Err(IpcError::InvalidName(RightName(5)))
        );
        assert_eq!(
            table.lookup(RightName(99), RightKind::Send),
            Err(IpcError::InvalidName(RightName(99)))
        );
    }

    #[test]
    fn a_full_right_table_is_an_error() {
        let mut table = RightTable::new();
        let right = Right {
            port: PortId(0),
            kind: RightKind::Send,
        };
        for _ in 0..RIGHTS_PER_THREAD {
            table.insert(right).unwrap();
        }
        assert_eq!(table.insert(right), Err(IpcError::RightTableFull));
    }
}
