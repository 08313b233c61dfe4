//! Topics: a message published once reaches every connection subscribed to
//! its topic, on every worker of the process.
//!
//! A published message is framed once, into one `Arc<[u8]>` (the one allocation
//! of a publish), which its subscribers share: each holds a reference in its
//! queue, not a copy. Each worker keeps its own subscribers
//! ([`LocalTopics`]). A publish on a worker reaches that worker's
//! subscribers directly, and each other worker that has subscribers of the
//! topic through that worker's [`Inbox`]: one lock and at most one wake per
//! worker per batch, never one per subscriber. Which workers have
//! subscribers of a topic is kept process-wide in the [`Hub`], and changes
//! only when a worker's first subscriber of the topic comes or its last
//! goes.
//!
//! A subscriber's queue counts against `--max-backpressure` like what its
//! handler sends: past it, the message is dropped for that subscriber or the
//! subscriber is closed (1008), so one slow subscriber neither slows the
//! others nor holds more than its cap. The cap bounds what the subscriber's
//! socket has not taken: a burst published in one round is queued whole
//! (up to [`BURST_CAPS`] caps) for a subscriber whose session has not had
//! its turn to write yet. When its session writes, it copies the
//! small frames queued into one pooled buffer (one write for several
//! messages) and writes a large frame from the shared bytes.
//!
//! Order: what one publisher publishes to one topic reaches every subscriber
//! in the order published (a worker's own subscribers directly, the others
//! through FIFO inboxes).

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::task::{Context, Poll, Waker};

use bytes::BytesMut;
use slab::Slab;

use crate::buffers::BufferPool;
use crate::deflate::{Agreed, Deflater};
use crate::metrics::WorkerMetrics;
use crate::sessions::LocalSessions;

/// Process-wide: the topics that have subscribers somewhere, each
/// worker's inbox, and the bridge to other processes, if any.
pub(crate) struct Hub {
    topics: RwLock<HashMap<Arc<str>, Arc<Topic>>>,
    inboxes: Box<[Inbox]>,
    bridge: OnceLock<Box<dyn Bridge>>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("topics", &self.topics)
            .field("bridge", &self.bridge.get().is_some())
            .finish_non_exhaustive()
    }
}

/// Topics shared with other processes (`crate::backplane`): told when a
/// topic gets its first subscriber in the process and loses its last, and
/// given every publish made in the process (not those it delivered).
pub(crate) trait Bridge: Send + Sync {
    /// The process has a first subscriber of `topic`.
    fn subscribe(&self, topic: &Arc<str>);
    /// The process has no subscriber of `topic` any more.
    fn unsubscribe(&self, topic: &Arc<str>);
    /// `frame` was published to `topic` in this process.
    fn forward(&self, topic: &str, frame: &Frame);
}

/// A topic with subscribers on at least one worker.
#[derive(Debug)]
pub(crate) struct Topic {
    name: Arc<str>,
    /// Bit `w % 64` of word `w / 64`: worker `w` has subscribers.
    workers: Box<[AtomicU64]>,
}

impl Topic {
    /// Workers with subscribers, in order.
    fn each_worker(&self, mut f: impl FnMut(usize)) {
        for (i, word) in self.workers.iter().enumerate() {
            let mut bits = word.load(Ordering::Acquire);
            while bits != 0 {
                let bit = bits.trailing_zeros() as usize;
                f(i * 64 + bit);
                bits &= bits - 1;
            }
        }
    }

    fn set(&self, worker: usize, on: bool) {
        let bit = 1 << (worker % 64);
        let word = &self.workers[worker / 64];
        if on {
            word.fetch_or(bit, Ordering::AcqRel);
        } else {
            word.fetch_and(!bit, Ordering::AcqRel);
        }
    }

    fn nowhere(&self) -> bool {
        self.workers.iter().all(|w| w.load(Ordering::Acquire) == 0)
    }
}

/// A published message on its way to another worker's subscribers.
#[derive(Debug)]
struct Delivery {
    topic: Arc<Topic>,
    frame: Frame,
    /// A session of the receiving worker that does not get it (its
    /// publisher).
    except: Option<usize>,
}

/// What other threads published for a worker's subscribers, and how to
/// wake the worker's task that delivers it.
#[derive(Debug, Default)]
struct Inbox {
    state: Mutex<InboxState>,
}

#[derive(Debug, Default)]
struct InboxState {
    queue: Vec<Delivery>,
    waker: Option<Waker>,
}

