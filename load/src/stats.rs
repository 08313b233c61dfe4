//! Counters shared by the connection tasks: the run phase, per-thread shards
//! (message counts and a latency histogram, merged at the end), and errors.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use hdrhistogram::Histogram;

/// Connections are running but nothing is recorded yet.
pub const WARMUP: u8 = 0;
/// Inside the measured window.
pub const MEASURE: u8 = 1;
/// The window is over: stop sending, finish up.
pub const DONE: u8 = 2;

static PHASE: AtomicU8 = AtomicU8::new(WARMUP);

pub fn phase() -> u8 {
    PHASE.load(Ordering::Relaxed)
}

pub fn set_phase(p: u8) {
    PHASE.store(p, Ordering::Relaxed);
}

/// What one runtime thread recorded.
pub struct Shard {
    /// Echoes (or handshakes) completed inside the window.
    pub done: u64,
    /// Latencies in nanoseconds.
    pub hist: Histogram<u64>,
    /// Rate mode: how late each message was queued for sending after its
    /// intended send time, in nanoseconds.
    pub lag: Histogram<u64>,
    /// Echo: data frames sent and received inside the window, and their
    /// bytes on the wire (headers included).
    pub wire: Wire,
}

/// Data frames and their bytes on the wire, each way.
#[derive(Clone, Copy, Debug, Default)]
pub struct Wire {
    pub tx_msgs: u64,
    pub tx_bytes: u64,
    pub rx_msgs: u64,
    pub rx_bytes: u64,
}

impl Wire {
    fn add(&mut self, o: &Wire) {
        self.tx_msgs += o.tx_msgs;
        self.tx_bytes += o.tx_bytes;
        self.rx_msgs += o.rx_msgs;
        self.rx_bytes += o.rx_bytes;
    }
}

impl Shard {
    fn new() -> Self {
        Shard {
            done: 0,
            // 100 ns .. 100 s, 3 significant digits.
            hist: Histogram::new_with_bounds(100, 100_000_000_000, 3).expect("histogram bounds"),
            lag: Histogram::new_with_bounds(100, 100_000_000_000, 2).expect("histogram bounds"),
            wire: Wire::default(),
        }
    }
}

static SHARDS: Mutex<Vec<Arc<Mutex<Shard>>>> = Mutex::new(Vec::new());

thread_local! {
    static LOCAL: Arc<Mutex<Shard>> = {
        let shard = Arc::new(Mutex::new(Shard::new()));
        SHARDS.lock().expect("shards").push(shard.clone());
        shard
    };
}

/// Runs `f` on this thread's shard (an uncontended lock).
pub fn with_shard<R>(f: impl FnOnce(&mut Shard) -> R) -> R {
    LOCAL.with(|s| f(&mut s.lock().expect("shard")))
}

/// Counts `latencies` (nanoseconds) as completed echoes in this thread's
/// shard, and empties it.
pub fn record_done(latencies: &mut Vec<u64>) {
    if latencies.is_empty() {
        return;
    }
    with_shard(|s| {
        s.done += latencies.len() as u64;
        for &l in latencies.iter() {
            s.hist.saturating_record(l);
        }
    });
    latencies.clear();
}

/// Adds `w` to this thread's shard, and empties it.
pub fn record_wire(w: &mut Wire) {
    if w.tx_msgs == 0 && w.rx_msgs == 0 {
        return;
    }
    with_shard(|s| s.wire.add(w));
    *w = Wire::default();
}

/// All shards merged.
pub fn collect() -> Shard {
    let mut total = Shard::new();
    for s in SHARDS.lock().expect("shards").iter() {
        let s = s.lock().expect("shard");
        total.done += s.done;
        total.wire.add(&s.wire);
        total.hist.add(&s.hist).expect("same histogram bounds");
        total.lag.add(&s.lag).expect("same histogram bounds");
    }
    total
}

static ERRORS: AtomicU64 = AtomicU64::new(0);
static MISMATCHES: AtomicU64 = AtomicU64::new(0);
static FIRST_ERROR: Mutex<Option<String>> = Mutex::new(None);

/// Counts an error and keeps the first message for the report.
pub fn error(msg: String) {
    ERRORS.fetch_add(1, Ordering::Relaxed);
    let mut first = FIRST_ERROR.lock().expect("first error");
    if first.is_none() {
        *first = Some(msg);
    }
}

/// Counts an echo that differed from what was sent.
pub fn mismatch(msg: String) {
    if MISMATCHES.fetch_add(1, Ordering::Relaxed) == 0 {
        let mut first = FIRST_ERROR.lock().expect("first error");
        if first.is_none() {
            *first = Some(msg);
        }
    }
}

/// Adds counts reported by a worker process.
pub fn absorb(errors: u64, mismatches: u64, first: Option<String>) {
    ERRORS.fetch_add(errors, Ordering::Relaxed);
    MISMATCHES.fetch_add(mismatches, Ordering::Relaxed);
    let mut slot = FIRST_ERROR.lock().expect("first error");
    if slot.is_none() {
        *slot = first;
    }
}

pub fn first_error() -> Option<String> {
    FIRST_ERROR.lock().expect("first error").clone()
}

pub fn errors() -> u64 {
    ERRORS.load(Ordering::Relaxed)
}

pub fn mismatches() -> u64 {
    MISMATCHES.load(Ordering::Relaxed)
}
