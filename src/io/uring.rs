//! The io_uring backend (`--io uring`): each worker is one event loop of
//! its own, the [`Reactor`], on one io_uring instance of the `io-uring`
//! crate, shaped like the epoll backend's loop (`src/io/epoll.rs`).
//!
//! No tokio runtime runs on an io_uring worker. Its tasks (every connection, the
//! accept loop, housekeeping, and the worker's main future) sit in a slab
//! and are polled by the reactor when a completion concerns them or their
//! [`Waker`] is woken. A round of the loop is one `io_uring_enter`, which
//! submits everything the tasks queued and (when nothing is left to run)
//! waits for the next completion:
//!
//! - **accept**: one multishot accept on the worker's listener; accepted
//!   sockets queue in the `Listener` until the accept task takes them
//!   (re-armed when a completion says the multishot ended, e.g. after
//!   `EMFILE`, once the accept task has backed off);
//! - **receive**: a one-shot `recv` with buffer select from a ring of
//!   provided buffers per worker (`BufRing`), armed when the connection's
//!   stream is read and has nothing buffered. An idle connection holds no
//!   read buffer: the kernel picks one only when data arrives. A receive
//!   that finds the ring empty (`ENOBUFS`) is re-armed once buffers came
//!   back, never reported to the stream. A connection holds at most one
//!   provided buffer, between the completion and the read that empties it
//!   (the next is armed only then), so connections that do not read cannot
//!   drain the ring: a one-shot receive rather than a multishot one for
//!   that reason (and it measured cheaper in issue #18's C experiment);
//! - **send**: `poll_write` copies into the connection's staging buffer
//!   (taken from a per-worker pool while bytes are pending, given back once
//!   all is sent, so neither a steady echo allocates nor an idle connection
//!   holds a send buffer); before entering the kernel the loop submits one
//!   `send` per connection with everything staged, and the bytes stay in
//!   the connection until the send completes. At most one send per
//!   connection is in flight; what is written meanwhile is staged behind it;
//! - **timers** ([`crate::timer`]) fire from one timeout operation armed for
//!   the earliest deadline; a **wake from another thread** writes an
//!   eventfd on which a read is always pending;
//! - **close**: dropping a stream cancels its operations (`ASYNC_CANCEL` by
//!   fd) and its socket is closed only after its last completion came back.
//!
//! The ring is set up with `SINGLE_ISSUER | DEFER_TASKRUN` where the kernel
//! has them (Linux ≥ 6.1): only this thread submits, and completions are
//! processed only inside its `io_uring_enter`, with no interrupts between.
//! Otherwise `COOP_TASKRUN`, otherwise no flag ([`RingFlags`]).
//!
//! Every `unsafe` of the backend is in this module; each states its
//! argument. They come down to three promises to the kernel: memory an
//! operation points to (a provided buffer, a connection's send buffer, the
//! eventfd's read buffer, the timeout's timespec) stays allocated and
//! untouched until the operation completes (or, for the timespec, is
//! submitted), and a file descriptor stays open until its last completion.

use std::alloc::Layout;
use std::cell::{Cell, RefCell, UnsafeCell};
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::num::NonZeroI32;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::pin::Pin;
use std::ptr::NonNull;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use io_uring::{IoUring, cqueue, opcode, squeue, types};
use slab::Slab;
use tokio::io::ReadBuf;

use super::Handler;
use crate::timer::Timers;

/// How the ring is set up: the first of these the kernel accepts.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum RingFlags {
    /// `SINGLE_ISSUER | DEFER_TASKRUN | SUBMIT_ALL` (Linux ≥ 6.1).
    Defer,
    /// `COOP_TASKRUN | SUBMIT_ALL` (Linux ≥ 5.19).
    Coop,
    /// `SUBMIT_ALL` only.
    Plain,
}

impl RingFlags {
    /// The flags, as logged.
    pub fn name(self) -> &'static str {
        match self {
            RingFlags::Defer => "SINGLE_ISSUER|DEFER_TASKRUN|SUBMIT_ALL",
            RingFlags::Coop => "COOP_TASKRUN|SUBMIT_ALL",
            RingFlags::Plain => "SUBMIT_ALL",
        }
    }

    fn builder(self) -> io_uring::Builder {
        let mut b = IoUring::builder();
        b.setup_cqsize(CQ_ENTRIES).setup_submit_all();
        match self {
            RingFlags::Defer => {
                b.setup_single_issuer().setup_defer_taskrun();
            }
            RingFlags::Coop => {
                b.setup_coop_taskrun();
            }
            RingFlags::Plain => {}
        }
        b
    }
}

/// How a worker's ring is set up.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Setup {
    /// The ring's flags ([`probe`]).
    pub flags: RingFlags,
    /// Provided receive buffers (a power of two), of [`BUF_SIZE`] bytes.
    pub buffers: u16,
}

/// Receives that found every provided buffer in use, in the whole process
/// (`ringws_receive_buffer_waits_total`).
static BUFFER_WAITS: AtomicU64 = AtomicU64::new(0);

/// How many receives found every provided buffer in use and waited for one
/// to come back, over every ring worker of the process.
pub fn buffer_waits() -> u64 {
    BUFFER_WAITS.load(Ordering::Relaxed)
}

/// Submission queue entries per ring.
const SQ_ENTRIES: u32 = 1024;
/// Completion queue entries per ring (the kernel keeps overflowing
/// completions aside, `FEAT_NODROP`, so this only sizes the fast path).
const CQ_ENTRIES: u32 = 8192;
/// The size of a provided buffer (there are `--recv-buffers` per worker).
/// 32 KiB: a 16 KiB message and its header arrive in one buffer. Only the
/// pages the kernel wrote to become resident.
pub const BUF_SIZE: u32 = 32 << 10;
// A connection keeps its offset and length in a buffer as u16s (`Held`).
const _: () = assert!(BUF_SIZE <= u16::MAX as u32);
/// The buffer group of the provided-buffer ring.
const BGID: u16 = 0;
/// Staged bytes (in flight or waiting) beyond which `poll_write` waits.
const WRITE_HIGH_WATER: usize = 64 << 10;
/// Bytes and number of send buffers kept in a worker's pool (enough for a
/// few hundred connections sending at once without allocating; the count
/// bounds what thousands of connections echoing once leave behind), and
/// the largest buffer kept.
const POOL_BYTES: usize = 4 << 20;
const POOL_LEN: usize = 512;
const POOL_MAX_BUF: usize = 128 << 10;
/// `IORING_ENTER_GETEVENTS` (the `io-uring` crate keeps its constants
/// private): with `DEFER_TASKRUN`, completions are only processed by an
/// enter with this flag.
const ENTER_GETEVENTS: u32 = 1;