impl Inbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, InboxState> {
        // Every change under the lock is one push, swap or assignment.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, delivery: Delivery) {
        let waker = {
            let mut state = self.lock();
            state.queue.push(delivery);
            // Only the first of a batch wakes the worker.
            if state.queue.len() == 1 {
                state.waker.take()
            } else {
                None
            }
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Swaps what arrived into `batch` (empty), or registers the waker.
    fn poll_take(&self, cx: &Context<'_>, batch: &mut Vec<Delivery>) -> Poll<()> {
        let mut state = self.lock();
        if state.queue.is_empty() {
            match &state.waker {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => state.waker = Some(cx.waker().clone()),
            }
            return Poll::Pending;
        }
        std::mem::swap(&mut state.queue, batch);
        Poll::Ready(())
    }
}

impl Hub {
    /// A hub for `workers` workers.
    pub(crate) fn new(workers: usize) -> Self {
        Hub {
            topics: RwLock::default(),
            inboxes: (0..workers).map(|_| Inbox::default()).collect(),
            bridge: OnceLock::new(),
        }
    }

    /// Shares the topics with other processes through `bridge` (once,
    /// before any subscriber).
    pub(crate) fn bridge(&self, bridge: Box<dyn Bridge>) {
        if self.bridge.set(bridge).is_err() {
            tracing::warn!("topics already have a bridge");
        }
    }

    fn forward(&self, name: &str, frame: &Frame) {
        if let Some(bridge) = self.bridge.get() {
            bridge.forward(name, frame);
        }
    }

    fn topic(&self, name: &str) -> Option<Arc<Topic>> {
        let topics = self.topics.read().unwrap_or_else(|e| e.into_inner());
        topics.get(name).cloned()
    }

    /// Worker `worker` has its first subscriber of `name`.
    fn join(&self, name: &str, worker: usize) -> Arc<Topic> {
        let mut topics = self.topics.write().unwrap_or_else(|e| e.into_inner());
        let topic = match topics.get(name) {
            Some(topic) => topic.clone(),
            None => {
                let name: Arc<str> = Arc::from(name);
                let words = self.inboxes.len().div_ceil(64);
                let topic = Arc::new(Topic {
                    name: name.clone(),
                    workers: (0..words).map(|_| AtomicU64::new(0)).collect(),
                });
                topics.insert(name.clone(), topic.clone());
                // Under the lock: the bridge sees a topic's comings and
                // goings in order.
                if let Some(bridge) = self.bridge.get() {
                    bridge.subscribe(&name);
                }
                topic
            }
        };
        topic.set(worker, true);
        topic
    }

    /// Worker `worker` lost its last subscriber of `topic`.
    fn leave(&self, topic: &Topic, worker: usize) {
        let mut topics = self.topics.write().unwrap_or_else(|e| e.into_inner());
        topic.set(worker, false);
        if topic.nowhere() {
            topics.remove(&topic.name);
            if let Some(bridge) = self.bridge.get() {
                bridge.unsubscribe(&topic.name);
            }
        }
    }

    /// Sends `frame` to the subscribers of `name` on every worker but
    /// `skip` (whose own are reached directly), through their inboxes.
    /// `except` is a session of worker `except.0` that does not get it.
    fn post(
        &self,
        topic: &Arc<Topic>,
        frame: &Frame,
        skip: Option<usize>,
        except: Option<(usize, usize)>,
    ) {
        topic.each_worker(|w| {
            if Some(w) == skip {
                return;
            }
            self.inboxes[w].push(Delivery {
                topic: topic.clone(),
                frame: frame.clone(),
                except: except.and_then(|(worker, key)| (worker == w).then_some(key)),
            });
        });
    }

    /// Publishes `frame` to every subscriber of `name` but `except` (a
    /// worker and a session key), from any thread.
    pub(crate) fn publish(&self, name: &str, frame: Frame, except: Option<(usize, usize)>) {
        self.forward(name, &frame);
        if let Some(topic) = self.topic(name) {
            self.post(&topic, &frame, None, except);
        }
    }

    /// Delivers `frame`, published to `name` in another process, to this
    /// process's subscribers (and not back to the bridge).
    pub(crate) fn deliver_from_backplane(&self, name: &str, frame: Frame) {
        if let Some(topic) = self.topic(name) {
            self.post(&topic, &frame, None, None);
        }
    }
}

/// Publishes to the topics of a server from any thread: cheap to clone.
/// From [`crate::RunningServer::publisher`] or
/// [`crate::Conn::publisher`].
#[derive(Clone, Debug)]
pub struct Publisher(pub(crate) Arc<Hub>);

impl Publisher {
    /// Sends a text message to every connection subscribed to `topic`.
    pub fn publish_text(&self, topic: &str, text: &str) {
        self.0.publish(topic, frame(0x1, text.as_bytes()), None);
    }

