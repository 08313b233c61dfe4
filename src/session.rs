//! The WebSocket echo session (RFC 6455), on fastwebsockets' frame codec.
//!
//! Echo is **fragment by fragment**: each data frame is sent back as soon as
//! it is read, with the same opcode, FIN bit and payload bytes, so a
//! fragmented message comes back fragmented the same way and a message never
//! has to be held whole. The session still checks the message as a whole:
//! continuation frames must follow a started message, the UTF-8 of a text
//! message is validated across its fragments (fail-fast), and the total size
//! is bounded by `--max-message-size`.
//!
//! The reply reuses the bytes that were read: the frame is parsed where it
//! lies in the read buffer, its payload unmasked in place, the reply's header
//! written over the end of the request's (it is never longer: same length,
//! no mask) and the reply sent from there in one write, whatever its size. A
//! steady echo neither allocates nor copies.
//!
//! Failures are answered with a Close frame before TCP is closed: 1002 for
//! protocol errors, 1007 for invalid UTF-8, 1009 for oversize messages,
//! 1001 when the server drains or the peer stopped answering pings, 1013
//! when the worker's budget of buffered bytes stays spent and this session's
//! incomplete frame is the oldest, 1008 for a frame arriving slower than
//! `--min-message-rate`.
//!
//! The read buffer is charged to the worker's share of
//! `--max-buffered-bytes` while the session holds it, and a frame longer
//! than the buffer is charged whole before the buffer grows for it
//! (`crate::budget`); a session refused waits unread.
//!
//! The echo loop is a hand-written future ([`Echo`]) rather than an `async`
//! loop, because its size is most of what an idle connection costs: it holds
//! the codec, at most one outgoing frame and a few flags, and no read future,
//! timer or notification (see `drain::LocalSessions`).
//!
//! This module never knows which I/O backend it runs on.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, ready};

use std::time::Duration;