/// Tries to set up a ring the way the workers will, with the strongest
/// flags the kernel takes, and a provided-buffer ring on it; explains a
/// failure.
pub fn probe() -> Result<RingFlags, String> {
    let mut rejected = None;
    for flags in [RingFlags::Defer, RingFlags::Coop, RingFlags::Plain] {
        match flags.builder().build(8) {
            Ok(ring) => {
                return match BufRing::new(&ring, 1, 64) {
                    Ok(bufs) => {
                        let _ = ring.submitter().unregister_buf_ring(BGID);
                        drop(ring);
                        drop(bufs);
                        Ok(flags)
                    }
                    Err(e) => Err(format!(
                        "IORING_REGISTER_PBUF_RING: {e} (the io_uring backend needs Linux >= 5.19)"
                    )),
                };
            }
            // Flags this kernel does not know: try weaker ones.
            Err(e) if e.kind() == io::ErrorKind::InvalidInput => rejected = Some(e),
            Err(e) => return Err(explain(&e)),
        }
    }
    Err(explain(
        &rejected.unwrap_or_else(|| io::Error::other("no ring")),
    ))
}

/// Why `io_uring_setup` failed, in words an operator can act on.
fn explain(e: &io::Error) -> String {
    let sysctl = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    match e.raw_os_error() {
        Some(1) if sysctl == "2" => {
            "io_uring_setup: EPERM: disabled by sysctl kernel.io_uring_disabled=2".to_owned()
        }
        Some(1) if sysctl == "1" => "io_uring_setup: EPERM: kernel.io_uring_disabled=1 and this \
                                     process is not in kernel.io_uring_group"
            .to_owned(),
        Some(1) => "io_uring_setup: EPERM: blocked by the seccomp profile (the default profiles \
                    of Docker >= 25 and containerd >= 2.0 forbid io_uring)"
            .to_owned(),
        Some(38) => "io_uring_setup: ENOSYS: this kernel has no io_uring".to_owned(),
        Some(12) => {
            "io_uring_setup: ENOMEM: the locked-memory limit (RLIMIT_MEMLOCK) is too low".to_owned()
        }
        _ => format!("io_uring_setup: {e}"),
    }
}

/// What a completion is about: the low bits of its `user_data`; the rest
/// is the connection's (listener's) key, or the timer's generation.
const RECV: u64 = 0;
const SEND: u64 = 1;
const ACCEPT: u64 = 2;
const TIMER: u64 = 3;
const WAKE: u64 = 4;
/// Cancellations and timeout removals: nothing to do on completion.
const OTHER: u64 = 5;
const KIND_BITS: u32 = 3;

fn user_data(key: usize, kind: u64) -> u64 {
    ((key as u64) << KIND_BITS) | kind
}

/// The provided-buffer ring of a worker: `count` buffers of `size`
/// bytes, and the ring of their descriptions the kernel takes them from.
struct BufRing {
    /// `count` entries, page-aligned, registered with the kernel.
    entries: NonNull<RawBuf>,
    /// `count * size` bytes.
    data: NonNull<u8>,
    count: u16,
    size: u32,
    /// Our copy of the ring's tail (the kernel reads the shared one).
    tail: Cell<u16>,
    /// Buffers the kernel handed out that are not back in the ring.
    held: Cell<u16>,
    /// Set when operations may still use the buffers at teardown: the
    /// memory is then leaked rather than freed.
    leak: Cell<bool>,
}

/// `struct io_uring_buf`; the `resv` field of the first entry is the ring's
/// tail. Written through raw pointers only, since the kernel reads the
/// entries (and the tail) concurrently.
#[repr(C)]
struct RawBuf {
    addr: u64,
    len: u32,
    bid: u16,
    resv: u16,
}

impl BufRing {
    fn layouts(count: u16, size: u32) -> (Layout, Layout) {
        let entries = Layout::from_size_align(usize::from(count) * size_of::<RawBuf>(), 4096)
            .expect("buffer ring layout");
        let data = Layout::from_size_align(usize::from(count) * size as usize, 4096)
            .expect("buffer layout");
        (entries, data)
    }

    /// Allocates `count` buffers of `size` bytes (count a power of two),
    /// puts them all in the ring and registers it with `ring` as group
    /// [`BGID`].
    fn new(ring: &IoUring, count: u16, size: u32) -> io::Result<BufRing> {
        assert!(count.is_power_of_two());
        let (entries_layout, data_layout) = BufRing::layouts(count, size);
        // SAFETY: both layouts have a non-zero size (count ≥ 1, size ≥ 1).
        let entries = NonNull::new(unsafe { std::alloc::alloc_zeroed(entries_layout) });
        let Some(entries) = entries else {
            return Err(io::ErrorKind::OutOfMemory.into());
        };
        // SAFETY: as above. Zeroed, so that every byte a read hands out is
        // initialised whatever the kernel wrote.
        let data = NonNull::new(unsafe { std::alloc::alloc_zeroed(data_layout) });
        let Some(data) = data else {
            // SAFETY: allocated just above with this layout.
            unsafe { std::alloc::dealloc(entries.as_ptr(), entries_layout) };
            return Err(io::ErrorKind::OutOfMemory.into());
        };
        let bufs = BufRing {
            entries: entries.cast(),
            data,
            count,
            size,
            tail: Cell::new(0),
            held: Cell::new(count),
            leak: Cell::new(false),
        };
        for bid in 0..count {
            bufs.put(bid);
        }
        // SAFETY: `entries` holds `count` entries, page-aligned, and stays
        // allocated until this `BufRing` is dropped, which happens only
        // after the group is unregistered or the ring is closed (the
        // reactor's teardown; `probe`), or never (`leak`).
        unsafe {
            ring.submitter()
                .register_buf_ring(entries.as_ptr() as u64, count, BGID)?;
        }
        Ok(bufs)
    }

    /// The first byte of buffer `bid`.
    fn addr(&self, bid: u16) -> *mut u8 {
        let offset = usize::from(bid % self.count) * self.size as usize;
        // SAFETY: `bid % count < count`, so the offset stays inside the
        // `count * size` bytes of `data`.
        unsafe { self.data.as_ptr().add(offset) }
    }

    /// Buffers in the ring, for the kernel to take.
    fn free(&self) -> u16 {
        self.count - self.held.get()
    }

    /// The kernel handed out a buffer.
    fn taken(&self) {
        self.held.set(self.held.get() + 1);
    }

    /// Gives buffer `bid` back to the kernel.
    fn put(&self, bid: u16) {
        let tail = self.tail.get();
        let index = usize::from(tail & (self.count - 1));
        // SAFETY: `index < count`, inside the entries' allocation; the kernel
        // reads only entries between its head and the tail it last saw, and
        // this one is past it (its buffer was handed out, or never put), so
        // nothing reads it while it is written. Written field by field
        // through raw pointers, never through a reference, so that the
        // first entry's `resv` (the shared tail) is not covered by one.
        unsafe {
            let entry = self.entries.as_ptr().add(index);
            std::ptr::addr_of_mut!((*entry).addr).write(self.addr(bid) as u64);
            std::ptr::addr_of_mut!((*entry).len).write(self.size);
            std::ptr::addr_of_mut!((*entry).bid).write(bid);
        }
        let tail = tail.wrapping_add(1);
        self.tail.set(tail);
        self.held.set(self.held.get() - 1);
        // SAFETY: the tail is the `resv` field of the first entry, inside the
        // allocation and aligned for a u16; the kernel reads it concurrently,
        // so it is only ever accessed atomically from here (release: the
        // entry written above is visible before the tail that covers it).
        unsafe {
            let shared = std::ptr::addr_of_mut!((*self.entries.as_ptr()).resv);
            AtomicU16::from_ptr(shared).store(tail, Ordering::Release);
        }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        if self.leak.get() {
            return;
        }
        let (entries_layout, data_layout) = BufRing::layouts(self.count, self.size);
        // SAFETY: allocated in `new` with these layouts; no operation can
        // use them any more (`leak` is set otherwise).
        unsafe {
            std::alloc::dealloc(self.entries.as_ptr().cast(), entries_layout);
            std::alloc::dealloc(self.data.as_ptr(), data_layout);
        }
    }
}