    /// Sends a binary message to every connection subscribed to `topic`.
    pub fn publish_binary(&self, topic: &str, bytes: &[u8]) {
        self.0.publish(topic, frame(0x2, bytes), None);
    }
}

/// A framed message shared by its subscribers: cloning it counts a
/// reference. (`Arc<[u8]>` rather than `bytes::Bytes`: a `Bytes` made from
/// a buffer allocates a second time, for its reference count, when first
/// cloned.)
pub(crate) type Frame = Arc<[u8]>;

/// An unmasked, unfragmented server frame, in one allocation (the
/// reference counts and the bytes together).
pub(crate) fn frame(opcode: u8, payload: &[u8]) -> Frame {
    let (header, n) = crate::frame::frame_header(opcode, payload.len());
    let mut frame: Frame = std::iter::repeat_n(0, n + payload.len()).collect();
    let bytes = Arc::get_mut(&mut frame).expect("not shared yet");
    bytes[..n].copy_from_slice(&header[..n]);
    bytes[n..].copy_from_slice(payload);
    frame
}

/// A topic on one worker: its subscribers there.
#[derive(Debug)]
struct Local {
    topic: Arc<Topic>,
    keys: Vec<usize>,
}

/// A session's place in one topic: the topic's slot in
/// [`LocalTopics::topics`] and the session's index in its list of keys.
type Place = (u32, u32);

/// `Subscriber::first` of a session in no topic.
const NOWHERE: Place = (u32::MAX, 0);

/// A session on one worker, as the topics see it; indexed by session key
/// (keys are a slab's: dense, and reused). 24 bytes, and no allocation for
/// a session in one topic with nothing queued: what an idle subscriber
/// costs, the figure a pod's connection count multiplies.
#[derive(Debug)]
struct Subscriber {
    /// Its first topic, or [`NOWHERE`].
    first: Place,
    /// Its other topics, if it has more than one. Boxed: 8 bytes in every
    /// subscriber rather than a `Vec`'s 24, for the rarer second topic.
    #[allow(clippy::box_collection)]
    more: Option<Box<Vec<Place>>>,
    /// What is queued for it, while anything is (pooled).
    out: Option<Box<Output>>,
}

impl Default for Subscriber {
    fn default() -> Self {
        Subscriber {
            first: NOWHERE,
            more: None,
            out: None,
        }
    }
}

impl Subscriber {
    fn places(&self) -> impl Iterator<Item = &Place> {
        let first = (self.first != NOWHERE).then_some(&self.first);
        first
            .into_iter()
            .chain(self.more.iter().flat_map(|m| m.iter()))
    }

    fn place_mut(&mut self, slot: u32) -> Option<&mut Place> {
        if self.first.0 == slot {
            return Some(&mut self.first);
        }
        self.more.as_mut()?.iter_mut().find(|p| p.0 == slot)
    }

    fn add(&mut self, place: Place) {
        if self.first == NOWHERE {
            self.first = place;
        } else {
            self.more.get_or_insert_default().push(place);
        }
    }

    /// Out of topic `slot`; its index there, if it was in it.
    fn remove(&mut self, slot: u32) -> Option<u32> {
        let more = self.more.as_mut();
        let removed = if self.first.0 == slot {
            let removed = self.first;
            self.first = more.and_then(|m| m.pop()).unwrap_or(NOWHERE);
            removed
        } else {
            let more = more?;
            let i = more.iter().position(|p| p.0 == slot)?;
            more.swap_remove(i)
        };
        if self.more.as_ref().is_some_and(|m| m.is_empty()) {
            self.more = None;
        }
        Some(removed.1)
    }
}

/// What is queued for one subscriber.
#[derive(Debug, Default)]
struct Output {
    /// Frames delivered and not yet taken by the session, in order.
    frames: VecDeque<Frame>,
    /// Bytes of `frames`, plus those the session took and has not
    /// written: what `--max-backpressure` bounds.
    queued: usize,
    /// The session's last write waits on its socket (see
    /// [`LocalTopics::stalled`]).
    waiting: bool,
    /// A delivery found the cap reached with the `close` policy.
    over_cap: bool,
}

/// One worker's topics and subscribers (single-threaded).
#[derive(Debug)]
pub(crate) struct LocalTopics {
    worker: usize,
    hub: Arc<Hub>,
    /// `--max-backpressure` and whether its policy is `drop`.
    cap: usize,
    drop: bool,
    /// The worker's counters (messages dropped at the cap).
    metrics: Arc<WorkerMetrics>,
    names: RefCell<HashMap<Arc<str>, u32>>,
    topics: RefCell<Slab<Local>>,
    subscribers: RefCell<Vec<Subscriber>>,
    /// permessage-deflate per session key, for those that subscribed (one
    /// byte each, beside `subscribers`): a publish is compressed once per
    /// window in use, on this worker, and shared by those that agreed on it.
    codecs: RefCell<Vec<Option<Agreed>>>,
    /// The worker's compressor (shared with its sessions).
    deflater: Rc<RefCell<Deflater>>,
    /// Emptied outputs, kept so that a delivery does not allocate one.
    /// Boxed as subscribers hold them, so that handing one out allocates
    /// nothing.
    #[allow(clippy::vec_box)]
    spare: RefCell<Vec<Box<Output>>>,
    /// Fewest outputs `spare` held since the last [`LocalTopics::trim`]:
    /// that many went unused for the whole period.
    spare_low: std::cell::Cell<usize>,
    /// Deliveries taken from the inbox (its capacity kept).
    batch: RefCell<Vec<Delivery>>,
}

/// What a subscribed session takes from its queue to write.
#[derive(Debug)]
pub(crate) enum Taken {
    /// Small frames copied into one pooled buffer, and how many.
    Copied(BytesMut, u32),
    /// One large frame, written from the shared bytes.
    Shared(Frame),
}

/// A subscriber's queue reached `--max-backpressure` with the `close` policy.
#[derive(Debug)]
pub(crate) struct OverCap;

/// Most frames an output keeps room for after it is emptied (larger ones
/// are freed).
const SPARE_QUEUE_MAX: usize = 64;

/// How many times `--max-backpressure` a subscriber whose socket is taking
/// what its session writes may have queued. The cap bounds what the socket
/// has not taken, as uWebSockets' `maxBackpressure` bounds a socket's
/// buffered amount: a burst published in one round of the worker (a
/// publisher's pipelined messages, an inbox batch) is queued in full for a
/// subscriber whose session has not yet had its turn to write, and counts
/// against the cap itself only once a write of that session waits on its
/// socket. This multiple bounds the burst all the same (per subscriber:
/// 16 bytes of queue per frame; the frames themselves are shared).
const BURST_CAPS: usize = 16;

impl LocalTopics {
    /// Worker `worker`'s topics, on `hub`.
    pub(crate) fn new(
        worker: usize,
        hub: Arc<Hub>,
        cap: usize,
        drop: bool,
        metrics: Arc<WorkerMetrics>,
        deflater: Rc<RefCell<Deflater>>,
    ) -> Self {
        LocalTopics {
            worker,
            hub,
            cap,
            drop,
            metrics,
            names: RefCell::default(),
            topics: RefCell::default(),
            subscribers: RefCell::default(),
            codecs: RefCell::default(),
            deflater,
            spare: RefCell::default(),
            spare_low: std::cell::Cell::new(0),
            batch: RefCell::default(),
        }
    }

