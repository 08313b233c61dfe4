//! A WebSocket session (RFC 6455), on fastwebsockets' frame codec: the
//! protocol engine that hands whole messages to the application's
//! [`Handler`] and writes what it sends.
//!
//! A message in one frame is parsed where it lies in the read buffer, its
//! payload unmasked in place, and lent to the handler there. A fragmented
//! message is checked as it arrives (continuations must follow a started
//! message, the UTF-8 of text is validated across fragments, fail-fast, the
//! total is bounded by `--max-message-size`), joined into a boxed buffer
//! charged to the worker's budget of buffered bytes, and handed over whole.
//!
//! Echo ([`crate::Echo`]) answers with `Conn::reply_in_place`: the reply's
//! header is written over the end of the request's (it is never longer: same
//! length, no mask) and the reply sent from the read buffer in one write,
//! whatever its size, so a steady echo neither allocates nor copies. What a
//! handler sends is framed into a pooled buffer and written when its
//! callback returns; what its `Sender`s post waits in the connection's
//! mailbox until the session is not writing. While anything is being written
//! the session reads nothing more.
//!
//! Failures are answered with a Close frame before TCP is closed: 1002 for
//! protocol errors, 1007 for invalid UTF-8, 1009 for oversize messages,
//! 1001 when the server drains or the peer stopped answering pings, 1013
//! when the worker's budget of buffered bytes stays spent and this session's
//! incomplete frame is the oldest (or a fragmented message finds no room),
//! 1008 for a frame arriving slower than `--min-message-rate` or a queue
//! past `--max-backpressure`, 1011 when a handler callback panicked.
//!
//! The read buffer is charged to the worker's share of
//! `--max-buffered-bytes` while the session holds it, and a frame longer
//! than the buffer is charged whole before the buffer grows for it
//! (`crate::budget`); a session refused waits unread.
//!
//! The session is a hand-written future ([`Session`]) rather than an `async`
//! loop, because its size is most of what an idle connection costs: it holds
//! the codec, at most one outgoing buffer, the handler's state and a few
//! flags, and no read future, timer or notification (see
//! `sessions::LocalSessions`).
//!
//! This module never knows which I/O backend it runs on.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use std::time::Duration;

use std::borrow::Cow;