/// State of a connection's receive.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Recv {
    /// None in flight.
    Idle,
    /// A receive is in flight.
    Armed,
    /// The last one found no buffer: re-armed by the loop when some are
    /// back.
    Starved,
}

/// Bytes received into a provided buffer, not yet read by the stream.
#[derive(Copy, Clone, Debug)]
struct Held {
    bid: u16,
    /// Within the buffer: `BUF_SIZE` fits in a `u16`.
    off: u16,
    len: u16,
}

/// A connection's socket and its operations, shared by its stream and the
/// reactor (which keeps it until its last completion).
///
/// Kept small: an idle connection holds this (`connection_state_stays_small`).
struct Conn {
    socket: OwnedFd,
    /// In the core's `conns`.
    key: Cell<u32>,
    /// The task its completions poll.
    task: Cell<u32>,
    core: Rc<Core>,
    state: RefCell<ConnState>,
}

impl Conn {
    fn key(&self) -> usize {
        self.key.get() as usize
    }

    fn task(&self) -> usize {
        self.task.get() as usize
    }
}

/// A slab key as stored in a connection (a worker holds far fewer than
/// 2^32 connections and tasks: one file descriptor each).
fn key32(key: usize) -> u32 {
    u32::try_from(key).expect("fewer than 2^32 connections per worker")
}

/// An error number from a negative completion result (never 0).
fn errno(e: i32) -> Option<NonZeroI32> {
    NonZeroI32::new(e)
}

struct ConnState {
    recv: Recv,
    received: Option<Held>,
    eof: bool,
    read_error: Option<NonZeroI32>,
    /// Operations in flight (receive, send).
    ops: u8,
    /// The connection's send buffers while it has bytes to send (lent by
    /// the core's pool; 8 bytes on an idle connection).
    out: Option<Box<Sends>>,
    send_armed: bool,
    /// In the core's flush list.
    flushing: bool,
    /// The task waits for a send to complete.
    want_write: bool,
    write_error: Option<NonZeroI32>,
    /// The stream was dropped: cancelled, removed at its last completion.
    dropped: bool,
}

/// What a connection is sending.
#[derive(Default)]
struct Sends {
    /// The bytes of the send in flight (`sending[sent..]`), untouched
    /// while the connection's `send_armed`.
    sending: Vec<u8>,
    sent: usize,
    /// Bytes written since, sent when the send in flight completes.
    staged: Vec<u8>,
}

impl Sends {
    /// Bytes not sent yet.
    fn pending(&self) -> usize {
        self.staged.len() + (self.sending.len() - self.sent)
    }
}

/// Bytes not sent yet of a connection's `out`.
fn pending(out: &Option<Box<Sends>>) -> usize {
    out.as_ref().map_or(0, |out| out.pending())
}

/// A connection's socket as a tokio byte stream, on the [`Reactor`] that
/// polls its task.
///
/// Its completions poll the task it was made for ([`Reactor::add`]), not
/// the waker of whoever polls it (no waker is registered per operation):
/// it must stay in that task, as a connection's stream does.
pub struct UringStream {
    conn: Rc<Conn>,
}

impl std::fmt::Debug for UringStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringStream")
            .field("fd", &self.conn.socket.as_raw_fd())
            .finish()
    }
}

/// A listening socket with its multishot accept.
struct Listener {
    socket: OwnedFd,
    task: Cell<usize>,
    armed: Cell<bool>,
    /// Accepted sockets (or accept errors) not yet taken by the accept task.
    accepted: RefCell<VecDeque<Result<OwnedFd, i32>>>,
}

/// What the tasks and the loop share: the ring and the operations' state.
struct Core {
    /// Declared first: dropped (closed) before the memory operations use.
    ring: RefCell<IoUring>,
    bufs: BufRing,
    conns: RefCell<Slab<Rc<Conn>>>,
    listeners: RefCell<Slab<Rc<Listener>>>,
    /// Connections whose receive found no buffer.
    starved: RefCell<Vec<usize>>,
    /// Connections with staged bytes to send.
    flush: RefCell<Vec<usize>>,
    /// Send buffers not in use, and their capacity in all.
    /// Boxed: the boxes are what connections borrow (8 bytes in an idle
    /// connection rather than two vectors).
    #[allow(clippy::vec_box)]
    pool: RefCell<Vec<Box<Sends>>>,
    pooled: Cell<usize>,
    /// Operations submitted (or queued) whose last completion has not come.
    inflight: Cell<usize>,
    /// Where the eventfd's pending read writes its count.
    wake_count: UnsafeCell<u64>,
    /// The timespec of the timeout being submitted.
    timespec: UnsafeCell<types::Timespec>,
}

impl Core {
    /// Queues `entry` for the next `io_uring_enter` (entering at once if the
    /// submission queue is full).
    ///
    /// # Safety
    ///
    /// Whatever `entry` points to (buffers, file descriptors, a timespec)
    /// stays valid until its last completion (a timespec: until the entry
    /// is submitted).
    unsafe fn push(&self, entry: &squeue::Entry) {
        let mut ring = self.ring.borrow_mut();
        for _ in 0..16 {
            // SAFETY: forwarded from the caller.
            if unsafe { ring.submission().push(entry) }.is_ok() {
                self.inflight.set(self.inflight.get() + 1);
                return;
            }
            // Full: submit what is queued (completions stay in the queue).
            if let Err(e) = enter(&mut ring, 0) {
                tracing::warn!(error = %e, "io_uring_enter failed with a full submission queue");
            }
        }
        tracing::error!("io_uring submission queue stays full: an operation is lost");
    }

    /// Arms the receive of `conn`.
    fn arm_recv(&self, conn: &Conn, state: &mut ConnState) {
        let entry = opcode::Recv::new(types::Fd(conn.socket.as_raw_fd()), std::ptr::null_mut(), 0)
            .buf_group(BGID)
            .build()
            .flags(squeue::Flags::BUFFER_SELECT)
            .user_data(user_data(conn.key(), RECV));
        // SAFETY: the kernel writes into a provided buffer of `bufs`, which
        // stays allocated until every operation completed (the teardown);
        // the socket stays open while the operation is in flight (`ops`
        // keeps the connection in `conns`).
        unsafe { self.push(&entry) };
        state.recv = Recv::Armed;
        state.ops += 1;
    }

