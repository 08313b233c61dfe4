//! The application's side of a connection: a [`Handler`] decides upgrades
//! and reacts to a session's events, through a [`Conn`] that sends and
//! closes. [`Echo`] is the handler the `ringws` binary runs.
//!
//! A server runs one clone of the handler per worker, so a handler's own
//! fields are per-worker unless they are shared (an `Arc`). Each connection
//! has a [`Handler::State`] of the handler's choosing, made by
//! [`Handler::upgrade`] and held inline in the session (an idle connection
//! costs its size: `()` for echo).
//!
//! Callbacks run on the worker's thread, one at a time, and must not block:
//! a callback that waits holds every connection of its worker. Work that
//! waits (a database, another service) belongs on a runtime the application
//! owns, answered later (the README shows how).
//!
//! ```no_run
//! use ringws::{Accept, Conn, Handler, Message, Refuse, Request};
//!
//! /// Counts each connection's messages and answers with the count.
//! #[derive(Clone)]
//! struct Counter;
//!
//! impl Handler for Counter {
//!     type State = u64;
//!
//!     fn upgrade(&self, req: &Request<'_>) -> Result<Accept<u64>, Refuse> {
//!         match req.query() {
//!             Some(q) if q.contains("token=secret") => Ok(Accept::new(0)),
//!             _ => Err(Refuse::new(401, "a token is required")),
//!         }
//!     }
//!
//!     fn message(&self, conn: &mut Conn<'_, u64>, _msg: Message<'_>) {
//!         *conn.state() += 1;
//!         let n = *conn.state();
//!         conn.send_text(&n.to_string());
//!     }
//! }
//!
//! let config = ringws::Config { port: 8080, ..Default::default() };
//! ringws::Server::bind(config)?.start_with(Counter)?.join()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::borrow::Cow;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Waker;

use bytes::BytesMut;
use hyper::header::HeaderMap;

use crate::deflate::{Codec, put_message};
use crate::frame::put_frame;
use crate::pubsub::{self, Hub, LocalTopics, Publisher};
use crate::sessions::LocalSessions;

/// A WebSocket application: what to do with upgrade requests and with the
/// events of each session. See the [module documentation](self).
///
/// Every callback but [`Handler::upgrade`] and [`Handler::message`] has a
/// default that does nothing. A callback that panics closes its own
/// connection with 1011 (counted as `ringws_handler_panics_total`); no
/// further callback runs for that connection.
pub trait Handler: Clone + Send + 'static {
    /// Each connection's own state, held inline in its session.
    type State: 'static;

    /// Decides an upgrade request that is a valid WebSocket handshake on
    /// `--path`: accept it with the connection's state (and perhaps a
    /// subprotocol), or refuse it with a status and a reason.
    fn upgrade(&self, req: &Request<'_>) -> Result<Accept<Self::State>, Refuse>;

    /// The session has started (the `101` is sent).
    fn open(&self, conn: &mut Conn<'_, Self::State>) {
        let _ = conn;
    }

    /// A whole message: text as validated UTF-8, binary as bytes, borrowed
    /// from the read buffer where it lies (a fragmented message is joined
    /// first).
    fn message(&self, conn: &mut Conn<'_, Self::State>, msg: Message<'_>);

    /// What this connection had queued, after waiting for the peer to read,
    /// is sent.
    fn drained(&self, conn: &mut Conn<'_, Self::State>) {
        let _ = conn;
    }

    /// The session ended with an error: a protocol violation by the peer, a
    /// lost connection, a message over `--max-message-size`, backpressure
    /// over `--max-backpressure`. [`Handler::close`] follows.
    fn error(&self, state: &mut Self::State, error: &Error) {
        let _ = (state, error);
    }

    /// The session is over: `code` and `reason` as the peer sent them, or as
    /// ringws closed (`1006` when the connection was lost without a Close
    /// frame, `1005` when a Close frame carried no code). Called once.
    fn close(&self, state: &mut Self::State, code: u16, reason: &str) {
        let _ = (state, code, reason);
    }

    /// A plain `GET` (or `HEAD`) to `path`, which is neither `--path` nor
    /// one of ringws's own routes (`/healthz`, `/readyz`, `/metrics`): a
    /// page to serve (the web client of a chat, say), or `None` for 404.
    /// Runs on a worker's thread like the other callbacks.
    fn page(&self, path: &str) -> Option<Page> {
        let _ = path;
        None
    }
}