use fastwebsockets::{CloseCode, Frame, InPlace, OpCode, Payload, Role, WebSocket, WebSocketError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::drain::Tick;

use crate::io::Stream;
use crate::utf8::Utf8Stream;
use crate::worker::{SessionSlot, Worker};

/// How an echo loop ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// The peer sent Close (with this code, if any): answer it and close.
    Reply(Option<u16>),
    /// We close with this code and reason, then wait for the peer.
    Close(u16, &'static str),
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
    End::Close(code, reason)
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
struct Flags(u8);

impl Flags {
    /// Heard from the peer since the last idle tick.
    const HEARD: u8 = 1;
    /// Pinged after a silent idle period, not answered yet.
    const PINGED: u8 = 2;
    /// May keep its empty read buffer between messages until the worker
    /// reclaims it (`LocalSessions::try_hold`).
    const HOLDS: u8 = 4;
    /// Buffers an incomplete frame (recorded in the session table).
    const PARTIAL: u8 = 8;
    /// Refused by the worker's budget of buffered bytes; not reading.
    const WAITING: u8 = 16;

    fn has(self, flag: u8) -> bool {
        self.0 & flag != 0
    }

    fn set(&mut self, flag: u8, on: bool) {
        if on {
            self.0 |= flag;
        } else {
            self.0 &= !flag;
        }
    }

    /// Clears `flag`; true if it was set.
    fn take(&mut self, flag: u8) -> bool {
        let had = self.has(flag);
        self.set(flag, false);
        had
    }
}

/// A WebSocket session: the echo loop, then the closing handshake. It is
/// the whole future of the session's task.
///
/// An idle connection costs what this struct costs, so it is kept small: no
/// read future (reads are poll-based and keep their state in the read
/// buffer, which an idle session gives back to the pool), one outgoing frame
/// at a time, no timers (the worker's session table delivers drain and idle
/// ticks through the waker), and the closing phase boxed.
pub struct Session<S> {
    /// Moved into the closing phase when the loop ends.
    ws: Option<WebSocket<S>>,
    /// The session's place in `--max-connections` and its worker's table.
    slot: SessionSlot,
    /// The closing handshake, once the loop has ended.
    closing: Option<Pin<Box<dyn Future<Output = ()>>>>,
    /// The frame being written, if any.
    out: Option<Outgoing>,
    /// A fragmented message in progress.
    message: Option<Fragmented>,
    /// KiB of the worker's budget of buffered bytes charged for the read
    /// buffer this session holds (`crate::budget`).
    charged: u32,
    flags: Flags,
}

/// A fragmented message in progress.
#[derive(Debug)]
struct Fragmented {
    text: bool,
    total: usize,
    utf8: Utf8Stream,
}

/// A frame on its way out: a reply framed in place in the read buffer
/// (echo or pong), or the session's own ping.
#[derive(Debug)]
struct Outgoing {
    /// The frame answered (still at the front of the read buffer, its reply
    /// at `reply_range()`, consumed once the reply is written), or `None`
    /// for a ping.
    answers: Option<InPlace>,
    written: usize,
    /// `written` at the last write-stall tick, or [`NOT_MARKED`] before the
    /// first. Kept here rather than as an `Option` in the session: the
    /// eight bytes saved keep an idle connection's task in mimalloc's
    /// 224-byte size class instead of the 256-byte one.
    stall_mark: usize,
}

/// No write-stall tick yet: `written` counts the bytes of one frame held in
/// memory, so it never reaches this.
const NOT_MARKED: usize = usize::MAX;

/// The session's own ping: empty payload.
const PING: [u8; 2] = [0x89, 0x00];

impl Outgoing {
    /// A reply to `frame` with `fin` and `opcode`, framed in its bytes.
    fn reply<S>(ws: &mut WebSocket<S>, frame: InPlace, fin: bool, opcode: OpCode) -> Outgoing {
        ws.frame_reply_in_place(&frame, fin, opcode);
        Outgoing {
            answers: Some(frame),
            written: 0,
            stall_mark: NOT_MARKED,
        }
    }

    /// A ping of the session's own (idle check).
    fn ping() -> Outgoing {
        Outgoing {
            answers: None,
            written: 0,
            stall_mark: NOT_MARKED,
        }
    }

    /// A write-stall tick came while this frame was pending: true if none
    /// of its bytes were written since the previous one.
    fn stall_tick(&mut self) -> bool {
        let stalled = self.stall_mark == self.written;
        self.stall_mark = self.written;
        stalled
    }

    /// An echo of a data frame (counted in the metrics once written).
    fn is_echo(&self) -> bool {
        self.answers.is_some_and(|f| {
            matches!(
                f.opcode,
                OpCode::Text | OpCode::Binary | OpCode::Continuation
            )
        })
    }

    /// Writes what is left, then consumes the frame it answers.
    fn poll_write<S: Stream>(
        &mut self,
        ws: &mut WebSocket<S>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        let (io, buffer) = ws.stream_and_buffer();
        let bytes = match &self.answers {
            Some(frame) => &buffer[frame.reply_range()],
            None => &PING[..],
        };
        while self.written < bytes.len() {
            let n = ready!(Pin::new(&mut *io).poll_write(cx, &bytes[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        if let Some(frame) = &self.answers {
            ws.consume(frame);
        }
        Poll::Ready(Ok(()))
    }

    /// Payload bytes of the reply.
    fn payload_len(&self) -> usize {
        self.answers.map_or(0, |f| f.payload_len())
    }
}

impl<S: Stream> Session<S> {
    /// The session on an upgraded connection: `read_ahead` holds bytes read
    /// past the upgrade request, parsed before the socket is read.
    pub fn new(io: S, read_ahead: &[u8], slot: SessionSlot) -> Self {
        let worker = slot.worker();
        let mut ws = WebSocket::after_handshake(io, Role::Server);
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
            ws: Some(ws),
            slot,
            closing: None,
            out: None,
            message: None,
            charged,
            // A new session has just been heard (its upgrade): the first
            // idle tick, which may come a moment later, must not ping it.
            flags: Flags(Flags::HEARD),
        }
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
                let max = worker.shared.config.max_message_size;
                check_message(&mut self.message, max, &frame, ws.payload(&frame))?;
                self.out = Some(Outgoing::reply(ws, frame, frame.fin, frame.opcode));
            }
            OpCode::Ping => {
                self.out = Some(Outgoing::reply(ws, frame, true, OpCode::Pong));
            }
            OpCode::Pong => ws.consume(&frame),
            OpCode::Close => return Err(peer_close(ws.payload(&frame))),
        }
        Ok(())
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

impl<S> Drop for Session<S> {
    fn drop(&mut self) {
        // However the session ends (its task dropped at drain's end, or
        // after a panic), its worker's budget gets back what it held.
        if self.charged != 0 {
            let worker = self.slot.worker();
            worker.budget.release(self.charged as usize * 1024);
        }
    }
}

impl<S: Stream> Future for Session<S> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if this.closing.is_none() {
            let end = ready!(this.poll_echo(cx));
            tracing::debug!(?end, "session ending");
            this.drop_buffer();
            let ws = this.ws.take().expect("the loop ended once");
            this.closing = Some(Box::pin(close(ws, end, this.slot.worker().clone())));
        }
        let closing = this.closing.as_mut().expect("set above");
        closing.as_mut().poll(cx)
    }
}

impl<S: Stream> Session<S> {
    /// The echo loop: runs until the session must close, and says how.
    fn poll_echo(&mut self, cx: &mut Context<'_>) -> Poll<End> {
        let this = self;
        let worker = this.slot.worker().clone();
        let worker = &*worker;
        let key = this.slot.key();
        let sessions = &worker.sessions;
        let mut budget = FRAMES_PER_POLL;
        loop {
            if let Some(out) = this.out.as_mut() {
                let ws = this.ws.as_mut().expect("not done");
                match out.poll_write(ws, cx) {
                    Poll::Ready(Ok(())) => {
                        if out.is_echo() {
                            let m = &worker.metrics;
                            m.frames_out.add(1);
                            m.bytes_out.add(out.payload_len() as u64);
                        }
                        this.out = None;
                    }
                    Poll::Ready(Err(_)) => return Poll::Ready(End::Gone),
                    Poll::Pending => {
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
                        if ticks & Tick::ABANDON != 0 {
                            // Draining, and the peer has not read for a
                            // whole --close-timeout: it would not read our
                            // Close either.
                            return Poll::Ready(End::Gone);
                        }
                        sessions.park(key, cx);
                        return Poll::Pending;
                    }
                }
            }
            if budget == 0 {
                if sessions.closing() {
                    return Poll::Ready(fail(1001, "server is draining"));
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
                return Poll::Ready(fail(1001, "server is draining"));
            }
            this.track_partial(budget < FRAMES_PER_POLL);
            let ticks = sessions.take_ticks(key);
            if ticks & Tick::EVICT != 0 {
                return Poll::Ready(this.evicted());
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
            sessions.park(key, cx);
            return Poll::Pending;
        }
    }
}

/// Checks a data frame against the message it belongs to (`message`, the
/// fragmented message in progress): order of fragments, total size against
/// `max`, UTF-8 across fragments. (A whole text message in one frame was
/// validated by fastwebsockets.)
fn check_message(
    message: &mut Option<Fragmented>,
    max: usize,
    frame: &InPlace,
    payload: &[u8],
) -> Result<(), End> {
    let len = frame.payload_len();
    if frame.opcode != OpCode::Continuation {
        if message.is_some() {
            return Err(fail(1002, "new message inside a fragmented message"));
        }
        if !frame.fin {
            let mut msg = Fragmented {
                text: frame.opcode == OpCode::Text,
                total: len,
                utf8: Utf8Stream::default(),
            };
            if msg.text && msg.utf8.feed(payload).is_err() {
                return Err(fail(1007, "text is not valid UTF-8"));
            }
            *message = Some(msg);
        }
        return Ok(());
    }
    let Some(msg) = message.as_mut() else {
        return Err(fail(
            1002,
            "continuation frame without a message to continue",
        ));
    };
    msg.total += len;
    if msg.total > max {
        return Err(fail(1009, "message exceeds --max-message-size"));
    }
    if msg.text && (msg.utf8.feed(payload).is_err() || (frame.fin && msg.utf8.finish().is_err())) {
        return Err(fail(1007, "text is not valid UTF-8"));
    }
    if frame.fin {
        *message = None;
    }
    Ok(())
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
async fn close<S: Stream>(mut ws: WebSocket<S>, end: End, worker: Rc<Worker>) {
    let frame = match end {
        End::Gone => return,
        End::Reply(Some(code)) => Frame::close(code, b""),
        End::Reply(None) => Frame::close_raw(Payload::Borrowed(&[])),
        End::Close(code, reason) => Frame::close(code, reason.as_bytes()),
    };
    let lingering = matches!(end, End::Close(..));
    let timeout = worker.shared.config.close_timeout;
    let _ = crate::timer::timeout(timeout, async {
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
mod buffer_tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A busy session keeps its empty read buffer between messages, and
    /// gives it back to the pool when the worker reclaims it.
    #[test]
    fn held_buffer_returns_to_the_pool_on_reclaim() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, async {
            let standalone = crate::standalone::Standalone::new(Default::default());
            let worker = standalone.worker().clone();
            let (mut client, server) = tokio::io::duplex(4096);
            tokio::task::spawn_local(async move { standalone.serve(server).await });
            client
                .write_all(
                    b"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\n\
                      Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                      Sec-WebSocket-Version: 13\r\n\r\n",
                )
                .await
                .unwrap();
            let mut response = Vec::new();
            while !response.ends_with(b"\r\n\r\n") {
                response.push(client.read_u8().await.unwrap());
            }
            assert!(response.starts_with(b"HTTP/1.1 101"));
            for round in 0..3 {
                let mask = [1, 2, 3, 4];
                let mut frame = vec![0x82, 0x80 | 5];
                frame.extend_from_slice(&mask);
                frame.extend(b"hello".iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
                client.write_all(&frame).await.unwrap();
                let mut echo = [0u8; 7];
                client.read_exact(&mut echo).await.unwrap();
                assert_eq!(&echo, b"\x82\x05hello");
                // Let the session reach its next read, which would block.
                tokio::task::yield_now().await;
                assert_eq!(worker.buffers.pooled(), 0, "round {round}: kept");
            }
            worker.sessions.reclaim();
            tokio::task::yield_now().await;
            assert_eq!(worker.buffers.pooled(), 1, "given back");
        });
    }
}

#[cfg(test)]
mod size {
    #[test]
    fn session_future_stays_small() {
        // What an idle connection costs, plus tokio's task header and
        // trailer (~100 B; the task is 128-byte aligned, so up to ~280 B the
        // task stays a 384-byte allocation): docs/architecture.md.
        let size = std::mem::size_of::<super::Session<tokio::net::TcpStream>>();
        assert!(size <= 280, "Session<TcpStream> grew to {size} B");
    }
}