    /// Sends what is left of `sending` (or, if all is sent, what is
    /// staged); or gives the buffers back if nothing is.
    fn send_next(&self, conn: &Conn, state: &mut ConnState) {
        debug_assert!(!state.send_armed);
        let Some(out) = state.out.as_mut() else {
            return;
        };
        if out.sent == out.sending.len() {
            out.sending.clear();
            out.sent = 0;
            if out.staged.is_empty() {
                self.give(state.out.take());
                return;
            }
            std::mem::swap(&mut out.sending, &mut out.staged);
        }
        let rest = &out.sending[out.sent..];
        let len = u32::try_from(rest.len()).unwrap_or(u32::MAX);
        let entry = opcode::Send::new(types::Fd(conn.socket.as_raw_fd()), rest.as_ptr(), len)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(user_data(conn.key(), SEND));
        // SAFETY: `sending` is neither written nor dropped while
        // `send_armed` (writes go to `staged`; its box stays in `out` until
        // the completion, and the connection that owns it stays in `conns`
        // while `ops` counts this send), and the socket stays open as long.
        unsafe { self.push(&entry) };
        state.send_armed = true;
        state.ops += 1;
    }

    /// Send buffers from the pool (or new, empty ones).
    fn take(&self) -> Box<Sends> {
        let Some(out) = self.pool.borrow_mut().pop() else {
            return Box::default();
        };
        let capacity = out.sending.capacity() + out.staged.capacity();
        self.pooled.set(self.pooled.get() - capacity);
        out
    }

    /// Returns a connection's send buffers to the pool (none in flight).
    fn give(&self, out: Option<Box<Sends>>) {
        let Some(mut out) = out else { return };
        let capacity = out.sending.capacity() + out.staged.capacity();
        if capacity > POOL_MAX_BUF {
            return;
        }
        let pooled = self.pooled.get() + capacity;
        if pooled <= POOL_BYTES && self.pool.borrow().len() < POOL_LEN {
            self.pooled.set(pooled);
            out.sending.clear();
            out.staged.clear();
            out.sent = 0;
            self.pool.borrow_mut().push(out);
        }
    }

    /// Submits the sends of the connections that staged bytes.
    fn flush_sends(&self) {
        let mut flush = self.flush.borrow_mut();
        if flush.is_empty() {
            return;
        }
        let conns = self.conns.borrow();
        for key in flush.drain(..) {
            let Some(conn) = conns.get(key) else { continue };
            let mut state = conn.state.borrow_mut();
            if !state.flushing {
                continue;
            }
            state.flushing = false;
            if !state.send_armed && !state.dropped && state.write_error.is_none() {
                self.send_next(conn, &mut state);
            }
        }
    }

    /// Re-arms the receives that found no buffer, as far as buffers are
    /// back.
    fn rearm_starved(&self) {
        let mut starved = self.starved.borrow_mut();
        if starved.is_empty() || self.bufs.free() == 0 {
            return;
        }
        let conns = self.conns.borrow();
        let take = starved.len().min(usize::from(self.bufs.free()));
        for key in starved.drain(..take) {
            let Some(conn) = conns.get(key) else { continue };
            let mut state = conn.state.borrow_mut();
            if state.recv == Recv::Starved && !state.dropped {
                self.arm_recv(conn, &mut state);
            }
        }
    }

    /// Arms the multishot accept of `listener` (key `key`).
    fn arm_accept(&self, key: usize, listener: &Listener) {
        let entry = opcode::AcceptMulti::new(types::Fd(listener.socket.as_raw_fd()))
            .flags(libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK)
            .build()
            .user_data(user_data(key, ACCEPT));
        // SAFETY: no memory is passed; the listener stays open (in
        // `listeners`) until the teardown, which waits for its completion.
        unsafe { self.push(&entry) };
        listener.armed.set(true);
    }

    /// Arms the read of the inbox's eventfd.
    fn arm_wake(&self, eventfd: &OwnedFd) {
        let entry = opcode::Read::new(
            types::Fd(eventfd.as_raw_fd()),
            self.wake_count.get().cast(),
            8,
        )
        .build()
        .user_data(user_data(0, WAKE));
        // SAFETY: `wake_count` lives in the core, which outlives every
        // operation (the teardown waits for them), and is never read or
        // written by us; the eventfd lives in the inbox, held by the
        // reactor, as long.
        unsafe { self.push(&entry) };
    }
}

/// Submits what is queued and processes completions (at least `wait`).
fn enter(ring: &mut IoUring, wait: u32) -> io::Result<usize> {
    let to_submit = ring.submission().len() as u32;
    // SAFETY: no argument pointer is passed (`None`), and the flag only asks
    // the kernel to process (and wait for) completions.
    unsafe {
        ring.submitter()
            .enter::<libc::sigset_t>(to_submit, wait, ENTER_GETEVENTS, None)
    }
}

impl UringStream {
    fn state(&self) -> std::cell::RefMut<'_, ConnState> {
        self.conn.state.borrow_mut()
    }

    /// Copies what fits of `parts` into the staging buffer.
    fn stage(&self, cx_parts: &[&[u8]]) -> Poll<io::Result<usize>> {
        let conn = &self.conn;
        let mut state = self.state();
        if let Some(e) = state.write_error {
            return Poll::Ready(Err(io::Error::from_raw_os_error(e.get())));
        }
        if cx_parts.iter().all(|part| part.is_empty()) {
            return Poll::Ready(Ok(0));
        }
        let pending = pending(&state.out);
        if pending >= WRITE_HIGH_WATER {
            state.want_write = true;
            return Poll::Pending;
        }
        let mut room = WRITE_HIGH_WATER - pending;
        let out = state.out.get_or_insert_with(|| conn.core.take());
        let mut n = 0;
        for part in cx_parts {
            let take = part.len().min(room);
            out.staged.extend_from_slice(&part[..take]);
            n += take;
            room -= take;
            if room == 0 {
                break;
            }
        }
        if n > 0 && !state.flushing && !state.send_armed {
            state.flushing = true;
            conn.core.flush.borrow_mut().push(conn.key());
        }
        Poll::Ready(Ok(n))
    }
}

impl super::Stream for UringStream {
    fn peer_addr(&self) -> Option<std::net::SocketAddr> {
        super::peer_of(self.conn.socket.as_fd())
    }
}

impl tokio::io::AsyncRead for UringStream {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let conn = &self.conn;
        let mut state = conn.state.borrow_mut();
        if let Some(held) = &mut state.received {
            let n = (held.len as usize).min(buf.remaining());
            // SAFETY: the kernel wrote `len` bytes at `off` of buffer `bid`
            // (its completion said so; `off + len` ≤ the buffer's size), and
            // the buffer is out of the ring until `put` below, so nothing
            // writes it while this slice lives. Zeroed at allocation, so
            // initialised in any case.
            let bytes = unsafe {
                std::slice::from_raw_parts(conn.core.bufs.addr(held.bid).add(held.off as usize), n)
            };
            buf.put_slice(bytes);
            // `n` ≤ `held.len`, a u16.
            held.off += n as u16;
            held.len -= n as u16;
            if held.len == 0 {
                let bid = held.bid;
                state.received = None;
                conn.core.bufs.put(bid);
            }
            return Poll::Ready(Ok(()));
        }
        if let Some(e) = state.read_error {
            return Poll::Ready(Err(io::Error::from_raw_os_error(e.get())));
        }
        if state.eof {
            return Poll::Ready(Ok(()));
        }
        if state.recv == Recv::Idle {
            conn.core.arm_recv(conn, &mut state);
        }
        // The receive's completion polls this task again: no waker to
        // register.
        Poll::Pending
    }
}