/// A page served by [`Handler::page`]: `200` with a content type and a body.
#[derive(Clone, Debug)]
pub struct Page {
    pub(crate) content_type: &'static str,
    pub(crate) body: bytes::Bytes,
}

impl Page {
    /// An HTML page (`text/html; charset=utf-8`).
    pub fn html(body: impl Into<bytes::Bytes>) -> Page {
        Page::new("text/html; charset=utf-8", body)
    }

    /// A body of any content type.
    pub fn new(content_type: &'static str, body: impl Into<bytes::Bytes>) -> Page {
        Page {
            content_type,
            body: body.into(),
        }
    }
}

/// A message as the handler receives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Message<'a> {
    /// A text message (valid UTF-8).
    Text(&'a str),
    /// A binary message.
    Binary(&'a [u8]),
}

impl<'a> Message<'a> {
    /// The payload's bytes.
    pub fn as_bytes(&self) -> &'a [u8] {
        match self {
            Message::Text(s) => s.as_bytes(),
            Message::Binary(b) => b,
        }
    }

    /// True for a text message.
    pub fn is_text(&self) -> bool {
        matches!(self, Message::Text(_))
    }
}

/// An upgrade request, as [`Handler::upgrade`] sees it (already checked to
/// be a valid WebSocket handshake on `--path`).
pub struct Request<'a> {
    pub(crate) req: &'a hyper::Request<hyper::body::Incoming>,
    pub(crate) peer: Option<SocketAddr>,
}

impl<'a> Request<'a> {
    /// The method (always `GET` for a valid upgrade).
    pub fn method(&self) -> &str {
        self.req.method().as_str()
    }

    /// The path of the request target.
    pub fn path(&self) -> &str {
        self.req.uri().path()
    }

    /// The query of the request target, without the `?`.
    pub fn query(&self) -> Option<&str> {
        self.req.uri().query()
    }

    /// The request's headers.
    pub fn headers(&self) -> &HeaderMap {
        self.req.headers()
    }

    /// A header's value as text, if present and visible ASCII (the first
    /// one, if repeated).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.req.headers().get(name).and_then(|v| v.to_str().ok())
    }

    /// The peer's address (the proxy's, behind one).
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer
    }

    /// The subprotocols the client offers in `Sec-WebSocket-Protocol`, in
    /// its order of preference.
    pub fn protocols(&self) -> impl Iterator<Item = &str> {
        self.req
            .headers()
            .get_all(hyper::header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|p| !p.is_empty())
    }
}

/// An accepted upgrade: the connection's state, and the subprotocol chosen.
pub struct Accept<S> {
    pub(crate) state: S,
    pub(crate) protocol: Option<String>,
}

impl<S> Accept<S> {
    /// Accepts with `state` and no subprotocol.
    pub fn new(state: S) -> Self {
        Accept {
            state,
            protocol: None,
        }
    }

    /// Selects `protocol`, which must be one the client offered
    /// ([`Request::protocols`]); answered in `Sec-WebSocket-Protocol`.
    pub fn protocol(mut self, protocol: &str) -> Self {
        self.protocol = Some(protocol.to_owned());
        self
    }
}

/// A refused upgrade: the status and a one-line reason sent as the body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refuse {
    pub(crate) status: u16,
    pub(crate) reason: Cow<'static, str>,
}

impl Refuse {
    /// Refuses with `status` (a 4xx or 5xx code; anything else is answered
    /// as 500) and `reason`.
    pub fn new(status: u16, reason: impl Into<Cow<'static, str>>) -> Self {
        Refuse {
            status,
            reason: reason.into(),
        }
    }
}