    /// The process's hub.
    pub(crate) fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// This worker's index.
    pub(crate) fn worker(&self) -> usize {
        self.worker
    }

    /// Subscribes session `key`, which negotiated `codec`, to `name`; false
    /// if it already was.
    pub(crate) fn subscribe(&self, key: usize, codec: Option<Agreed>, name: &str) -> bool {
        let mut names = self.names.borrow_mut();
        let mut topics = self.topics.borrow_mut();
        let slot = match names.get(name) {
            Some(&slot) => slot,
            None => {
                let topic = self.hub.join(name, self.worker);
                let slot = topics.insert(Local {
                    topic: topic.clone(),
                    keys: Vec::new(),
                }) as u32;
                names.insert(topic.name.clone(), slot);
                slot
            }
        };
        let mut subscribers = self.subscribers.borrow_mut();
        if subscribers.len() <= key {
            subscribers.resize_with(key + 1, Subscriber::default);
            self.codecs.borrow_mut().resize(key + 1, None);
        }
        self.codecs.borrow_mut()[key] = codec;
        let sub = &mut subscribers[key];
        if sub.place_mut(slot).is_some() {
            return false;
        }
        let local = &mut topics[slot as usize];
        sub.add((slot, local.keys.len() as u32));
        local.keys.push(key);
        true
    }

    /// Unsubscribes session `key` from `name`; false if it was not.
    pub(crate) fn unsubscribe(&self, key: usize, name: &str) -> bool {
        let Some(&slot) = self.names.borrow().get(name) else {
            return false;
        };
        let mut subscribers = self.subscribers.borrow_mut();
        let Some(index) = subscribers.get_mut(key).and_then(|s| s.remove(slot)) else {
            return false;
        };
        self.remove_key(&mut subscribers, slot, index);
        true
    }

    /// Session `key` is over: out of every topic, its queue dropped.
    pub(crate) fn leave(&self, key: usize) {
        let mut subscribers = self.subscribers.borrow_mut();
        let Some(mut sub) = subscribers.get_mut(key).map(std::mem::take) else {
            return;
        };
        if let Some(out) = sub.out.take() {
            self.give_output(out);
        }
        for &(slot, index) in sub.places() {
            self.remove_key(&mut subscribers, slot, index);
        }
    }

    /// Removes the key at `index` of topic `slot` (moving the last key into
    /// its place), and the topic from this worker if that was its last.
    fn remove_key(&self, subscribers: &mut [Subscriber], slot: u32, index: u32) {
        let mut topics = self.topics.borrow_mut();
        let local = &mut topics[slot as usize];
        local.keys.swap_remove(index as usize);
        if let Some(&moved) = local.keys.get(index as usize) {
            let place = subscribers[moved].place_mut(slot).expect("its topic");
            place.1 = index;
        }
        if local.keys.is_empty() {
            let local = topics.remove(slot as usize);
            self.names.borrow_mut().remove(&local.topic.name);
            self.hub.leave(&local.topic, self.worker);
        }
    }