impl tokio::io::AsyncWrite for UringStream {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.stage(&[data])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        parts: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut slices: [&[u8]; 8] = [&[]; 8];
        let n = parts.len().min(slices.len());
        for (slot, part) in slices.iter_mut().zip(parts) {
            *slot = part;
        }
        self.stage(&slices[..n])
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut state = self.state();
        if let Some(e) = state.write_error {
            return Poll::Ready(Err(io::Error::from_raw_os_error(e.get())));
        }
        if state.out.as_ref().is_none_or(|out| out.staged.is_empty()) && !state.send_armed {
            return Poll::Ready(Ok(()));
        }
        state.want_write = true;
        Poll::Pending
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.as_mut().poll_flush(cx))?;
        let socket = &self.conn.socket;
        Poll::Ready(rustix::net::shutdown(socket, rustix::net::Shutdown::Write).map_err(Into::into))
    }
}

impl Drop for UringStream {
    fn drop(&mut self) {
        let conn = &self.conn;
        let core = &conn.core;
        let mut state = conn.state.borrow_mut();
        state.dropped = true;
        if let Some(held) = state.received.take() {
            core.bufs.put(held.bid);
        }
        if !state.send_armed {
            core.give(state.out.take());
        } else if let Some(out) = state.out.as_mut() {
            out.staged.clear();
        }
        if state.ops == 0 {
            drop(state);
            core.conns.borrow_mut().try_remove(conn.key());
            return;
        }
        let cancel = types::CancelBuilder::fd(types::Fd(conn.socket.as_raw_fd())).all();
        let entry = opcode::AsyncCancel2::new(cancel)
            .build()
            .user_data(user_data(0, OTHER));
        // SAFETY: no memory is passed; the fd stays open until the last
        // completion of the operations it cancels (`ops`).
        unsafe { core.push(&entry) };
    }
}

/// A task on the reactor and what wakes it.
struct Slot {
    future: Pin<Box<dyn Future<Output = ()>>>,
    waker: Waker,
    /// In the run queue already.
    queued: bool,
}

/// Whose completions poll a task made while the slab was in use.
enum Owner {
    None,
    Conn(Rc<Conn>),
    Listener(Rc<Listener>),
}

/// A task made while the slab was in use, inserted after the batch.
struct Incoming {
    future: Pin<Box<dyn Future<Output = ()>>>,
    owner: Owner,
}

/// Keys of tasks woken through their [`Waker`] (possibly from another
/// thread), and how to wake the loop if it sleeps (as on epoll).
struct Inbox {
    keys: Mutex<Vec<usize>>,
    /// `keys` is not empty (set and cleared under its lock).
    pending: AtomicBool,
    /// The loop is in (or about to enter) a blocking `io_uring_enter`: a
    /// wake must write `eventfd`.
    sleeping: AtomicBool,
    /// Read by an operation always pending on the ring.
    eventfd: OwnedFd,
}

impl Inbox {
    fn has_keys(&self) -> bool {
        self.pending.load(Ordering::SeqCst)
    }

    fn wake(&self, key: usize) {
        {
            let mut keys = self.keys.lock().expect("inbox lock");
            keys.push(key);
            self.pending.store(true, Ordering::SeqCst);
        }
        // Paired with the loop's store of `sleeping` before it checks
        // `pending` (both SeqCst): either it sees this key, or this sees it
        // sleeping and completes its eventfd read.
        if self.sleeping.load(Ordering::SeqCst) {
            let _ = rustix::io::write(&self.eventfd, &1u64.to_ne_bytes());
        }
    }
}

/// The waker of the task at `key` (or of the loop's main future, [`MAIN`]).
struct TaskWaker {
    key: usize,
    inbox: Arc<Inbox>,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.inbox.wake(self.key);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.inbox.wake(self.key);
    }
}

/// Key of the main future of [`Reactor::block_on`] in the inbox.
const MAIN: usize = usize::MAX;
/// Most woken tasks queued per round of the loop.
const WOKEN_PER_ROUND: usize = 256;
/// Accepts taken in one poll of the accept loop before it lets other tasks
/// run.
const ACCEPTS_PER_POLL: usize = 64;
/// How long the teardown waits for cancelled operations to complete.
const TEARDOWN: Duration = Duration::from_secs(2);

/// A worker's event loop: its tasks, polled from their completions, their
/// wakers and its timers, all through one io_uring instance.
pub struct Reactor {
    core: Rc<Core>,
    slots: RefCell<Slab<Slot>>,
    incoming: RefCell<Vec<Incoming>>,
    run: RefCell<Vec<usize>>,
    batch: RefCell<Vec<usize>>,
    inbox: Arc<Inbox>,
    timers: Rc<Timers>,
    /// The deadline the pending timeout is armed for, and its generation.
    armed: Cell<Option<Instant>>,
    timer_gen: Cell<usize>,
    /// Completions reaped this round (allocated once).
    completions: RefCell<Vec<(u64, i32, u32)>>,
}

impl Reactor {
    /// A reactor with its ring (set up as `setup` says), provided buffers and
    /// eventfd.
    pub fn new(setup: Setup) -> io::Result<Rc<Reactor>> {
        let ring = setup.flags.builder().build(SQ_ENTRIES)?;
        let bufs = BufRing::new(&ring, setup.buffers, BUF_SIZE)?;
        use rustix::event::{EventfdFlags, eventfd};
        let wake = eventfd(0, EventfdFlags::NONBLOCK | EventfdFlags::CLOEXEC)?;
        let core = Rc::new(Core {
            ring: RefCell::new(ring),
            bufs,
            conns: RefCell::default(),
            listeners: RefCell::default(),
            starved: RefCell::default(),
            flush: RefCell::default(),
            pool: RefCell::default(),
            pooled: Cell::new(0),
            inflight: Cell::new(0),
            wake_count: UnsafeCell::new(0),
            timespec: UnsafeCell::new(types::Timespec::new()),
        });
        let inbox = Arc::new(Inbox {
            keys: Mutex::default(),
            pending: AtomicBool::new(false),
            sleeping: AtomicBool::new(false),
            eventfd: wake,
        });
        core.arm_wake(&inbox.eventfd);
        Ok(Rc::new(Reactor {
            core,
            slots: RefCell::default(),
            incoming: RefCell::default(),
            run: RefCell::default(),
            batch: RefCell::default(),
            inbox,
            timers: Rc::default(),
            armed: Cell::new(None),
            timer_gen: Cell::new(0),
            completions: RefCell::new(Vec::with_capacity(CQ_ENTRIES as usize)),
        }))
    }