/// Why a session ended other than by a clean close.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    pub(crate) code: u16,
    pub(crate) reason: Cow<'static, str>,
}

impl Error {
    /// The close code sent (or 1006 when the connection was lost).
    pub fn code(&self) -> u16 {
        self.code
    }

    /// What happened, in a line.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.reason, self.code)
    }
}

impl std::error::Error for Error {}

/// What became of a message given to [`Conn::send_text`] or
/// [`Conn::send_binary`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sent {
    /// Queued for sending, in order.
    Queued,
    /// Dropped: the connection already had `--max-backpressure` bytes
    /// queued and the policy is `drop`.
    Dropped,
    /// Not sent: the connection is closing (it had `--max-backpressure`
    /// bytes queued and the policy is `close`, or the handler closed it).
    Closing,
}

/// What a handler asked of its connection during a callback, carried out
/// by the session when the callback returns.
#[derive(Debug, Default)]
pub(crate) struct Requests {
    /// The callback panicked.
    pub panicked: bool,
    /// Answer the message with itself, framed where it lies.
    pub reply_in_place: bool,
    /// Close with this code and reason.
    pub close: Option<(u16, Cow<'static, str>)>,
    /// The backpressure cap was reached with the `close` policy.
    pub over_cap: bool,
    /// Messages dropped at the cap (the `drop` policy).
    pub dropped: u32,
    /// Messages sent.
    pub sent: u32,
    /// [`Conn::sender`] made the connection's mailbox.
    pub new_mailbox: Option<Arc<Mailbox>>,
    /// [`Conn::subscribe`] subscribed the connection to a topic.
    pub subscribed: bool,
}

/// How a connection's queued output is bounded.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Backpressure {
    /// `--max-backpressure`.
    pub cap: usize,
    /// `--backpressure-policy drop`.
    pub drop: bool,
}

impl Backpressure {
    pub(crate) fn of(config: &crate::config::Config) -> Self {
        Backpressure {
            cap: usize::try_from(config.max_backpressure).unwrap_or(usize::MAX),
            drop: config.backpressure_policy == crate::config::BackpressurePolicy::Drop,
        }
    }
}

/// A connection's place in its worker, for [`Conn`]: the worker's topics
/// and sessions, its key there, and the limits of what it may queue.
#[derive(Clone, Copy)]
pub(crate) struct Membership<'a> {
    pub topics: &'a LocalTopics,
    pub sessions: &'a LocalSessions,
    pub key: usize,
    /// `--max-backpressure` and its policy.
    pub limits: Backpressure,
    /// The worker's compressor, if the connection negotiated
    /// permessage-deflate: what the callback sends is compressed.
    pub deflate: Option<Codec<'a>>,
}

/// A connection, as a handler's callback sees it: its state, and the ways
/// to send and close. Valid for the callback only; to send later (from
/// another task or thread), see the README.
pub struct Conn<'a, S> {
    state: &'a mut S,
    /// Frames sent during this callback, written when it returns (a
    /// callback runs only when nothing else of its connection is being
    /// written).
    out: &'a mut BytesMut,
    /// The message being handled ([`Handler::message`] only).
    message: Option<Message<'a>>,
    peer: &'a dyn Fn() -> Option<SocketAddr>,
    limits: Backpressure,
    /// The connection's mailbox, if a [`Sender`] was made before.
    mailbox: Option<Arc<Mailbox>>,
    /// The worker's topics, and the connection's key in them.
    membership: Membership<'a>,
    requests: &'a mut Requests,
}

impl Requests {
    /// Nothing to carry out but, perhaps, the in-place reply (echo's case).
    pub fn only_reply(&self) -> bool {
        !self.panicked
            && self.close.is_none()
            && !self.over_cap
            && self.dropped == 0
            && self.sent == 0
            && self.new_mailbox.is_none()
            && !self.subscribed
    }
}