    /// Publishes `frame` to every subscriber of `name` in the process but
    /// this worker's session `except`: this worker's directly, the others
    /// through their workers' inboxes.
    pub(crate) fn publish(
        &self,
        sessions: &LocalSessions,
        name: &str,
        frame: Frame,
        except: Option<usize>,
    ) {
        self.hub.forward(name, &frame);
        let slot = self.names.borrow().get(name).copied();
        let topic = match slot {
            Some(slot) => self.topics.borrow()[slot as usize].topic.clone(),
            None => match self.hub.topic(name) {
                Some(topic) => topic,
                None => return,
            },
        };
        let except_here = except.map(|key| (self.worker, key));
        self.hub
            .post(&topic, &frame, Some(self.worker), except_here);
        if let Some(slot) = slot {
            self.deliver(sessions, slot, &frame, except);
        }
    }

    /// Queues `frame` for every subscriber of topic `slot` here but
    /// `except`, and wakes them.
    fn deliver(&self, sessions: &LocalSessions, slot: u32, plain: &Frame, except: Option<usize>) {
        let topics = self.topics.borrow();
        let mut subscribers = self.subscribers.borrow_mut();
        let codecs = self.codecs.borrow();
        // The frame compressed for each window, once tried (None inside: not
        // worth compressing).
        let mut compressed: [Option<Option<Frame>>; 2] = [None, None];
        for &key in &topics[slot as usize].keys {
            if Some(key) == except {
                continue;
            }
            let frame = match codecs[key] {
                None => plain,
                Some(agreed) => compressed[usize::from(agreed.narrow)]
                    .get_or_insert_with(|| self.deflater.borrow_mut().compress_frame(plain, agreed))
                    .as_ref()
                    .unwrap_or(plain),
            };
            let out = subscribers[key]
                .out
                .get_or_insert_with(|| self.spare_output());
            if out.over_cap {
                continue;
            }
            let cap = if out.waiting {
                self.cap
            } else {
                self.cap.saturating_mul(BURST_CAPS)
            };
            if out.queued > cap {
                if self.drop {
                    self.metrics.backpressure_drops.add(1);
                } else {
                    out.over_cap = true;
                    sessions.wake(key);
                }
                continue;
            }
            let was_empty = out.frames.is_empty();
            out.queued += frame.len();
            out.frames.push_back(frame.clone());
            if was_empty {
                sessions.wake(key);
            }
        }
    }

    /// Delivers what other threads published for this worker's
    /// subscribers: the worker runs this for as long as it runs.
    pub(crate) async fn run_inbox(&self, sessions: &LocalSessions) {
        let inbox = &self.hub.inboxes[self.worker];
        loop {
            let mut batch = std::mem::take(&mut *self.batch.borrow_mut());
            std::future::poll_fn(|cx| inbox.poll_take(cx, &mut batch)).await;
            for d in batch.drain(..) {
                let slot = self.names.borrow().get(&*d.topic.name).copied();
                if let Some(slot) = slot {
                    self.deliver(sessions, slot, &d.frame, d.except);
                }
            }
            *self.batch.borrow_mut() = batch;
        }
    }

    /// Session `key`'s next frames to write, if it has any queued: small
    /// ones copied into a buffer from `pool` (as many as fit), or one large
    /// one shared. `Err` if a delivery found its cap reached with the
    /// `close` policy. The session calls this only when it has nothing
    /// else to write, so its socket is not (or no longer) waiting.
    pub(crate) fn take(&self, key: usize, pool: &BufferPool) -> Result<Option<Taken>, OverCap> {
        let mut subscribers = self.subscribers.borrow_mut();
        let Some(out) = subscribers.get_mut(key).and_then(|s| s.out.as_mut()) else {
            return Ok(None);
        };
        if out.over_cap {
            return Err(OverCap);
        }
        out.waiting = false;
        let frames = &mut out.frames;
        if frames.is_empty() {
            return Ok(None);
        }
        let mut buf = pool.take();
        let room = buf.capacity();
        if frames.front().is_some_and(|f| f.len() > room) {
            pool.give(buf);
            return Ok(frames.pop_front().map(Taken::Shared));
        }
        let mut n = 0;
        while let Some(f) = frames.front()
            && buf.len() + f.len() <= room
        {
            buf.extend_from_slice(f);
            frames.pop_front();
            n += 1;
        }
        Ok(Some(Taken::Copied(buf, n)))
    }

    /// A write of session `key` waits on its socket: from now on (until it
    /// next takes) what is queued for it counts against the cap itself.
    /// Whether a delivery found the cap reached (policy `close`).
    pub(crate) fn stalled(&self, key: usize) -> bool {
        let mut subscribers = self.subscribers.borrow_mut();
        match subscribers.get_mut(key).and_then(|s| s.out.as_mut()) {
            Some(out) => {
                out.waiting = true;
                out.over_cap
            }
            None => false,
        }
    }