    /// Adds a connection: `make`'s future is polled once soon, then
    /// whenever one of its socket's operations completes or its waker is
    /// woken, until it ends.
    pub fn add<F: Future<Output = ()> + 'static>(
        &self,
        socket: OwnedFd,
        make: impl FnOnce(UringStream) -> F,
    ) {
        let conn = Rc::new(Conn {
            socket,
            key: Cell::new(u32::MAX),
            task: Cell::new(u32::MAX),
            core: self.core.clone(),
            state: RefCell::new(ConnState {
                recv: Recv::Idle,
                received: None,
                eof: false,
                read_error: None,
                ops: 0,
                out: None,
                send_armed: false,
                flushing: false,
                want_write: false,
                write_error: None,
                dropped: false,
            }),
        });
        conn.key
            .set(key32(self.core.conns.borrow_mut().insert(conn.clone())));
        let future = Box::pin(make(UringStream { conn: conn.clone() }));
        self.incoming.borrow_mut().push(Incoming {
            future,
            owner: Owner::Conn(conn),
        });
    }

    /// Runs `future` on this reactor until it ends (polled once soon, then
    /// whenever its waker is woken).
    pub fn spawn(&self, future: impl Future<Output = ()> + 'static) {
        self.incoming.borrow_mut().push(Incoming {
            future: Box::pin(future),
            owner: Owner::None,
        });
    }

    /// Inserts the tasks made since the last call, queued to run.
    fn insert_incoming(&self) {
        let mut incoming = self.incoming.borrow_mut();
        if incoming.is_empty() {
            return;
        }
        let mut slots = self.slots.borrow_mut();
        let mut run = self.run.borrow_mut();
        for Incoming { future, owner } in incoming.drain(..) {
            let key = slots.vacant_entry().key();
            match owner {
                Owner::None => {}
                Owner::Conn(conn) => conn.task.set(key32(key)),
                Owner::Listener(listener) => listener.task.set(key),
            }
            let waker = Waker::from(Arc::new(TaskWaker {
                key,
                inbox: self.inbox.clone(),
            }));
            slots.insert(Slot {
                future,
                waker,
                queued: true,
            });
            run.push(key);
        }
    }

    /// Runs `main` to completion on this thread, with every task of the
    /// reactor: the worker's whole life. The thread blocks only in
    /// `io_uring_enter`, with no timeout: a completion (a receive, a send,
    /// an accept, the eventfd's read, the timers' timeout) ends it.
    pub fn block_on<F: Future>(&self, main: F) -> F::Output {
        let _timers = self.timers.enter();
        let mut main = std::pin::pin!(main);
        let main_waker = Waker::from(Arc::new(TaskWaker {
            key: MAIN,
            inbox: self.inbox.clone(),
        }));
        let mut main_woken = true;
        loop {
            if main_woken {
                main_woken = false;
                if let Poll::Ready(out) = main.as_mut().poll(&mut Context::from_waker(&main_waker))
                {
                    return out;
                }
            }
            self.insert_incoming();
            main_woken |= self.take_woken();
            let fired = self.arm_timer();
            self.core.flush_sends();
            self.core.rearm_starved();
            let block = !main_woken && !fired && self.run.borrow().is_empty();
            main_woken |= self.wait(block);
            self.poll_tasks();
        }
    }

    /// Queues the tasks woken through their wakers (at most a round's
    /// worth). True if the main future was woken.
    fn take_woken(&self) -> bool {
        if !self.inbox.has_keys() {
            return false;
        }
        let mut main = false;
        let mut keys = self.inbox.keys.lock().expect("inbox lock");
        let mut slots = self.slots.borrow_mut();
        let mut run = self.run.borrow_mut();
        let take = keys.len().min(WOKEN_PER_ROUND);
        for key in keys.drain(..take) {
            if key == MAIN {
                main = true;
            } else {
                queue(&mut slots, &mut run, key);
            }
        }
        self.inbox.pending.store(!keys.is_empty(), Ordering::SeqCst);
        main
    }

    /// Arms the timeout for the earliest timer, unless one is armed no
    /// later; fires the timers already due instead (true: something may
    /// have woken).
    fn arm_timer(&self) -> bool {
        let Some(next) = self.timers.next_deadline() else {
            return false;
        };
        if self.armed.get().is_some_and(|armed| armed <= next) {
            return false;
        }
        let now = Instant::now();
        if next <= now {
            self.timers.fire(now);
            return true;
        }
        let core = &self.core;
        if self.armed.get().is_some() {
            let old = user_data(self.timer_gen.get(), TIMER);
            let entry = opcode::TimeoutRemove::new(old)
                .build()
                .user_data(user_data(0, OTHER));
            // SAFETY: no memory is passed.
            unsafe { core.push(&entry) };
        }
        let generation = self.timer_gen.get().wrapping_add(1) & (usize::MAX >> KIND_BITS);
        self.timer_gen.set(generation);
        // SAFETY: nothing else refers to the timespec: the kernel reads it
        // only while submitting a timeout, in an `io_uring_enter`, and the
        // one pushed last round was submitted by that round's enter.
        unsafe { *core.timespec.get() = types::Timespec::from(next - now) };
        let entry = opcode::Timeout::new(core.timespec.get())
            .build()
            .user_data(user_data(generation, TIMER));
        // SAFETY: the timespec lives in the core and is not written again
        // before this round's enter submits the entry (one timeout per
        // round, above).
        unsafe { core.push(&entry) };
        self.armed.set(Some(next));
        false
    }

    /// Enters the ring (waiting for a completion if `block`), processes
    /// the completions and fires due timers. True if the main future was
    /// woken.
    fn wait(&self, block: bool) -> bool {
        let mut wait = 0;
        if block {
            self.inbox.sleeping.store(true, Ordering::SeqCst);
            if !self.inbox.has_keys() {
                wait = 1;
            }
        }
        let res = enter(&mut self.core.ring.borrow_mut(), wait);
        self.inbox.sleeping.store(false, Ordering::Relaxed);
        match res {
            Ok(_) => {}
            // Interrupted, or completions to reap before more can be
            // submitted: reaped below.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINTR | libc::EBUSY | libc::EAGAIN)
                ) => {}
            Err(e) => tracing::error!(error = %e, "io_uring_enter failed"),
        }
        if self.complete() {
            self.timers.fire(Instant::now());
        }
        self.take_woken()
    }

    /// Takes every completion out of the queue into `completions` (user
    /// data, result, flags).
    fn reap(&self) -> std::cell::RefMut<'_, Vec<(u64, i32, u32)>> {
        let mut completions = self.completions.borrow_mut();
        completions.clear();
        let mut ring = self.core.ring.borrow_mut();
        completions.extend(
            ring.completion()
                .map(|c| (c.user_data(), c.result(), c.flags())),
        );
        completions
    }

    /// Reaps and processes the completions; queues the tasks they concern.
    /// True if the timers' timeout expired.
    fn complete(&self) -> bool {
        let completions = self.reap();
        let mut slots = self.slots.borrow_mut();
        let mut run = self.run.borrow_mut();
        let mut timer = false;
        for &(data, res, flags) in completions.iter() {
            if !cqueue::more(flags) {
                let core = &self.core;
                core.inflight.set(core.inflight.get().saturating_sub(1));
            }
            let key = (data >> KIND_BITS) as usize;
            match data & ((1 << KIND_BITS) - 1) {
                RECV => self.received(key, res, flags, &mut slots, &mut run),
                SEND => self.sent(key, res, &mut slots, &mut run),
                ACCEPT => {
                    let listeners = self.core.listeners.borrow();
                    let Some(listener) = listeners.get(key) else {
                        continue;
                    };
                    if !cqueue::more(flags) {
                        listener.armed.set(false);
                    }
                    let mut accepted = listener.accepted.borrow_mut();
                    if res >= 0 {
                        // SAFETY: an accept's result is a new descriptor
                        // the kernel made for this process, owned by no one
                        // else.
                        accepted.push_back(Ok(unsafe { OwnedFd::from_raw_fd(res) }));
                    } else if res != -libc::ECANCELED {
                        accepted.push_back(Err(-res));
                    }
                    queue(&mut slots, &mut run, listener.task.get());
                }
                TIMER if key == self.timer_gen.get() && self.armed.get().is_some() => {
                    self.armed.set(None);
                    timer = true;
                }
                WAKE if res != -libc::ECANCELED => self.core.arm_wake(&self.inbox.eventfd),
                _ => {}
            }
        }
        timer
    }

    /// A receive of connection `key` completed.
    fn received(
        &self,
        key: usize,
        res: i32,
        flags: u32,
        slots: &mut Slab<Slot>,
        run: &mut Vec<usize>,
    ) {
        let core = &self.core;
        let mut conns = core.conns.borrow_mut();
        let Some(conn) = conns.get(key) else { return };
        let mut state = conn.state.borrow_mut();
        state.ops -= 1;
        state.recv = Recv::Idle;
        let bid = cqueue::buffer_select(flags);
        if bid.is_some() {
            core.bufs.taken();
        }
        match (res, bid) {
            (n, Some(bid)) if n > 0 => {
                state.received = Some(Held {
                    bid,
                    off: 0,
                    // At most `BUF_SIZE`, which fits in a u16.
                    len: (n as u32).min(BUF_SIZE) as u16,
                });
            }
            (0, _) => state.eof = true,
            (e, _) if e == -libc::ENOBUFS => {
                BUFFER_WAITS.fetch_add(1, Ordering::Relaxed);
                state.recv = Recv::Starved;
                core.starved.borrow_mut().push(key);
            }
            // Re-armed by the next read.
            (e, _) if e == -libc::EINTR || e == -libc::EAGAIN || e == -libc::ECANCELED => {}
            (e, _) if e < 0 => state.read_error = errno(-e),
            // Bytes without a buffer cannot happen with buffer select.
            _ => state.read_error = errno(libc::EIO),
        }
        if let (Some(bid), None) = (bid, state.received) {
            core.bufs.put(bid);
        }
        if state.dropped {
            if let Some(held) = state.received.take() {
                core.bufs.put(held.bid);
            }
            if state.ops == 0 {
                drop(state);
                conns.remove(key);
            }
            return;
        }
        queue(slots, run, conn.task());
    }

    /// A send of connection `key` completed.
    fn sent(&self, key: usize, res: i32, slots: &mut Slab<Slot>, run: &mut Vec<usize>) {
        let core = &self.core;
        let mut conns = core.conns.borrow_mut();
        let Some(conn) = conns.get(key) else { return };
        let mut state = conn.state.borrow_mut();
        state.ops -= 1;
        state.send_armed = false;
        if res >= 0 {
            if let Some(out) = state.out.as_mut() {
                out.sent += res as usize;
            }
        } else if res != -libc::EINTR && res != -libc::EAGAIN {
            state.write_error = errno(if res == -libc::ECANCELED {
                libc::EPIPE
            } else {
                -res
            });
        }
        if state.dropped || state.write_error.is_some() {
            core.give(state.out.take());
        } else {
            core.send_next(conn, &mut state);
        }
        if state.dropped {
            if state.ops == 0 {
                drop(state);
                conns.remove(key);
            }
            return;
        }
        // Wake a writer that waits for room or for everything to be sent.
        let pending = pending(&state.out);
        if state.want_write
            && (state.write_error.is_some() || pending < WRITE_HIGH_WATER || !state.send_armed)
        {
            state.want_write = false;
            queue(slots, run, conn.task());
        }
    }

    /// Polls the queued tasks once each.
    fn poll_tasks(&self) {
        let mut batch = self.batch.borrow_mut();
        std::mem::swap(&mut *batch, &mut *self.run.borrow_mut());
        // Held while tasks are polled: a task's poll never reaches the slab
        // (its stream goes through the core, a waker only touches the
        // inbox, and new tasks wait in `incoming`).
        let mut slots = self.slots.borrow_mut();
        for key in batch.drain(..) {
            let Some(slot) = slots.get_mut(key) else {
                continue;
            };
            slot.queued = false;
            let future = &mut slot.future;
            let waker = &slot.waker;
            let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                future.as_mut().poll(&mut Context::from_waker(waker))
            }));
            let done = match polled {
                Ok(poll) => poll.is_ready(),
                Err(_) => {
                    tracing::error!("a task panicked; it is dropped");
                    true
                }
            };
            if done {
                // Drops a connection's stream, which cancels its operations.
                drop(slots.remove(key));
            }
        }
    }
}