impl<'a, S> Conn<'a, S> {
    pub(crate) fn new(
        state: &'a mut S,
        out: &'a mut BytesMut,
        message: Option<Message<'a>>,
        peer: &'a dyn Fn() -> Option<SocketAddr>,
        mailbox: Option<Arc<Mailbox>>,
        membership: Membership<'a>,
        requests: &'a mut Requests,
    ) -> Self {
        Conn {
            state,
            out,
            message,
            peer,
            limits: membership.limits,
            mailbox,
            membership,
            requests,
        }
    }

    /// The connection's state.
    pub fn state(&mut self) -> &mut S {
        self.state
    }

    /// The peer's address (the proxy's, behind one).
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        (self.peer)()
    }

    /// Bytes queued for this connection and not yet written to its socket:
    /// what this callback sent, and what its senders posted.
    pub fn queued(&self) -> usize {
        let posted = self
            .mailbox
            .as_ref()
            .map_or(0, |m| m.queued.load(Ordering::Acquire));
        self.out.len() + posted
    }

    /// Sends a text message.
    pub fn send_text(&mut self, text: &str) -> Sent {
        self.send(0x1, text.as_bytes())
    }

    /// Sends a binary message.
    pub fn send_binary(&mut self, bytes: &[u8]) -> Sent {
        self.send(0x2, bytes)
    }

    /// A handle that sends to this connection from anywhere (another task,
    /// another thread, a runtime of the application's own), later: its
    /// messages go out in the order sent, after what the connection's
    /// callbacks sent before they arrive, through the worker's wake path.
    /// Sending never blocks; it fails once the connection is closed. The
    /// first call makes the connection's mailbox (one allocation); later
    /// calls clone it.
    pub fn sender(&mut self) -> Sender {
        if let Some(mailbox) = &self.mailbox {
            return Sender(mailbox.clone());
        }
        let m = self.membership;
        let origin = (m.topics.hub().clone(), m.topics.worker(), m.key);
        let mailbox = Arc::new(Mailbox::new(self.limits, origin));
        self.mailbox = Some(mailbox.clone());
        self.requests.new_mailbox = Some(mailbox.clone());
        Sender(mailbox)
    }

    /// Subscribes this connection to `topic`: from now on it receives what
    /// is published to it, from any connection, worker or thread, until it
    /// unsubscribes or closes. False if it already was.
    pub fn subscribe(&mut self, topic: &str) -> bool {
        let m = self.membership;
        let new = m
            .topics
            .subscribe(m.key, m.deflate.map(|c| c.agreed), topic);
        self.requests.subscribed |= new;
        new
    }

    /// Unsubscribes this connection from `topic`; false if it was not
    /// subscribed. (A closing connection leaves its topics by itself.)
    pub fn unsubscribe(&mut self, topic: &str) -> bool {
        let m = self.membership;
        m.topics.unsubscribe(m.key, topic)
    }

    /// Sends a text message to every connection subscribed to `topic` but
    /// this one, on every worker: framed once, its bytes shared by the
    /// subscribers. A subscriber that has `--max-backpressure` bytes queued
    /// meets `--backpressure-policy` (`ringws_backpressure_*` counts it);
    /// the publisher is never held back. To include this connection, send
    /// to it as well (or reply in place).
    pub fn publish_text(&mut self, topic: &str, text: &str) {
        self.publish(topic, 0x1, text.as_bytes());
    }

    /// Sends a binary message to every connection subscribed to `topic` but
    /// this one (see [`Conn::publish_text`]).
    pub fn publish_binary(&mut self, topic: &str, bytes: &[u8]) {
        self.publish(topic, 0x2, bytes);
    }

    fn publish(&mut self, topic: &str, opcode: u8, payload: &[u8]) {
        let m = self.membership;
        let frame = crate::pubsub::frame(opcode, payload);
        m.topics.publish(m.sessions, topic, frame, Some(m.key));
    }

    /// A handle that publishes to this server's topics from anywhere (any
    /// task or thread), to every subscriber, this connection included.
    pub fn publisher(&self) -> Publisher {
        Publisher(self.membership.topics.hub().clone())
    }

    /// Answers the message being handled with itself (echo): the reply is
    /// framed where the message lies in the read buffer and sent from there,
    /// without a copy, unless something was sent before it in this callback
    /// (then it is copied after that). Only in [`Handler::message`];
    /// elsewhere it does nothing.
    pub fn reply_in_place(&mut self) -> Sent {
        let Some(msg) = self.message else {
            return Sent::Dropped;
        };
        if self.out.is_empty() && !self.requests.reply_in_place {
            self.requests.reply_in_place = true;
            return Sent::Queued;
        }
        let opcode = if msg.is_text() { 0x1 } else { 0x2 };
        self.send(opcode, msg.as_bytes())
    }

    /// Closes the connection with `code` (1000, or 3000–4999 for the
    /// application's own) and `reason` (at most 123 bytes; longer is cut at
    /// a character boundary), after what was sent before.
    pub fn close(&mut self, code: u16, reason: impl Into<Cow<'static, str>>) {
        if self.requests.close.is_none() {
            self.requests.close = Some((code, cut_reason(reason.into())));
        }
    }

    fn send(&mut self, opcode: u8, payload: &[u8]) -> Sent {
        if self.requests.close.is_some() || self.requests.over_cap {
            return Sent::Closing;
        }
        if self.queued() > self.limits.cap {
            if self.limits.drop {
                self.requests.dropped += 1;
                return Sent::Dropped;
            }
            self.requests.over_cap = true;
            return Sent::Closing;
        }
        // The in-place reply goes first: it was asked for before this.
        if self.requests.reply_in_place
            && let Some(msg) = self.message
        {
            self.requests.reply_in_place = false;
            let code = if msg.is_text() { 0x1 } else { 0x2 };
            self.put(code, msg.as_bytes());
            self.requests.sent += 1;
        }
        self.put(opcode, payload);
        self.requests.sent += 1;
        Sent::Queued
    }

    /// Frames a message into the callback's output, compressed where the
    /// connection negotiated it and the message is worth it.
    fn put(&mut self, opcode: u8, payload: &[u8]) {
        put_message(self.membership.deflate, self.out, opcode, payload);
    }
}