    /// Session `key` wrote `bytes` of what it took.
    pub(crate) fn written(&self, key: usize, bytes: usize) {
        let mut subscribers = self.subscribers.borrow_mut();
        let Some(sub) = subscribers.get_mut(key) else {
            return;
        };
        let Some(out) = sub.out.as_mut() else {
            return;
        };
        out.queued -= bytes.min(out.queued);
        if out.queued == 0 && !out.over_cap {
            let out = sub.out.take().expect("just seen");
            drop(subscribers);
            self.give_output(out);
        }
    }

    /// An empty output: a spare one, or a new one.
    fn spare_output(&self) -> Box<Output> {
        let mut spare = self.spare.borrow_mut();
        let out = spare.pop().unwrap_or_default();
        self.spare_low.set(self.spare_low.get().min(spare.len()));
        out
    }

    fn give_output(&self, mut out: Box<Output>) {
        out.frames.clear();
        if out.frames.capacity() <= SPARE_QUEUE_MAX {
            out.queued = 0;
            out.waiting = false;
            out.over_cap = false;
            self.spare.borrow_mut().push(out);
        }
    }

    /// Frees the spare outputs that went unused since the last call (the
    /// worker's memory collection, once a second), as the buffer pool does.
    pub(crate) fn trim(&self) {
        let mut spare = self.spare.borrow_mut();
        let unused = self.spare_low.get().min(spare.len());
        spare.drain(..unused);
        if spare.is_empty() {
            *spare = Vec::new();
        }
        self.spare_low.set(spare.len());
    }