impl Drop for Reactor {
    /// Drops every task (their streams cancel their operations), cancels
    /// what is left (accept, eventfd read, timeout) and waits for every
    /// completion, so that no operation outlives the memory it uses.
    fn drop(&mut self) {
        let tasks = std::mem::take(&mut *self.slots.borrow_mut());
        drop(tasks);
        let incoming = std::mem::take(&mut *self.incoming.borrow_mut());
        drop(incoming);
        let core = &self.core;
        let entry = opcode::AsyncCancel2::new(types::CancelBuilder::any())
            .build()
            .user_data(user_data(0, OTHER));
        // SAFETY: no memory is passed.
        unsafe { core.push(&entry) };
        let deadline = Instant::now() + TEARDOWN;
        while core.inflight.get() > 0 && Instant::now() < deadline {
            let ts = types::Timespec::new().nsec(50_000_000);
            let args = types::SubmitArgs::new().timespec(&ts);
            let res = core.ring.borrow().submitter().submit_with_args(1, &args);
            if let Err(e) = res
                && !matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                )
            {
                tracing::error!(error = %e, "io_uring_enter failed at teardown");
                break;
            }
            // A cancelled accept, read or timeout must not be re-armed.
            core.listeners.borrow_mut().clear();
            self.complete_at_teardown();
        }
        if core.inflight.get() > 0 {
            // Operations may still use the buffers: leak them rather than
            // free memory the kernel could write.
            tracing::error!(
                inflight = core.inflight.get(),
                "io_uring operations still in flight at teardown: their memory is leaked"
            );
            core.bufs.leak.set(true);
            std::mem::forget(std::mem::take(&mut *core.conns.borrow_mut()));
        } else {
            let _ = core.ring.borrow().submitter().unregister_buf_ring(BGID);
        }
        // The connections hold the core: break the cycle.
        core.conns.borrow_mut().clear();
        core.listeners.borrow_mut().clear();
    }
}