/// A connection's mailbox: what [`Sender`]s queued for it, framed, and how
/// to wake its session.
#[derive(Debug)]
pub(crate) struct Mailbox {
    mail: Mutex<Mail>,
    /// `mail` has something for the session (checked without the lock).
    pending: AtomicBool,
    /// Bytes queued here plus those the session took and has not written:
    /// what `--max-backpressure` bounds.
    queued: AtomicUsize,
    limits: Backpressure,
    /// The topics' hub, and the connection's worker and key there.
    origin: (Arc<Hub>, usize, usize),
}

#[derive(Debug, Default)]
pub(crate) struct Mail {
    /// Frames sent, in order.
    pub bytes: BytesMut,
    /// A close asked for by a sender.
    pub close: Option<(u16, Cow<'static, str>)>,
    /// A send found the cap reached, policy `close`.
    pub over_cap: bool,
    /// Messages dropped at the cap, policy `drop`.
    pub dropped: u32,
    /// Messages queued.
    pub sent: u32,
    /// The session is over: nothing more is taken.
    closed: bool,
    /// The session's waker, registered when it waits.
    waker: Option<Waker>,
}

impl Mailbox {
    fn new(limits: Backpressure, origin: (Arc<Hub>, usize, usize)) -> Self {
        Mailbox {
            mail: Mutex::default(),
            pending: AtomicBool::new(false),
            queued: AtomicUsize::new(0),
            limits,
            origin,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Mail> {
        // A panic while holding the lock leaves the mail consistent (every
        // change under it is one assignment or one append).
        self.mail.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `f`'s frames, or applies the backpressure policy, and wakes
    /// the session.
    fn post(&self, f: impl FnOnce(&mut Mail)) -> Sent {
        let mut mail = self.lock();
        if mail.closed || mail.close.is_some() || mail.over_cap {
            return Sent::Closing;
        }
        let sent = if self.queued.load(Ordering::Acquire) > self.limits.cap {
            if self.limits.drop {
                mail.dropped += 1;
                Sent::Dropped
            } else {
                mail.over_cap = true;
                Sent::Closing
            }
        } else {
            let before = mail.bytes.len();
            f(&mut mail);
            self.queued
                .fetch_add(mail.bytes.len() - before, Ordering::AcqRel);
            Sent::Queued
        };
        self.pending.store(true, Ordering::Release);
        if let Some(waker) = &mail.waker {
            waker.wake_by_ref();
        }
        sent
    }

    /// The session takes what was posted (swapping in `empty`), if anything.
    pub(crate) fn take(&self, empty: BytesMut) -> Option<Mail> {
        if !self.pending.swap(false, Ordering::AcqRel) {
            return None;
        }
        let mut mail = self.lock();
        let bytes = std::mem::replace(&mut mail.bytes, empty);
        Some(Mail {
            bytes,
            close: mail.close.take(),
            over_cap: std::mem::take(&mut mail.over_cap),
            dropped: std::mem::take(&mut mail.dropped),
            sent: std::mem::take(&mut mail.sent),
            closed: false,
            waker: None,
        })
    }

    /// The session will wait: posts wake `waker`. True if something was
    /// posted meanwhile (the session takes it instead of waiting).
    pub(crate) fn register(&self, waker: &Waker) -> bool {
        let mut mail = self.lock();
        if !mail.waker.as_ref().is_some_and(|w| w.will_wake(waker)) {
            mail.waker = Some(waker.clone());
        }
        self.pending.load(Ordering::Acquire)
    }

    /// A send found the cap reached with the `close` policy.
    pub(crate) fn over_cap(&self) -> bool {
        self.lock().over_cap
    }

    /// The session wrote `bytes` of what it took.
    pub(crate) fn written(&self, bytes: usize) {
        self.queued.fetch_sub(bytes, Ordering::AcqRel);
    }

    /// The session is over: senders get [`Sent::Closing`] from now on.
    pub(crate) fn close(&self) {
        let mut mail = self.lock();
        mail.closed = true;
        mail.waker = None;
        mail.bytes = BytesMut::new();
    }
}

/// Sends to one connection from any thread or task (see [`Conn::sender`]).
/// Cheap to clone; holding one keeps only the connection's mailbox alive,
/// not the connection.
#[derive(Clone, Debug)]
pub struct Sender(Arc<Mailbox>);

impl Sender {
    /// Sends a text message.
    pub fn send_text(&self, text: &str) -> Sent {
        self.0.post(|mail| {
            put_frame(&mut mail.bytes, 0x1, text.as_bytes());
            mail.sent += 1;
        })
    }

    /// Sends a binary message.
    pub fn send_binary(&self, bytes: &[u8]) -> Sent {
        self.0.post(|mail| {
            put_frame(&mut mail.bytes, 0x2, bytes);
            mail.sent += 1;
        })
    }

    /// Closes the connection with `code` and `reason` after what was sent
    /// before (see [`Conn::close`]).
    pub fn close(&self, code: u16, reason: impl Into<Cow<'static, str>>) {
        let reason = cut_reason(reason.into());
        self.0.post(|mail| mail.close = Some((code, reason)));
    }

    /// Sends a text message to every connection subscribed to `topic` but
    /// this sender's (see [`Conn::publish_text`]), in order with what this
    /// sender published before.
    pub fn publish_text(&self, topic: &str, text: &str) {
        self.publish(topic, pubsub::frame(0x1, text.as_bytes()));
    }

    /// Sends a binary message to every connection subscribed to `topic` but
    /// this sender's (see [`Sender::publish_text`]).
    pub fn publish_binary(&self, topic: &str, bytes: &[u8]) {
        self.publish(topic, pubsub::frame(0x2, bytes));
    }

    fn publish(&self, topic: &str, frame: pubsub::Frame) {
        let (hub, worker, key) = &self.0.origin;
        // Once the connection is closed, its key may be another's.
        let except = (!self.is_closed()).then_some((*worker, *key));
        hub.publish(topic, frame, except);
    }

    /// True once the connection is closed or closing.
    pub fn is_closed(&self) -> bool {
        let mail = self.0.lock();
        mail.closed || mail.close.is_some() || mail.over_cap
    }
}

/// A close reason cut to the 123 bytes a Close frame holds, at a character
/// boundary.
fn cut_reason(mut reason: Cow<'static, str>) -> Cow<'static, str> {
    if reason.len() > 123 {
        let mut end = 123;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason = Cow::Owned(reason[..end].to_owned());
    }
    reason
}

/// The echo server: every message is answered with itself, from where it
/// lies in the read buffer. Accepts every upgrade.
#[derive(Clone, Copy, Debug, Default)]
pub struct Echo;

impl Handler for Echo {
    type State = ();

    fn upgrade(&self, _req: &Request<'_>) -> Result<Accept<()>, Refuse> {
        Ok(Accept::new(()))
    }

    fn message(&self, conn: &mut Conn<'_, ()>, _msg: Message<'_>) {
        conn.reply_in_place();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn<'a>(
        state: &'a mut u8,
        out: &'a mut BytesMut,
        requests: &'a mut Requests,
        cap: usize,
        drop: bool,
    ) -> Conn<'a, u8> {
        Conn::new(
            state,
            out,
            Some(Message::Text("hi")),
            &|| None,
            None,
            Membership {
                // Leaked: a test's few bytes, for the connection's lifetime.
                topics: Box::leak(Box::new(crate::pubsub::LocalTopics::new(
                    0,
                    Arc::new(Hub::new(1)),
                    cap,
                    drop,
                    Arc::default(),
                    std::rc::Rc::default(),
                ))),
                sessions: Box::leak(Box::default()),
                key: 0,
                limits: Backpressure { cap, drop },
                deflate: None,
            },
            requests,
        )
    }

    #[test]
    fn frames_use_the_shortest_length_encoding() {
        for (len, head) in [(0, 2), (125, 2), (126, 4), (65535, 4), (65536, 10)] {
            let mut out = BytesMut::new();
            put_frame(&mut out, 0x2, &vec![7; len]);
            assert_eq!(out.len(), head + len, "{len}");
            assert_eq!(out[0], 0x82);
        }
    }

    #[test]
    fn an_in_place_reply_keeps_its_place_before_later_sends() {
        let (mut state, mut out, mut req) = (0, BytesMut::new(), Requests::default());
        let mut c = conn(&mut state, &mut out, &mut req, 1 << 20, false);
        assert_eq!(c.reply_in_place(), Sent::Queued);
        assert_eq!(c.queued(), 0, "in place: nothing copied");
        assert_eq!(c.send_text("x"), Sent::Queued);
        assert!(!req.reply_in_place, "copied, ahead of the later send");
        assert_eq!(&out[..], b"\x81\x02hi\x81\x01x");
    }

    #[test]
    fn the_cap_drops_or_closes() {
        let (mut state, mut out, mut req) = (0, BytesMut::new(), Requests::default());
        let mut c = conn(&mut state, &mut out, &mut req, 4, true);
        assert_eq!(c.send_binary(b"abcd"), Sent::Queued);
        assert_eq!(c.send_binary(b"e"), Sent::Dropped);
        assert_eq!(req.dropped, 1);
        let (mut state, mut out, mut req) = (0, BytesMut::new(), Requests::default());
        let mut c = conn(&mut state, &mut out, &mut req, 4, false);
        assert_eq!(c.send_binary(b"abcd"), Sent::Queued);
        assert_eq!(c.send_binary(b"e"), Sent::Closing);
        assert_eq!(c.send_binary(b"f"), Sent::Closing);
        assert!(req.over_cap);
    }

    #[test]
    fn a_long_close_reason_is_cut_at_a_character_boundary() {
        let (mut state, mut out, mut req) = (0, BytesMut::new(), Requests::default());
        let mut c = conn(&mut state, &mut out, &mut req, 4, false);
        c.close(4000, "é".repeat(70));
        let (code, reason) = req.close.unwrap();
        assert_eq!(code, 4000);
        assert_eq!(reason.len(), 122);
    }
}