    /// Sessions in a topic here, or with frames still queued.
    #[cfg(test)]
    pub(crate) fn subscribers(&self) -> usize {
        self.subscribers
            .borrow()
            .iter()
            .filter(|s| s.first != NOWHERE || s.out.is_some())
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::WakeCount;

    fn parked(sessions: &LocalSessions, n: usize) -> (Vec<usize>, Arc<WakeCount>) {
        let (count, waker) = WakeCount::new();
        let keys = (0..n).map(|_| sessions.enter()).collect::<Vec<_>>();
        for &key in &keys {
            sessions.park(key, &Context::from_waker(&waker));
        }
        (keys, count)
    }

    fn drain(topics: &LocalTopics, key: usize, pool: &BufferPool) -> Vec<u8> {
        let mut got = Vec::new();
        while let Ok(Some(taken)) = topics.take(key, pool) {
            match taken {
                Taken::Copied(buf, _) => {
                    got.extend_from_slice(&buf);
                    topics.written(key, buf.len());
                    let mut buf = buf;
                    buf.clear();
                    pool.give(buf);
                }
                Taken::Shared(frame) => {
                    got.extend_from_slice(&frame);
                    topics.written(key, frame.len());
                }
            }
        }
        got
    }

    #[test]
    fn a_publish_reaches_every_subscriber_but_its_publisher_once() {
        let hub = Arc::new(Hub::new(1));
        let topics = LocalTopics::new(
            0,
            hub.clone(),
            1 << 20,
            false,
            Arc::default(),
            Rc::default(),
        );
        let sessions = LocalSessions::default();
        let pool = BufferPool::default();
        let (keys, wakes) = parked(&sessions, 4);
        for &key in &keys[..3] {
            assert!(topics.subscribe(key, None, "room"));
        }
        assert!(!topics.subscribe(keys[0], None, "room"), "once");
        topics.publish(&sessions, "room", frame(0x1, b"hi"), Some(keys[0]));
        topics.publish(&sessions, "room", frame(0x1, b"again"), Some(keys[0]));
        topics.publish(&sessions, "elsewhere", frame(0x1, b"lost"), None);
        assert_eq!(wakes.get(), 2, "one wake per subscriber with a queue");
        assert_eq!(drain(&topics, keys[0], &pool), b"");
        for &key in &keys[1..3] {
            assert_eq!(drain(&topics, key, &pool), b"\x81\x02hi\x81\x05again");
        }
        assert_eq!(drain(&topics, keys[3], &pool), b"", "not subscribed");
    }

    #[test]
    fn leaving_keeps_the_other_subscribers_and_empties_the_hub() {
        let hub = Arc::new(Hub::new(2));
        let topics = LocalTopics::new(
            1,
            hub.clone(),
            1 << 20,
            false,
            Arc::default(),
            Rc::default(),
        );
        let sessions = LocalSessions::default();
        let pool = BufferPool::default();
        let (keys, _) = parked(&sessions, 5);
        for &key in &keys {
            topics.subscribe(key, None, "a");
        }
        topics.subscribe(keys[2], None, "b");
        assert!(
            hub.topic("a")
                .is_some_and(|t| t.workers[0].load(Ordering::Relaxed) == 2)
        );
        // Out of the middle of the list: the last key takes the place.
        topics.leave(keys[1]);
        assert!(topics.unsubscribe(keys[0], "a"));
        assert!(!topics.unsubscribe(keys[0], "a"));
        topics.publish(&sessions, "a", frame(0x2, b"x"), None);
        for (i, &key) in keys.iter().enumerate() {
            let want: &[u8] = if i < 2 { b"" } else { b"\x82\x01x" };
            assert_eq!(drain(&topics, key, &pool), want, "key {i}");
        }
        for &key in &keys[2..] {
            topics.leave(key);
        }
        assert!(hub.topic("a").is_none() && hub.topic("b").is_none());
        assert_eq!(topics.subscribers(), 0);
        assert!(topics.names.borrow().is_empty() && topics.topics.borrow().is_empty());
    }

    #[test]
    fn other_workers_get_it_through_their_inbox() {
        let hub = Arc::new(Hub::new(2));
        let here = LocalTopics::new(
            0,
            hub.clone(),
            1 << 20,
            false,
            Arc::default(),
            Rc::default(),
        );
        let there = LocalTopics::new(
            1,
            hub.clone(),
            1 << 20,
            false,
            Arc::default(),
            Rc::default(),
        );
        let (s0, s1) = (LocalSessions::default(), LocalSessions::default());
        let pool = BufferPool::default();
        let (k0, _) = parked(&s0, 1);
        let (k1, _) = parked(&s1, 1);
        here.subscribe(k0[0], None, "t");
        there.subscribe(k1[0], None, "t");
        here.publish(&s0, "t", frame(0x1, b"1"), None);
        Publisher(hub.clone()).publish_text("t", "2");
        assert_eq!(drain(&here, k0[0], &pool), b"\x81\x011", "directly");
        // Worker 0's inbox has the publisher's message for its subscriber.
        let (count, waker) = WakeCount::new();
        let mut batch = Vec::new();
        let cx = Context::from_waker(&waker);
        assert!(hub.inboxes[0].poll_take(&cx, &mut batch).is_ready());
        assert_eq!(batch.len(), 1);
        let mut batch = Vec::new();
        assert!(hub.inboxes[1].poll_take(&cx, &mut batch).is_ready());
        for d in batch {
            let slot = there.names.borrow()[&*d.topic.name];
            there.deliver(&s1, slot, &d.frame, d.except);
        }
        assert_eq!(
            drain(&there, k1[0], &pool),
            b"\x81\x011\x81\x012",
            "in order"
        );
        let mut batch = Vec::new();
        assert!(hub.inboxes[1].poll_take(&cx, &mut batch).is_pending());
        Publisher(hub.clone()).publish_text("t", "3");
        assert_eq!(count.get(), 1, "a waiting worker is woken");
    }

    #[test]
    fn a_waiting_subscriber_at_its_cap_is_dropped_from_or_closed() {
        for drop in [true, false] {
            let hub = Arc::new(Hub::new(1));
            let metrics = Arc::new(WorkerMetrics::default());
            let topics = LocalTopics::new(0, hub, 10, drop, metrics.clone(), Rc::default());
            let sessions = LocalSessions::default();
            let pool = BufferPool::default();
            let (keys, _) = parked(&sessions, 2);
            topics.subscribe(keys[0], None, "t");
            topics.subscribe(keys[1], None, "t");
            for i in 0..5 {
                topics.publish(&sessions, "t", frame(0x2, b"12345678"), None);
                if i == 0 {
                    // keys[0]'s session could not write all it had.
                    assert!(!topics.stalled(keys[0]));
                }
                // keys[1] keeps up.
                assert_eq!(drain(&topics, keys[1], &pool).len(), 10);
            }
            // keys[0] took two (20 bytes queued, over the cap of 10 after
            // the second), then dropped three or was closed.
            let taken = topics.take(keys[0], &pool);
            if drop {
                assert!(matches!(taken, Ok(Some(Taken::Copied(_, 2)))), "{taken:?}");
                assert_eq!(metrics.backpressure_drops.get(), 3);
            } else {
                assert!(taken.is_err() && topics.stalled(keys[0]));
                assert_eq!(metrics.backpressure_drops.get(), 0);
            }
        }
    }

    #[test]
    fn a_burst_is_queued_in_full_until_the_socket_waits() {
        let metrics = Arc::new(WorkerMetrics::default());
        let topics = LocalTopics::new(
            0,
            Arc::new(Hub::new(1)),
            10,
            true,
            metrics.clone(),
            Rc::default(),
        );
        let sessions = LocalSessions::default();
        let pool = BufferPool::default();
        let (keys, _) = parked(&sessions, 1);
        topics.subscribe(keys[0], None, "t");
        // Ten times the cap in one round, before the session's turn: all
        // of it is queued (up to BURST_CAPS caps).
        for _ in 0..10 {
            topics.publish(&sessions, "t", frame(0x2, b"12345678"), None);
        }
        assert_eq!(drain(&topics, keys[0], &pool).len(), 100);
        assert_eq!(metrics.backpressure_drops.get(), 0);
        // A burst past BURST_CAPS caps is bounded all the same.
        for _ in 0..BURST_CAPS + 5 {
            topics.publish(&sessions, "t", frame(0x2, b"12345678"), None);
        }
        let kept = drain(&topics, keys[0], &pool).len() / 10;
        assert_eq!(kept, BURST_CAPS + 1);
        assert_eq!(metrics.backpressure_drops.get(), 4);
        // Once its write waits, the cap itself.
        topics.publish(&sessions, "t", frame(0x2, b"12345678"), None);
        assert!(!topics.stalled(keys[0]));
        for _ in 0..3 {
            topics.publish(&sessions, "t", frame(0x2, b"12345678"), None);
        }
        assert_eq!(drain(&topics, keys[0], &pool).len(), 20);
        assert_eq!(metrics.backpressure_drops.get(), 6);
        // Taking again (the socket took everything): bursts are whole again.
        for _ in 0..10 {
            topics.publish(&sessions, "t", frame(0x2, b"12345678"), None);
        }
        assert_eq!(drain(&topics, keys[0], &pool).len(), 100);
        assert_eq!(topics.subscribers(), 1);
        assert!(
            topics.subscribers.borrow()[keys[0]].out.is_none(),
            "all written: returned"
        );
    }

    #[test]
    fn an_idle_subscriber_is_24_bytes_and_holds_nothing() {
        assert_eq!(std::mem::size_of::<Subscriber>(), 24);
        let topics = LocalTopics::new(
            0,
            Arc::new(Hub::new(1)),
            10,
            true,
            Arc::default(),
            Rc::default(),
        );
        let sessions = LocalSessions::default();
        let (keys, _) = parked(&sessions, 3);
        topics.subscribe(keys[1], None, "a");
        let subs = topics.subscribers.borrow();
        assert!(subs[keys[1]].more.is_none() && subs[keys[1]].out.is_none());
        drop(subs);
        // More topics, then out of them in any order.
        topics.subscribe(keys[1], None, "b");
        topics.subscribe(keys[1], None, "c");
        topics.subscribe(keys[2], None, "a");
        assert!(topics.unsubscribe(keys[1], "a"));
        assert!(topics.unsubscribe(keys[1], "c"));
        assert!(!topics.unsubscribe(keys[1], "c"));
        assert!(!topics.unsubscribe(keys[0], "b"), "never subscribed");
        let subs = topics.subscribers.borrow();
        assert_eq!(subs[keys[1]].places().count(), 1);
        assert!(subs[keys[1]].more.is_none());
        drop(subs);
        topics.leave(keys[1]);
        topics.leave(keys[2]);
        assert_eq!(topics.subscribers(), 0);
        assert!(topics.names.borrow().is_empty());
    }

    #[test]
    fn a_publish_is_compressed_once_per_window_for_those_that_agreed() {
        let topics = LocalTopics::new(
            0,
            Arc::new(Hub::new(1)),
            1 << 20,
            false,
            Arc::default(),
            Rc::default(),
        );
        let sessions = LocalSessions::default();
        let pool = BufferPool::default();
        let (keys, _) = parked(&sessions, 5);
        let wide = Some(Agreed {
            narrow: false,
            takeover: false,
        });
        let narrow = Some(Agreed {
            narrow: true,
            takeover: false,
        });
        for (&key, codec) in keys.iter().zip([None, wide, wide, narrow, narrow]) {
            topics.subscribe(key, codec, "t");
        }
        let text = "{\"user\":\"ana\",\"text\":\"hello\"}".repeat(30);
        topics.publish(&sessions, "t", frame(0x1, text.as_bytes()), None);
        topics.publish(&sessions, "t", frame(0x1, b"short"), None);
        let got: Vec<Vec<u8>> = keys.iter().map(|&k| drain(&topics, k, &pool)).collect();
        let plain = [&frame(0x1, text.as_bytes())[..], b"\x81\x05short"].concat();
        assert_eq!(got[0], plain, "plain");
        assert_eq!(got[1], got[2], "the same bytes for the same window");
        for g in &got[1..] {
            assert_eq!(g[0], 0x80 | crate::deflate::RSV1 | 0x1, "compressed");
            assert!(
                g.len() < 300 && g.ends_with(b"\x81\x05short"),
                "{}",
                g.len()
            );
        }
    }

    #[test]
    fn a_large_frame_is_shared_not_copied() {
        let topics = LocalTopics::new(
            0,
            Arc::new(Hub::new(1)),
            1 << 20,
            false,
            Arc::default(),
            Rc::default(),
        );
        let sessions = LocalSessions::default();
        let pool = BufferPool::default();
        let (keys, _) = parked(&sessions, 1);
        topics.subscribe(keys[0], None, "t");
        let big = frame(0x2, &[7; 20_000]);
        topics.publish(&sessions, "t", big.clone(), None);
        topics.publish(&sessions, "t", frame(0x2, b"small"), None);
        match topics.take(keys[0], &pool) {
            Ok(Some(Taken::Shared(f))) => assert_eq!(f.as_ptr(), big.as_ptr(), "the same bytes"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            topics.take(keys[0], &pool),
            Ok(Some(Taken::Copied(_, 1)))
        ));
    }
}