impl Reactor {
    /// Completions during teardown: only the connections' state matters
    /// (nothing is re-armed, no task is left).
    fn complete_at_teardown(&self) {
        let completions = self.reap();
        let mut slots = self.slots.borrow_mut();
        let mut run = self.run.borrow_mut();
        for &(data, res, flags) in completions.iter() {
            if !cqueue::more(flags) {
                let core = &self.core;
                core.inflight.set(core.inflight.get().saturating_sub(1));
            }
            let key = (data >> KIND_BITS) as usize;
            match data & ((1 << KIND_BITS) - 1) {
                RECV => self.received(key, res, flags, &mut slots, &mut run),
                SEND => self.sent(key, res, &mut slots, &mut run),
                ACCEPT if res >= 0 => {
                    // SAFETY: a new descriptor the kernel made for this
                    // process, owned by no one else: closed here.
                    drop(unsafe { OwnedFd::from_raw_fd(res) });
                }
                _ => {}
            }
        }
    }
}

/// Queues task `key` once.
fn queue(slots: &mut Slab<Slot>, run: &mut Vec<usize>, key: usize) {
    if let Some(slot) = slots.get_mut(key)
        && !slot.queued
    {
        slot.queued = true;
        run.push(key);
    }
}

/// Accepts on `listener` forever (one multishot accept) and runs each
/// connection on `reactor`. Never ends: errors of accept back off and
/// re-arm it.
pub async fn accept_loop<H: Handler + 'static>(
    listener: std::net::TcpListener,
    reactor: Rc<Reactor>,
    handler: H,
) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    let listener = Rc::new(Listener {
        socket: listener.into(),
        task: Cell::new(usize::MAX),
        armed: Cell::new(false),
        accepted: RefCell::default(),
    });
    let key = reactor.core.listeners.borrow_mut().insert(listener.clone());
    // The accept task holds the reactor weakly: the reactor owns the task.
    let weak = Rc::downgrade(&reactor);
    let task = accept(key, listener.clone(), weak, handler);
    reactor.incoming.borrow_mut().push(Incoming {
        future: Box::pin(task),
        owner: Owner::Listener(listener),
    });
    std::future::pending().await
}

async fn accept<H: Handler>(
    key: usize,
    listener: Rc<Listener>,
    reactor: Weak<Reactor>,
    handler: H,
) {
    let mut accepted = 0;
    loop {
        let res = std::future::poll_fn(|cx| {
            if accepted == ACCEPTS_PER_POLL {
                // Let the connections run; come back at once.
                accepted = 0;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            if let Some(res) = listener.accepted.borrow_mut().pop_front() {
                return Poll::Ready(res);
            }
            if !listener.armed.get()
                && let Some(reactor) = reactor.upgrade()
            {
                reactor.core.arm_accept(key, &listener);
            }
            // The next accept's completion polls this task again.
            Poll::Pending
        })
        .await;
        accepted += 1;
        match res {
            Ok(socket) => {
                let _ = rustix::net::sockopt::set_tcp_nodelay(&socket, true);
                let Some(reactor) = reactor.upgrade() else {
                    return;
                };
                reactor.add(socket, |io| handler.connection(io));
            }
            Err(errno) => super::accept_failed(io::Error::from_raw_os_error(errno)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn reactor() -> Rc<Reactor> {
        reactor_with(128)
    }

    fn reactor_with(buffers: u16) -> Rc<Reactor> {
        let flags = probe().expect("io_uring");
        Reactor::new(Setup { flags, buffers }).unwrap()
    }

    #[test]
    fn another_thread_wakes_the_sleeping_loop() {
        let reactor = reactor();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            tx.send(7).unwrap();
        });
        assert_eq!(reactor.block_on(rx).unwrap(), 7);
        sender.join().unwrap();
    }

    #[test]
    fn timers_and_spawned_tasks_run_on_the_loop() {
        let reactor = reactor();
        let order = Rc::new(RefCell::new(Vec::new()));
        let start = Instant::now();
        reactor.block_on(async {
            for (name, ms) in [("b", 40), ("a", 20)] {
                let order = order.clone();
                reactor.spawn(async move {
                    crate::timer::sleep(Duration::from_millis(ms)).await;
                    order.borrow_mut().push(name);
                });
            }
            crate::timer::sleep(Duration::from_millis(60)).await;
        });
        assert_eq!(*order.borrow(), ["a", "b"]);
        assert!(start.elapsed() >= Duration::from_millis(60));
        assert!(reactor.timers.is_empty());
    }

    #[test]
    fn timers_fire_while_a_task_keeps_waking_itself() {
        let reactor = reactor();
        let spins = Rc::new(Cell::new(0u64));
        let counter = spins.clone();
        reactor.spawn(std::future::poll_fn(move |cx| {
            counter.set(counter.get() + 1);
            cx.waker().wake_by_ref();
            Poll::<()>::Pending
        }));
        reactor.block_on(crate::timer::sleep(Duration::from_millis(30)));
        assert!(spins.get() > 1, "the task ran {} times", spins.get());
    }

    /// Far more connections than provided buffers (4), all sending at
    /// once: every receive that finds the ring empty is re-armed, every
    /// byte arrives.
    #[test]
    fn more_senders_than_buffers_all_arrive() {
        const CONNS: usize = 384;
        let reactor = reactor_with(4);
        let waits = buffer_waits();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let clients = std::thread::spawn(move || {
            let mut socks: Vec<_> = (0..CONNS)
                .map(|_| std::net::TcpStream::connect(addr).unwrap())
                .collect();
            for (i, s) in socks.iter_mut().enumerate() {
                std::io::Write::write_all(s, &[i as u8; 1000]).unwrap();
            }
            for (i, s) in socks.iter_mut().enumerate() {
                let mut back = [0u8; 1000];
                std::io::Read::read_exact(s, &mut back).unwrap();
                assert!(back.iter().all(|&b| b == i as u8));
            }
        });
        let done = Rc::new(Cell::new(0));
        reactor.block_on(async {
            for _ in 0..CONNS {
                let (socket, _) = listener.accept().unwrap();
                let done = done.clone();
                reactor.add(socket.into(), move |mut io| async move {
                    let mut buf = vec![0u8; 1000];
                    io.read_exact(&mut buf).await.unwrap();
                    io.write_all(&buf).await.unwrap();
                    io.flush().await.unwrap();
                    done.set(done.get() + 1);
                });
            }
            while done.get() < CONNS {
                crate::timer::sleep(Duration::from_millis(5)).await;
            }
        });
        clients.join().unwrap();
        assert_eq!(reactor.core.bufs.held.get(), 0, "every buffer is back");
        assert!(buffer_waits() > waits, "some receive found the ring empty");
    }

    /// What an idle connection holds in the loop beside its task: the block
    /// of its `Rc<Conn>` (two counts and the state; docs/performance.md,
    /// "io_uring") and its entry in the connection slab.
    #[test]
    fn connection_state_stays_small() {
        let block = 2 * size_of::<usize>() + size_of::<Conn>();
        let entry = size_of::<Rc<Conn>>() + size_of::<usize>();
        eprintln!("Rc<Conn> block {block} B, slab entry {entry} B");
        assert!(block <= 80, "Rc<Conn> block {block} B");
        assert!(entry <= 16, "slab entry {entry} B");
    }
}