use bytes::{Buf, BytesMut};
use fastwebsockets::{CloseCode, Frame, InPlace, OpCode, Payload, Role, WebSocket, WebSocketError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::sessions::Tick;

use crate::context::{SessionSlot, Worker};
use crate::deflate::{Agreed, Codec, InflateError, RSV1, put_message};
use crate::dispatch::{Link, call, guard};
use crate::handler::{Handler, Mailbox, Message, Requests};
use crate::io::Stream;
use crate::metrics::WorkerMetrics;
use crate::pubsub::Taken;
use crate::utf8::Utf8Stream;

/// How a session's loop ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// The peer sent Close (with this code, if any): answer it and close.
    Reply(Option<u16>),
    /// We close with this code and reason, then wait for the peer.
    Close(u16, Cow<'static, str>),
    /// The handler closes with this code and reason (no error).
    Closed(u16, Cow<'static, str>),
    /// The connection is gone (EOF or I/O error): nothing to send.
    Gone,
}

impl From<WebSocketError> for End {
    fn from(e: WebSocketError) -> End {
        use WebSocketError as E;
        match e {
            E::IoError(_) | E::UnexpectedEOF | E::ConnectionClosed => End::Gone,
            E::InvalidUTF8 => fail(1007, "text is not valid UTF-8"),
            E::FrameTooLarge => fail(1009, "message exceeds --max-message-size"),
            E::ReservedBitsNotZero => fail(1002, "reserved bits set without an extension"),
            E::ControlFrameFragmented => fail(1002, "fragmented control frame"),
            E::PingFrameTooLarge => fail(1002, "control frame payload over 125 bytes"),
            E::InvalidValue => fail(1002, "unknown opcode"),
            _ => fail(1002, "protocol error"),
        }
    }
}

const fn fail(code: u16, reason: &'static str) -> End {
    End::Close(code, Cow::Borrowed(reason))
}

/// The server drains: Close 1001, not an error of the session.
const fn draining() -> End {
    End::Closed(1001, Cow::Borrowed("server is draining"))
}

/// The session outlived `--max-lifetime`: Close 1001, as on drain.
const fn expired() -> End {
    End::Closed(1001, Cow::Borrowed("connection lifetime reached"))
}

/// Frames handled per poll before the session yields to the other sessions
/// of its worker (the io_uring stream does not take part in tokio's budget).
const FRAMES_PER_POLL: u32 = 32;

/// The window of `--min-message-rate`: a session buffering an incomplete
/// frame must receive that rate's worth of it in every such window after
/// the first (checked by [`Tick::PROGRESS`], which the worker sends this
/// often).
pub const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// Room kept past a large frame for the next frame's header, so that the
/// read which completes the frame can bring it too (fastwebsockets reads
/// ahead this much).
const NEXT_HEADER: usize = 14;

/// Bytes in KiB, rounded up (what a session's charge is counted in).
fn kib(bytes: usize) -> u32 {
    u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX)
}

/// A session's booleans, in one byte: an idle connection costs the
/// session's size, which must stay in mimalloc's 224-byte class.
#[derive(Clone, Copy, Debug, Default)]
struct Flags(u16);

impl Flags {
    /// Heard from the peer since the last idle tick.
    const HEARD: u16 = 1;
    /// Pinged after a silent idle period, not answered yet.
    const PINGED: u16 = 2;
    /// May keep its empty read buffer between messages until the worker
    /// reclaims it (`LocalSessions::try_hold`).
    const HOLDS: u16 = 4;
    /// Buffers an incomplete frame (recorded in the session table).
    const PARTIAL: u16 = 8;
    /// Refused by the worker's budget of buffered bytes; not reading.
    const WAITING: u16 = 16;
    /// What the handler queued had to wait for the peer: tell it when sent.
    const BACKLOGGED: u16 = 32;
    /// The handler has been told the session is over, or panicked: no more
    /// callbacks.
    const DONE: u16 = 64;
    /// The handler's `open` has run.
    const OPENED: u16 = 128;
    /// A `Sender` was made: the session has a mailbox in its worker's map.
    const MAILBOX: u16 = 256;
    /// Outlived `--max-lifetime` while a write waited: closes once it is done.
    const EXPIRED: u16 = 512;
    /// Subscribed to a topic: may have published messages queued in its
    /// worker's topics.
    const SUBSCRIBED: u16 = 1024;
    /// permessage-deflate was negotiated (`crate::deflate`).
    const DEFLATE: u16 = 2048;
    /// ... with a narrow window for what the server compresses.
    const DEFLATE_NARROW: u16 = 4096;
    /// ... keeping context: the session has a window in its worker's
    /// deflater (`crate::deflate`).
    const DEFLATE_TAKEOVER: u16 = 8192;

    fn has(self, flag: u16) -> bool {
        self.0 & flag != 0
    }

    fn set(&mut self, flag: u16, on: bool) {
        if on {
            self.0 |= flag;
        } else {
            self.0 &= !flag;
        }
    }

    /// Clears `flag`; true if it was set.
    fn take(&mut self, flag: u16) -> bool {
        let had = self.has(flag);
        self.set(flag, false);
        had
    }
}

/// A WebSocket session: its loop, then the closing handshake. It is
/// the whole future of the session's task.
///
/// An idle connection costs what this struct costs, so it is kept small: no
/// read future (reads are poll-based and keep their state in the read
/// buffer, which an idle session gives back to the pool), one outgoing frame
/// at a time, no timers (the worker's session table delivers drain and idle
/// ticks through the waker), and the closing phase boxed.
pub struct Session<S, H: Handler> {
    /// The connection while the loop runs, then the closing handshake.
    ws: Phase<S>,
    /// The session's place in `--max-connections` and its worker's table.
    slot: SessionSlot<H>,
    /// The bytes being written, if any.
    out: Option<Outgoing>,
    /// A fragmented message in progress (boxed: rare, and an idle session
    /// costs its size).
    message: Option<Box<Fragmented>>,
    /// The handler's state for this connection.
    state: H::State,
    /// KiB of the worker's budget of buffered bytes charged for the read
    /// buffer this session holds (`crate::budget`).
    charged: u32,
    flags: Flags,
}

/// A session's connection: the codec while the loop runs, then the closing
/// handshake, which owns it (one field for both: an idle connection costs
/// the session's size).
enum Phase<S> {
    Open(WebSocket<S>),
    Closing(Pin<Box<dyn Future<Output = ()>>>),
}

impl<S> Phase<S> {
    #[inline(always)]
    fn as_mut(&mut self) -> Option<&mut WebSocket<S>> {
        match self {
            Phase::Open(ws) => Some(ws),
            Phase::Closing(_) => None,
        }
    }

    #[inline(always)]
    fn as_ref(&self) -> Option<&WebSocket<S>> {
        match self {
            Phase::Open(ws) => Some(ws),
            Phase::Closing(_) => None,
        }
    }
}

/// A fragmented message in progress, joined here from its fragments (the
/// handler sees messages whole); the bytes are charged to the worker's
/// budget of buffered bytes.
#[derive(Debug)]
struct Fragmented {
    text: bool,
    /// Compressed (permessage-deflate): `data` is inflated once whole, and
    /// its UTF-8 checked then.
    compressed: bool,
    utf8: Utf8Stream,
    data: Vec<u8>,
    /// Bytes of the worker's budget charged for `data`: its capacity.
    charged: usize,
}

/// What a session is writing: one thing at a time, and nothing is read
/// meanwhile (backpressure).
#[derive(Debug)]
enum Source {
    /// A reply framed in place in the read buffer (echo or pong): the frame
    /// answered is still at the front of the read buffer, its reply at
    /// `reply_range()`, and is consumed once the reply is written.
    Reply(InPlace),
    /// The session's own ping.
    Ping,
    /// What the handler sent, framed in a buffer from the worker's pool.
    Queued(BytesMut),
    /// What `Sender`s sent, taken from the session's mailbox.
    Mail(BytesMut),
    /// Published messages for this subscriber, copied from their shared
    /// frames into a buffer from the pool.
    Published(BytesMut),
    /// One large published message, written from its shared frame.
    Shared(crate::pubsub::Frame),
}

/// Bytes on their way out.
#[derive(Debug)]
struct Outgoing {
    source: Source,
    written: usize,
    /// `written` at the last write-stall tick, or [`NOT_MARKED`] before the
    /// first.
    stall_mark: usize,
}

/// No write-stall tick yet: `written` counts the bytes of one frame held in
/// memory, so it never reaches this.
const NOT_MARKED: usize = usize::MAX;

/// Most bytes of a handler's queue given to the stream in one write.
const WRITE_CHUNK: usize = 64 << 10;

/// The session's own ping: empty payload.
const PING: [u8; 2] = [0x89, 0x00];

impl Outgoing {
    fn new(source: Source) -> Outgoing {
        Outgoing {
            source,
            written: 0,
            stall_mark: NOT_MARKED,
        }
    }

    /// A reply to `frame` with `fin` and `opcode`, framed in its bytes.
    fn reply<S>(ws: &mut WebSocket<S>, frame: InPlace, fin: bool, opcode: OpCode) -> Outgoing {
        ws.frame_reply_in_place(&frame, fin, opcode);
        Outgoing::new(Source::Reply(frame))
    }

    /// A ping of the session's own (idle check).
    fn ping() -> Outgoing {
        Outgoing::new(Source::Ping)
    }

    /// A write-stall tick came while this frame was pending: true if none
    /// of its bytes were written since the previous one.
    fn stall_tick(&mut self) -> bool {
        let stalled = self.stall_mark == self.written;
        self.stall_mark = self.written;
        stalled
    }

    /// Writes what is left.
    fn poll_write<S: Stream>(
        &mut self,
        ws: &mut WebSocket<S>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        let (io, buffer) = ws.stream_and_buffer();
        let bytes = match &self.source {
            Source::Reply(frame) => &buffer[frame.reply_range()],
            Source::Ping => &PING[..],
            Source::Queued(buf) | Source::Mail(buf) | Source::Published(buf) => &buf[..],
            Source::Shared(frame) => &frame[..],
        };
        // What the handler queued is written in chunks: the io_uring adapter
        // takes any write whole into a buffer of its own (and stops taking
        // more past 64 KiB staged), so a chunk bounds what it holds beside
        // the queue, and a queue it cannot take at once waits here, where
        // `drained` can tell.
        let chunk = match self.source {
            Source::Queued(_) | Source::Mail(_) | Source::Shared(_) => WRITE_CHUNK,
            _ => usize::MAX,
        };
        while self.written < bytes.len() {
            let end = bytes.len().min(self.written.saturating_add(chunk));
            let n = ready!(Pin::new(&mut *io).poll_write(cx, &bytes[self.written..end]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        Poll::Ready(Ok(()))
    }

    /// Written: consumes the frame it answers, returns a queue's buffer to
    /// the pool, tells the topics what a subscriber (`key`) wrote, and
    /// counts an echo.
    fn finish<S, H: Handler>(self, ws: &mut WebSocket<S>, worker: &Worker<H>, key: usize) {
        match self.source {
            Source::Reply(frame) => {
                if matches!(
                    frame.opcode,
                    OpCode::Text | OpCode::Binary | OpCode::Continuation
                ) {
                    let m = &worker.metrics;
                    m.frames_out.add(1);
                    m.bytes_out.add(frame.payload_len() as u64);
                }
                ws.consume(&frame);
            }
            Source::Ping => {}
            Source::Queued(mut buf) | Source::Mail(mut buf) => {
                worker.metrics.bytes_out.add(buf.len() as u64);
                buf.clear();
                worker.buffers.give(buf);
            }
            Source::Published(mut buf) => {
                worker.metrics.bytes_out.add(buf.len() as u64);
                worker.topics.written(key, buf.len());
                buf.clear();
                worker.buffers.give(buf);
            }
            Source::Shared(frame) => {
                worker.metrics.bytes_out.add(frame.len() as u64);
                worker.topics.written(key, frame.len());
            }
        }
    }

    /// What the handler or its senders queued (as opposed to a reply).
    fn is_queue(&self) -> bool {
        matches!(self.source, Source::Queued(_) | Source::Mail(_))
    }

    /// The bytes not written yet of what the handler queued (sent before a
    /// Close the session ends with).
    fn unsent(self) -> Option<BytesMut> {
        match self.source {
            Source::Queued(mut buf) | Source::Mail(mut buf) | Source::Published(mut buf)
                if self.written < buf.len() =>
            {
                buf.advance(self.written);
                Some(buf)
            }
            Source::Shared(frame) if self.written < frame.len() => {
                Some(BytesMut::from(&frame[self.written..]))
            }
            _ => None,
        }
    }
}

impl<S: Stream, H: Handler> Session<S, H> {
    /// The session on an upgraded connection: `read_ahead` holds bytes read
    /// past the upgrade request, parsed before the socket is read.
    pub fn new(
        io: S,
        read_ahead: &[u8],
        slot: SessionSlot<H>,
        state: H::State,
        deflate: Option<Agreed>,
    ) -> Self {
        let worker = slot.worker();
        let mut ws = WebSocket::after_handshake(io, Role::Server);
        // A new session has just been heard (its upgrade): the first idle
        // tick, which may come a moment later, must not ping it.
        let mut flags = Flags(Flags::HEARD);
        if let Some(agreed) = deflate {
            ws.set_rsv1_allowed(true);
            flags.set(Flags::DEFLATE, true);
            flags.set(Flags::DEFLATE_NARROW, agreed.narrow);
            flags.set(Flags::DEFLATE_TAKEOVER, agreed.takeover);
        }
        // Pings and closes are answered here, so that reading a frame never
        // writes and can stop at any point (drain, idle ticks).
        ws.set_auto_close(false);
        ws.set_auto_pong(false);
        // fastwebsockets rejects frames of `>= max_message_size` bytes.
        let max = worker.shared.config.max_message_size;
        ws.set_max_message_size(max.saturating_add(1));
        let mut charged = 0;
        if !read_ahead.is_empty() {
            let buf = ws.read_buffer_mut();
            *buf = worker.buffers.take();
            buf.extend_from_slice(read_ahead);
            // Already read: charged whatever the budget has left.
            charged = kib(buf.capacity());
            worker.budget.force(charged as usize * 1024);
        }
        tracing::debug!(key = slot.key(), "session started");
        Session {
            ws: Phase::Open(ws),
            slot,
            out: None,
            message: None,
            state,
            charged,
            flags,
        }
    }

    /// permessage-deflate, if negotiated.
    fn deflate(&self) -> Option<Agreed> {
        self.flags.has(Flags::DEFLATE).then(|| Agreed {
            narrow: self.flags.has(Flags::DEFLATE_NARROW),
            takeover: self.flags.has(Flags::DEFLATE_TAKEOVER),
        })
    }

    /// How this session's messages are framed: compressed through its
    /// worker's deflater, if negotiated.
    fn codec<'w>(&self, worker: &'w Worker<H>) -> Option<Codec<'w>> {
        self.deflate().map(|agreed| Codec {
            deflater: &worker.deflater,
            agreed,
            key: self.slot.key(),
        })
    }

    /// Carries out what a callback asked for: queue what it sent, close.
    #[inline(always)]
    fn after_call(&mut self, requests: Requests, sent: Option<BytesMut>) -> Result<(), End> {
        if sent.is_none() && requests.only_reply() {
            // Nothing to drop either: `only_reply` means no close reason
            // and no mailbox.
            std::mem::forget(requests);
            return Ok(());
        }
        self.apply(requests, sent)
    }

    #[cold]
    #[inline(never)]
    fn apply(&mut self, requests: Requests, sent: Option<BytesMut>) -> Result<(), End> {
        let worker = self.slot.worker();
        if requests.panicked {
            self.flags.set(Flags::DONE, true);
            worker.metrics.handler_panics.add(1);
            tracing::error!(
                key = self.slot.key(),
                "handler panicked: closing its connection with 1011"
            );
            return Err(fail(1011, "internal error"));
        }
        if requests.dropped > 0 {
            let m = &worker.metrics;
            m.backpressure_drops.add(u64::from(requests.dropped));
        }
        worker.metrics.frames_out.add(u64::from(requests.sent));
        if requests.subscribed {
            self.flags.set(Flags::SUBSCRIBED, true);
        }
        if let Some(mailbox) = requests.new_mailbox {
            worker
                .mailboxes
                .borrow_mut()
                .insert(self.slot.key(), mailbox);
            self.flags.set(Flags::MAILBOX, true);
        }
        if let Some(buf) = sent {
            debug_assert!(self.out.is_none(), "callbacks run with nothing queued");
            self.out = Some(Outgoing::new(Source::Queued(buf)));
        }
        asked_end(requests.over_cap, requests.close, &worker.metrics)
    }

    /// Handles one frame, parsed in place in the read buffer: `Ok(())` to
    /// go on (perhaps with a reply to send, which consumes the frame once
    /// written), `Err(end)` to close.
    fn on_frame(&mut self, frame: InPlace) -> Result<(), End> {
        self.flags.set(Flags::HEARD, true);
        // fastwebsockets unmasks in place and reports whether the frame
        // was masked: an unmasked frame here is one the client sent so.
        if !frame.masked {
            return Err(fail(1002, "client frames must be masked"));
        }
        let worker = self.slot.worker();
        let ws = self.ws.as_mut().expect("not done");
        match frame.opcode {
            OpCode::Text | OpCode::Binary | OpCode::Continuation => {
                let m = &worker.metrics;
                m.frames_in.add(1);
                m.bytes_in.add(frame.payload_len() as u64);
                if frame.rsv1 && frame.opcode == OpCode::Continuation {
                    return Err(fail(1002, "RSV1 on a continuation frame"));
                }
                if frame.fin && frame.opcode != OpCode::Continuation && self.message.is_none() {
                    if frame.rsv1 {
                        return self.on_compressed(frame);
                    }
                    return self.on_message(frame);
                }
                return self.on_fragment(frame);
            }
            OpCode::Ping => {
                self.out = Some(Outgoing::reply(ws, frame, true, OpCode::Pong));
            }
            OpCode::Pong => ws.consume(&frame),
            OpCode::Close => {
                let payload = ws.payload(&frame);
                let end = peer_close(payload);
                if let End::Reply(code) = end {
                    let reason = std::str::from_utf8(payload.get(2..).unwrap_or(&[])).unwrap_or("");
                    let worker = self.slot.worker().clone();
                    self.flags.set(Flags::DONE, true);
                    let state = &mut self.state;
                    guard(&worker, || {
                        worker.handler.close(state, code.unwrap_or(1005), reason)
                    });
                }
                return Err(end);
            }
        }
        Ok(())
    }

    /// A message in one frame: to the handler where it lies, and answered
    /// in place if the handler asks so.
    fn on_message(&mut self, frame: InPlace) -> Result<(), End> {
        let mailbox = self.mailbox();
        let ws = self.ws.as_ref().expect("not done");
        let payload = ws.payload(&frame);
        let msg = message_of(frame.opcode == OpCode::Text, payload)?;
        let link = Link {
            stream: ws.stream(),
            mailbox,
            deflate: self.deflate(),
        };
        let (requests, sent) = call_message(&self.slot, &mut self.state, link, msg);
        let ws = self.ws.as_mut().expect("not done");
        if requests.reply_in_place && !requests.panicked {
            self.out = Some(Outgoing::reply(ws, frame, true, frame.opcode));
        } else {
            ws.consume(&frame);
        }
        self.after_call(requests, sent)
    }

    /// A compressed message in one frame: inflated by the worker's inflater
    /// for the handler. An in-place reply sends the compressed bytes back
    /// as they came, with RSV1 (each message of the client stands alone:
    /// `client_no_context_takeover`), unless this server agreed to
    /// compress with a narrower window than the client may have used.
    fn on_compressed(&mut self, frame: InPlace) -> Result<(), End> {
        let worker = self.slot.worker().clone();
        let max = worker.shared.config.max_message_size;
        let ws = self.ws.as_ref().expect("not done");
        let data = inflate(&worker, ws.payload(&frame), max)?;
        let text = frame.opcode == OpCode::Text;
        let result = self
            .call_inflated(text, &data)
            .map(|(mut requests, mut sent)| {
                let ws = self.ws.as_mut().expect("not done");
                if !requests.reply_in_place || requests.panicked {
                    ws.consume(&frame);
                } else if self.flags.has(Flags::DEFLATE_NARROW) {
                    ws.consume(&frame);
                    self.put_reply(&worker, &mut sent, text, &data);
                    requests.sent += 1;
                } else {
                    let out = Outgoing::reply(ws, frame, true, frame.opcode);
                    ws.read_buffer_mut()[frame.reply_range().start] |= RSV1;
                    self.out = Some(out);
                    if let Some(agreed) = self.deflate() {
                        let key = self.slot.key();
                        worker.deflater.borrow_mut().remember(key, agreed, &data);
                    }
                }
                (requests, sent)
            });
        worker.inflater.borrow_mut().give(data);
        let (requests, sent) = result?;
        self.after_call(requests, sent)
    }

    /// Calls the handler with an inflated message (or a joined one).
    fn call_inflated(
        &mut self,
        text: bool,
        data: &[u8],
    ) -> Result<(Requests, Option<BytesMut>), End> {
        let msg = message_of(text, data)?;
        let link = Link {
            stream: self.ws.as_ref().expect("not done").stream(),
            mailbox: self.mailbox(),
            deflate: self.deflate(),
        };
        Ok(call_message(&self.slot, &mut self.state, link, msg))
    }

    /// Frames a copy of the message answered in place into `sent`,
    /// compressed if the connection negotiated it.
    fn put_reply(&self, worker: &Worker<H>, sent: &mut Option<BytesMut>, text: bool, data: &[u8]) {
        let buf = sent.get_or_insert_with(|| worker.buffers.take());
        let opcode = if text { 0x1 } else { 0x2 };
        put_message(self.codec(worker), buf, opcode, data);
    }

    /// A fragment: joined to its message, which goes to the handler once
    /// whole (an in-place reply is then framed from the joined copy).
    fn on_fragment(&mut self, frame: InPlace) -> Result<(), End> {
        let worker = self.slot.worker().clone();
        let max = worker.shared.config.max_message_size;
        let ws = self.ws.as_mut().expect("not done");
        let whole = join(&mut self.message, max, &frame, ws.payload(&frame), &worker)?;
        ws.consume(&frame);
        if !whole {
            return Ok(());
        }
        let message = self.message.take().expect("joined");
        worker.budget.release(message.charged);
        let inflated = if message.compressed {
            Some(inflate(&worker, &message.data, max)?)
        } else {
            None
        };
        let data = inflated.as_deref().unwrap_or(&message.data);
        let result = self.call_inflated(message.text, data);
        let result = result.map(|(mut requests, mut sent)| {
            if requests.reply_in_place && !requests.panicked {
                self.put_reply(&worker, &mut sent, message.text, data);
                requests.sent += 1;
            }
            (requests, sent)
        });
        if let Some(data) = inflated {
            worker.inflater.borrow_mut().give(data);
        }
        let (requests, sent) = result?;
        self.after_call(requests, sent)
    }

    /// Takes what the session's senders posted, if anything: their frames
    /// to write next, and a close they asked for.
    fn take_mail(&mut self) -> Result<(), End> {
        let Some(mailbox) = self.mailbox() else {
            return Ok(());
        };
        let worker = self.slot.worker();
        let Some(mail) = mailbox.take(worker.buffers.take()) else {
            return Ok(());
        };
        let m = &worker.metrics;
        m.frames_out.add(u64::from(mail.sent));
        m.backpressure_drops.add(u64::from(mail.dropped));
        if mail.bytes.is_empty() {
            worker.buffers.give(mail.bytes);
        } else if let Some(agreed) = self.deflate() {
            // Senders frame on their own threads; compression happens here,
            // with the worker's compressor. What it saved is no longer
            // queued.
            let mut out = worker.buffers.take();
            worker
                .deflater
                .borrow_mut()
                .put_frames(&mail.bytes, &mut out, agreed, self.slot.key());
            mailbox.written(mail.bytes.len() - out.len().min(mail.bytes.len()));
            let mut bytes = mail.bytes;
            bytes.clear();
            worker.buffers.give(bytes);
            self.out = Some(Outgoing::new(Source::Mail(out)));
        } else {
            self.out = Some(Outgoing::new(Source::Mail(mail.bytes)));
        }
        asked_end(mail.over_cap, mail.close, m)
    }

    /// Takes the published messages queued for this subscriber, if any, to
    /// write next; closes with 1008 if its queue reached the cap with the
    /// `close` policy.
    fn take_published(&mut self) -> Result<(), End> {
        let worker = self.slot.worker();
        let m = &worker.metrics;
        let Ok(taken) = worker.topics.take(self.slot.key(), &worker.buffers) else {
            m.backpressure_closes.add(1);
            return Err(fail(1008, "outgoing queue over --max-backpressure"));
        };
        if taken.is_some() && self.flags.has(Flags::DEFLATE_TAKEOVER) {
            // Published messages are compressed once for every subscriber,
            // each on its own: after them, the window is not what it was.
            worker.deflater.borrow_mut().forget(self.slot.key());
        }
        self.out = taken.map(|taken| {
            Outgoing::new(match taken {
                Taken::Copied(buf, frames) => {
                    m.frames_out.add(u64::from(frames));
                    Source::Published(buf)
                }
                Taken::Shared(frame) => {
                    m.frames_out.add(1);
                    Source::Shared(frame)
                }
            })
        });
        Ok(())
    }

    /// Waits for the next wake: the worker's ticks and, with a mailbox, a
    /// sender's post. False if something was posted meanwhile (take it
    /// instead of waiting).
    #[inline(always)]
    fn park(&self, cx: &Context<'_>) -> bool {
        let key = self.slot.key();
        let worker = self.slot.worker();
        worker.sessions.park(key, cx);
        if !self.flags.has(Flags::MAILBOX) {
            return true;
        }
        match self.mailbox() {
            Some(mailbox) => !mailbox.register(cx.waker()),
            None => true,
        }
    }

    /// Tells the handler the session is over (once): `error` first unless it
    /// ended cleanly, then `close`.
    fn notify_end(&mut self, end: &End) {
        if self.flags.has(Flags::DONE) || !self.flags.has(Flags::OPENED) {
            return;
        }
        self.flags.set(Flags::DONE, true);
        let (code, reason, error) = match end {
            End::Reply(code) => (code.unwrap_or(1005), "", false),
            End::Close(code, reason) => (*code, &**reason, true),
            End::Closed(code, reason) => (*code, &**reason, false),
            End::Gone => (1006, "connection lost", true),
        };
        let worker = self.slot.worker().clone();
        let state = &mut self.state;
        if error {
            let e = crate::handler::Error {
                code,
                reason: Cow::Owned(reason.to_owned()),
            };
            guard(&worker, || worker.handler.error(state, &e));
        }
        guard(&worker, || worker.handler.close(state, code, reason));
    }

    /// The handler's `open`, before the session's first frame.
    fn open(&mut self) -> Result<(), End> {
        self.flags.set(Flags::OPENED, true);
        self.event(|h, conn| h.open(conn))
    }

    /// What the handler queued has been written after waiting for the peer:
    /// its `drained`.
    fn drained(&mut self) -> Result<(), End> {
        self.event(|h, conn| h.drained(conn))
    }

    /// A callback about the connection rather than a message.
    fn event(
        &mut self,
        f: impl FnOnce(&H, &mut crate::handler::Conn<'_, H::State>),
    ) -> Result<(), End> {
        let mailbox = self.mailbox();
        let ws = self.ws.as_ref().expect("not done");
        let mut requests = Requests::default();
        let link = Link {
            stream: ws.stream(),
            mailbox,
            deflate: self.deflate(),
        };
        let sent = call(&self.slot, &mut self.state, link, None, &mut requests, f);
        self.after_call(requests, sent)
    }

    /// A read would block with every frame read so far echoed. An empty read
    /// buffer goes back to the worker's pool (an idle session holds none),
    /// unless this session may keep it until the worker's next reclaim
    /// (`reclaim`: that has come): a busy session then skips a give and a
    /// take per message, and a session that went quiet gives the buffer back
    /// within `RECLAIM_EVERY`.
    fn release_buffer(&mut self, reclaim: bool) {
        if reclaim {
            self.flags.set(Flags::HOLDS, false);
        }
        let worker = self.slot.worker().clone();
        let buf = self.ws.as_mut().expect("not done").read_buffer_mut();
        if self.flags.has(Flags::HOLDS) || buf.capacity() == 0 || !buf.is_empty() {
            return;
        }
        // Only a buffer the pool would keep is held (a large one is freed).
        let poolable = self.charged as usize * 1024 <= crate::buffers::POOL_MAX_BUFFER;
        if !reclaim && poolable && worker.sessions.try_hold(self.slot.key()) {
            self.flags.set(Flags::HOLDS, true);
            return;
        }
        worker.buffers.give(std::mem::take(buf));
        self.uncharge();
    }

    /// Gives the session a read buffer from the worker's pool if it holds
    /// none, charged to the worker's budget; false if the budget refuses.
    fn take_buffer(&mut self) -> bool {
        let worker = self.slot.worker().clone();
        if self
            .ws
            .as_mut()
            .expect("not done")
            .read_buffer_mut()
            .capacity()
            != 0
        {
            return true;
        }
        self.uncharge();
        let pooled = worker.buffers.take();
        let charge = kib(pooled.capacity());
        if !worker.budget.take(charge as usize * 1024) {
            worker.buffers.give(pooled);
            return false;
        }
        *self.ws.as_mut().expect("not done").read_buffer_mut() = pooled;
        self.charged = charge;
        self.granted();
        true
    }

    /// The frame at the front of the read buffer, `frame_len` bytes, is
    /// longer than the buffer: charges the budget for the whole frame before
    /// the buffer grows for it, or, if the budget refuses, returns false (the
    /// session then waits, unread). The buffer itself still grows only as
    /// the frame's bytes arrive, so an announced length costs no memory
    /// until it is sent.
    fn grow(&mut self, frame_len: usize) -> bool {
        let worker = self.slot.worker().clone();
        let charge = kib(frame_len.saturating_add(NEXT_HEADER));
        let extra = charge.saturating_sub(self.charged) as usize * 1024;
        if !worker.budget.grow(extra) {
            return false;
        }
        self.charged = charge;
        self.granted();
        true
    }

    /// The budget granted what this session asked for: if it had been
    /// waiting, it reads again, and the progress check of its incomplete
    /// frame starts over (it could not progress while unread).
    fn granted(&mut self) {
        if self.flags.take(Flags::WAITING) {
            let sessions = &self.slot.worker().sessions;
            let key = self.slot.key();
            sessions.set_waiting(key, false);
            if self.flags.has(Flags::PARTIAL) {
                sessions.set_partial(key, sessions.clock());
            }
        }
    }

    /// The budget refused: wait, unread, until bytes are released.
    fn wait_for_budget(&mut self, cx: &Context<'_>) {
        let worker = self.slot.worker();
        if !self.flags.has(Flags::WAITING) {
            self.flags.set(Flags::WAITING, true);
            worker.sessions.set_waiting(self.slot.key(), true);
            worker.metrics.budget_waits.add(1);
        }
        worker.budget.wait(cx.waker());
    }

    /// Releases the budget charged for the read buffer (no longer held).
    fn uncharge(&mut self) {
        if self.charged != 0 {
            self.slot
                .worker()
                .budget
                .release(self.charged as usize * 1024);
            self.charged = 0;
        }
    }

    /// Records in the session table whether an incomplete frame is
    /// buffered, and since when: from the first of its bytes, or from the
    /// last frame completed (`frames_read`: in this poll).
    fn track_partial(&mut self, frames_read: bool) {
        let buf = self.ws.as_mut().expect("not done").read_buffer_mut();
        let partial = !buf.is_empty();
        let was = self.flags.has(Flags::PARTIAL);
        let sessions = &self.slot.worker().sessions;
        let key = self.slot.key();
        if partial && (!was || frames_read) {
            sessions.set_partial(key, sessions.clock());
        } else if !partial && was {
            sessions.set_partial(key, 0);
        }
        self.flags.set(Flags::PARTIAL, partial);
    }

    /// A progress check ([`Tick::PROGRESS`]): an incomplete frame buffered
    /// for a whole [`PROGRESS_EVERY`] must have grown by
    /// `--min-message-rate` over the last window (counted in KiB).
    fn check_progress(&mut self) -> Result<(), End> {
        let worker = self.slot.worker().clone();
        let rate = worker.shared.config.min_message_rate;
        if !self.flags.has(Flags::PARTIAL) || rate == 0 {
            return Ok(());
        }
        let sessions = &worker.sessions;
        let key = self.slot.key();
        let (since, mark) = sessions.progress(key);
        let buffered = self.ws.as_mut().expect("not done").read_buffer_mut().len();
        let got = u16::try_from(buffered / 1024).unwrap_or(u16::MAX);
        let window = PROGRESS_EVERY.as_secs();
        // A frame of 64 MiB or more buffered is not checked (the mark is
        // 16 bits of KiB): it is progressing at any sensible rate.
        if since != 0
            && u64::from(sessions.clock().saturating_sub(since)) >= window
            && got < u16::MAX
        {
            // Rounded up to the KiB, in the peer's favour.
            let progress = u64::from(got.saturating_sub(mark)) * 1024 + 1024;
            if progress < rate.saturating_mul(window) {
                worker.metrics.slow_messages.add(1);
                return Err(fail(
                    1008,
                    "message arriving slower than --min-message-rate",
                ));
            }
        }
        sessions.set_mark(key, got);
        Ok(())
    }

    /// The loop has ended: the read buffer is no longer needed (the closing
    /// handshake reads into a small buffer of its own).
    fn drop_buffer(&mut self) {
        let worker = self.slot.worker().clone();
        let buf = std::mem::take(self.ws.as_mut().expect("not done").read_buffer_mut());
        if buf.is_empty() {
            worker.buffers.give(buf);
        }
        self.uncharge();
        let key = self.slot.key();
        if self.flags.take(Flags::PARTIAL) {
            worker.sessions.set_partial(key, 0);
        }
        if self.flags.take(Flags::WAITING) {
            worker.sessions.set_waiting(key, false);
        }
    }

    /// Closed to make room in the worker's budget ([`Tick::EVICT`]).
    fn evicted(&self) -> End {
        self.slot.worker().metrics.budget_closes.add(1);
        fail(1013, "server read buffers are full: try again later")
    }

    /// Any byte received counts as hearing from the peer (the idle check), not
    /// only a whole frame: a large frame still arriving is not idle. (A frame
    /// that arrives too slowly is `--min-message-rate`'s to close.)
    fn note_received(&mut self, buffered: usize) {
        let ws = self.ws.as_mut().expect("not done");
        if ws.read_buffer_mut().len() > buffered {
            self.flags.set(Flags::HEARD, true);
        }
    }

    /// An idle tick arrived: quiet peers get a Ping, then a Close.
    fn on_tick(&mut self) -> Result<(), End> {
        if self.flags.take(Flags::HEARD) {
            self.flags.set(Flags::PINGED, false);
        } else if self.flags.has(Flags::PINGED) {
            return Err(fail(1001, "no answer to ping"));
        } else {
            self.flags.set(Flags::PINGED, true);
            self.out = Some(Outgoing::ping());
        }
        Ok(())
    }
}

impl<S, H: Handler> Drop for Session<S, H> {
    fn drop(&mut self) {
        // However the session ends (its task dropped at drain's end, or
        // after a panic), its worker's budget gets back what it held.
        let worker = self.slot.worker();
        if self.charged != 0 {
            worker.budget.release(self.charged as usize * 1024);
        }
        if let Some(message) = &self.message {
            worker.budget.release(message.charged);
        }
        if self.flags.has(Flags::DEFLATE_TAKEOVER) {
            worker.deflater.borrow_mut().end(self.slot.key());
        }
        self.close_mailbox();
    }
}

impl<S, H: Handler> Session<S, H> {
    /// The session's mailbox, if it gave out a `Sender`.
    #[inline(always)]
    fn mailbox(&self) -> Option<Arc<Mailbox>> {
        if !self.flags.has(Flags::MAILBOX) {
            return None;
        }
        let worker = self.slot.worker();
        worker.mailboxes.borrow().get(&self.slot.key()).cloned()
    }

    /// The session's senders are told it is over.
    fn close_mailbox(&mut self) {
        if self.flags.take(Flags::MAILBOX) {
            let worker = self.slot.worker();
            let mailbox = worker.mailboxes.borrow_mut().remove(&self.slot.key());
            if let Some(mailbox) = mailbox {
                mailbox.close();
            }
        }
    }
}

// The session never pins its fields (it is polled through `get_mut`), so
// it moves freely whatever the handler's state is.
impl<S, H: Handler> Unpin for Session<S, H> {}

impl<S: Stream, H: Handler> Future for Session<S, H> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if let Phase::Open(_) = this.ws {
            let end = ready!(this.poll_echo(cx));
            tracing::debug!(?end, "session ending");
            this.close_mailbox();
            this.notify_end(&end);
            // What the handler queued goes out before our Close frame.
            let unsent = match end {
                End::Gone => None,
                _ => this.out.take().and_then(Outgoing::unsent),
            };
            this.drop_buffer();
            let worker = this.slot.worker().clone();
            // A zero-sized placeholder (no allocation) while the codec moves
            // into the closing phase.
            let placeholder = Phase::Closing(Box::pin(std::future::ready(())));
            let Phase::Open(ws) = std::mem::replace(&mut this.ws, placeholder) else {
                unreachable!("the loop runs in the open phase")
            };
            this.ws = Phase::Closing(Box::pin(close(ws, end, unsent, worker)));
        }
        let Phase::Closing(closing) = &mut this.ws else {
            unreachable!("the closing phase is set above")
        };
        closing.as_mut().poll(cx)
    }
}

impl<S: Stream, H: Handler> Session<S, H> {
    /// The session's loop: runs until the session must close, and says how.
    fn poll_echo(&mut self, cx: &mut Context<'_>) -> Poll<End> {
        let this = self;
        let worker = this.slot.worker().clone();
        let worker = &*worker;
        let key = this.slot.key();
        let sessions = &worker.sessions;
        let mut budget = FRAMES_PER_POLL;
        if !this.flags.has(Flags::OPENED)
            && let Err(end) = this.open()
        {
            return Poll::Ready(end);
        }
        loop {
            if let Some(out) = this.out.as_mut() {
                let ws = this.ws.as_mut().expect("not done");
                match out.poll_write(ws, cx) {
                    Poll::Ready(Ok(())) => {
                        let out = this.out.take().expect("written");
                        let queued = out.is_queue();
                        let mail = match &out.source {
                            Source::Mail(buf) => buf.len(),
                            _ => 0,
                        };
                        out.finish(ws, worker, key);
                        if let Some(mailbox) = this.mailbox().filter(|_| mail > 0) {
                            mailbox.written(mail);
                        }
                        if queued
                            && this.flags.take(Flags::BACKLOGGED)
                            && let Err(end) = this.drained()
                        {
                            return Poll::Ready(end);
                        }
                        continue;
                    }
                    Poll::Ready(Err(_)) => return Poll::Ready(End::Gone),
                    Poll::Pending => {
                        if out.is_queue() {
                            this.flags.set(Flags::BACKLOGGED, true);
                        }
                        // The peer is not reading. Nothing more is read
                        // meanwhile (backpressure); a whole --write-timeout
                        // period without progress closes the connection (no
                        // Close frame can get through).
                        let ticks = sessions.take_ticks(key);
                        if ticks & Tick::EVICT != 0 {
                            return Poll::Ready(this.evicted());
                        }
                        if ticks & Tick::RECLAIM != 0 {
                            // The buffer is looked at when the next read
                            // would block.
                            this.flags.set(Flags::HOLDS, false);
                        }
                        if ticks & Tick::STALL != 0 && out.stall_tick() {
                            worker.metrics.write_stalls.add(1);
                            return Poll::Ready(End::Gone);
                        }
                        if ticks & Tick::LIFETIME != 0 {
                            this.flags.set(Flags::EXPIRED, true);
                        }
                        if ticks & Tick::ABANDON != 0 {
                            // Draining, and the peer has not read for a
                            // whole --close-timeout: it would not read our
                            // Close either.
                            return Poll::Ready(End::Gone);
                        }
                        // Senders and publishers may still post: past the
                        // cap (policy close), a peer that does not read is
                        // let go. From here on, what is published to it
                        // counts against the cap itself (`stalled`).
                        if this.mailbox().is_some_and(|m| m.over_cap())
                            || (this.flags.has(Flags::SUBSCRIBED) && worker.topics.stalled(key))
                        {
                            worker.metrics.backpressure_closes.add(1);
                            return Poll::Ready(fail(
                                1008,
                                "outgoing queue over --max-backpressure",
                            ));
                        }
                        this.park(cx);
                        return Poll::Pending;
                    }
                }
            }
            if this.flags.has(Flags::MAILBOX) {
                if let Err(end) = this.take_mail() {
                    return Poll::Ready(end);
                }
                if this.out.is_some() {
                    continue;
                }
            }
            if this.flags.has(Flags::SUBSCRIBED) {
                if let Err(end) = this.take_published() {
                    return Poll::Ready(end);
                }
                if this.out.is_some() {
                    continue;
                }
            }
            if budget == 0 {
                if sessions.closing() {
                    return Poll::Ready(draining());
                }
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let mut buffered = 0;
            let read = if this.take_buffer() {
                let room = this.charged as usize * 1024;
                let ws = this.ws.as_mut().expect("not done");
                buffered = ws.read_buffer_mut().len();
                Some(ws.poll_frame_in_place_within(cx, room))
            } else {
                None
            };
            let waiting = match read {
                Some(Poll::Ready(Ok(frame))) => {
                    budget -= 1;
                    if let Err(end) = this.on_frame(frame) {
                        return Poll::Ready(end);
                    }
                    continue;
                }
                Some(Poll::Ready(Err(WebSocketError::NeedsRoom(frame_len)))) => {
                    this.note_received(buffered);
                    if this.grow(frame_len) {
                        continue;
                    }
                    true
                }
                Some(Poll::Ready(Err(e))) => return Poll::Ready(e.into()),
                Some(Poll::Pending) => {
                    this.note_received(buffered);
                    false
                }
                None => true,
            };
            // Nothing complete is buffered (every frame read so far has been
            // echoed), or the budget refused room to read more: this is
            // where drain and the worker's ticks act.
            if sessions.closing() || worker.shared.drain.is_draining() {
                return Poll::Ready(draining());
            }
            this.track_partial(budget < FRAMES_PER_POLL);
            let ticks = sessions.take_ticks(key);
            if ticks & Tick::EVICT != 0 {
                return Poll::Ready(this.evicted());
            }
            if ticks & Tick::LIFETIME != 0 || this.flags.has(Flags::EXPIRED) {
                worker.metrics.lifetime_closes.add(1);
                return Poll::Ready(expired());
            }
            if waiting {
                if ticks & Tick::RECLAIM != 0 {
                    // Its buffer is not empty: nothing to give back now.
                    this.flags.set(Flags::HOLDS, false);
                }
                this.wait_for_budget(cx);
            } else {
                if ticks & Tick::PROGRESS != 0
                    && let Err(end) = this.check_progress()
                {
                    return Poll::Ready(end);
                }
                this.release_buffer(ticks & Tick::RECLAIM != 0);
            }
            if ticks & Tick::IDLE != 0 {
                if let Err(end) = this.on_tick() {
                    return Poll::Ready(end);
                }
                if this.out.is_some() {
                    continue;
                }
            }
            if !this.park(cx) {
                // A sender posted meanwhile.
                continue;
            }
            return Poll::Pending;
        }
    }
}

/// Joins a fragment to the message it belongs to (`message`, the
/// fragmented message in progress), checking the order of fragments, the
/// total size against `max` and the UTF-8 of text as it arrives (fail-fast);
/// the buffer holding them is charged to the worker's budget. True once the
/// message is whole.
fn join<H: Handler>(
    message: &mut Option<Box<Fragmented>>,
    max: usize,
    frame: &InPlace,
    payload: &[u8],
    worker: &Worker<H>,
) -> Result<bool, End> {
    if frame.opcode != OpCode::Continuation {
        if message.is_some() {
            return Err(fail(1002, "new message inside a fragmented message"));
        }
        *message = Some(Box::new(Fragmented {
            text: frame.opcode == OpCode::Text,
            compressed: frame.rsv1,
            utf8: Utf8Stream::default(),
            data: Vec::new(),
            charged: 0,
        }));
    }
    let Some(msg) = message.as_mut() else {
        return Err(fail(
            1002,
            "continuation frame without a message to continue",
        ));
    };
    if msg.data.len() + payload.len() > max {
        return Err(fail(1009, "message exceeds --max-message-size"));
    }
    if msg.text
        && !msg.compressed
        && (msg.utf8.feed(payload).is_err() || (frame.fin && msg.utf8.finish().is_err()))
    {
        return Err(fail(1007, "text is not valid UTF-8"));
    }
    let need = msg.data.len() + payload.len();
    if need > msg.data.capacity() {
        // Doubling (amortized copies), never past the message limit; the
        // budget is charged for the capacity, which is what memory holds.
        let cap = need.max(msg.data.capacity() * 2).min(max);
        if !worker.budget.grow(cap - msg.charged) {
            worker.metrics.budget_closes.add(1);
            return Err(fail(1013, "server read buffers are full: try again later"));
        }
        msg.charged = cap;
        msg.data.reserve_exact(cap - msg.data.len());
    }
    msg.data.extend_from_slice(payload);
    Ok(frame.fin)
}

/// Calls the handler's `message`: what it asked for, and what it sent.
#[inline(always)]
fn call_message<S: Stream, H: Handler>(
    slot: &SessionSlot<H>,
    state: &mut H::State,
    link: Link<'_, S>,
    msg: Message<'_>,
) -> (Requests, Option<BytesMut>) {
    let mut requests = Requests::default();
    let sent = call(slot, state, link, Some(msg), &mut requests, |h, conn| {
        h.message(conn, msg)
    });
    (requests, sent)
}

/// Inflates a compressed message with the worker's inflater, at most
/// `max` bytes of it.
fn inflate<H: Handler>(worker: &Worker<H>, compressed: &[u8], max: usize) -> Result<Vec<u8>, End> {
    worker
        .inflater
        .borrow_mut()
        .inflate(compressed, max)
        .map_err(|e| match e {
            InflateError::TooBig => fail(1009, "message exceeds --max-message-size"),
            InflateError::Invalid => fail(1007, "invalid compressed data"),
        })
}

/// How a session ends when its handler or a sender asked: past
/// `--max-backpressure` with the `close` policy (1008), or with a close of
/// its own (a code not allowed on the wire becomes 1011).
fn asked_end(
    over_cap: bool,
    close: Option<(u16, Cow<'static, str>)>,
    metrics: &WorkerMetrics,
) -> Result<(), End> {
    if over_cap {
        metrics.backpressure_closes.add(1);
        return Err(fail(1008, "outgoing queue over --max-backpressure"));
    }
    if let Some((code, reason)) = close {
        if !CloseCode::from(code).is_allowed() {
            tracing::warn!(
                code,
                "a close asked with a code not allowed on the wire; sending 1011"
            );
            return Err(fail(1011, "internal error"));
        }
        return Err(End::Closed(code, reason));
    }
    Ok(())
}

/// Text checked as UTF-8, or binary, as the handler receives it.
fn message_of(text: bool, bytes: &[u8]) -> Result<Message<'_>, End> {
    if !text {
        return Ok(Message::Binary(bytes));
    }
    std::str::from_utf8(bytes)
        .map(Message::Text)
        .map_err(|_| fail(1007, "text is not valid UTF-8"))
}

/// Checks the peer's Close payload (RFC 6455 §5.5.1, §7.4).
fn peer_close(payload: &[u8]) -> End {
    match payload {
        [] => End::Reply(None),
        [_] => fail(1002, "close frame with a one-byte payload"),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !CloseCode::from(code).is_allowed() {
                fail(1002, "invalid close code")
            } else if std::str::from_utf8(reason).is_err() {
                fail(1007, "close reason is not valid UTF-8")
            } else {
                End::Reply(Some(code))
            }
        }
    }
}

/// Sends our Close frame, then closes TCP: at once when answering the peer's
/// Close; otherwise after the peer closed its side or `--close-timeout`
/// passed, reading and discarding what it still sends, so that our Close
/// frame is not lost to a TCP reset.
async fn close<S: Stream, H: Handler>(
    mut ws: WebSocket<S>,
    end: End,
    unsent: Option<BytesMut>,
    worker: Rc<Worker<H>>,
) {
    let frame = match &end {
        End::Gone => return,
        End::Reply(Some(code)) => Frame::close(*code, b""),
        End::Reply(None) => Frame::close_raw(Payload::Borrowed(&[])),
        End::Close(code, reason) | End::Closed(code, reason) => {
            Frame::close(*code, reason.as_bytes())
        }
    };
    let lingering = matches!(end, End::Close(..) | End::Closed(..));
    let timeout = worker.shared.config.close_timeout;
    let _ = crate::timer::timeout(timeout, async {
        if let Some(unsent) = unsent
            && ws.stream_and_buffer().0.write_all(&unsent).await.is_err()
        {
            return;
        }
        if ws.write_frame(frame).await.is_err() || ws.flush().await.is_err() {
            return;
        }
        worker.metrics.closes_sent.add(1);
        if !lingering {
            // The peer has closed (or is gone): dropping the socket closes
            // TCP, server first as RFC 6455 §7.1.1 asks, without a separate
            // shutdown call.
            return;
        }
        let mut io = ws.into_inner();
        if io.shutdown().await.is_err() {
            return;
        }
        let mut sink = [0u8; 512];
        while let Ok(n) = io.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_stalls_after_a_whole_period_without_progress() {
        let mut out = Outgoing::ping();
        // The first tick only marks: the frame may have been queued just
        // before it.
        assert!(!out.stall_tick());
        out.written = 1;
        assert!(!out.stall_tick(), "progress since the last tick");
        assert!(out.stall_tick(), "a whole period without progress");
        // Even a frame that has written nothing yet waits for a second tick.
        let mut fresh = Outgoing::ping();
        assert!(!fresh.stall_tick());
        assert!(fresh.stall_tick());
    }

    #[test]
    fn close_codes() {
        assert_eq!(peer_close(&[]), End::Reply(None));
        assert_eq!(
            peer_close(&[3]),
            fail(1002, "close frame with a one-byte payload")
        );
        assert_eq!(peer_close(&1000u16.to_be_bytes()), End::Reply(Some(1000)));
        assert_eq!(peer_close(&4999u16.to_be_bytes()), End::Reply(Some(4999)));
        for bad in [0u16, 999, 1004, 1005, 1006, 1015, 2000, 5000] {
            assert_eq!(
                peer_close(&bad.to_be_bytes()),
                fail(1002, "invalid close code"),
                "{bad}"
            );
        }
        assert_eq!(
            peer_close(&[0x03, 0xe8, 0xff]),
            fail(1007, "close reason is not valid UTF-8")
        );
    }
}

#[cfg(test)]
mod size {
    #[test]
    fn session_future_stays_small() {
        // What an idle connection costs, plus tokio's task header and
        // trailer (~100 B; the task is 128-byte aligned, so up to ~280 B the
        // task stays a 384-byte allocation): docs/architecture.md.
        let size =
            std::mem::size_of::<super::Session<tokio::net::TcpStream, crate::handler::Echo>>();
        assert!(size <= 280, "Session<TcpStream> grew to {size} B");
    }
}
