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
//! The reply reuses the bytes that were read: the payload is unmasked in
//! place in fastwebsockets' read buffer and written back from there, so a
//! steady echo does not allocate.
//!
//! Failures are answered with a Close frame before TCP is closed: 1002 for
//! protocol errors, 1007 for invalid UTF-8, 1009 for oversize messages,
//! 1001 when the server drains or the peer stopped answering pings.
//!
//! This module never knows which I/O backend it runs on.

use std::io;
use std::task::{Context, Poll};
use std::time::Duration;

use fastwebsockets::{CloseCode, Frame, OpCode, Payload, Role, WebSocket, WebSocketError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use crate::buffers::BufferPool;

use crate::io::Stream;
use crate::utf8::Utf8Stream;
use crate::worker::Worker;

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
            E::InvalidUTF8 => End::Close(1007, "text is not valid UTF-8"),
            E::FrameTooLarge => End::Close(1009, "message exceeds --max-message-size"),
            E::ReservedBitsNotZero => End::Close(1002, "reserved bits set without an extension"),
            E::ControlFrameFragmented => End::Close(1002, "fragmented control frame"),
            E::PingFrameTooLarge => End::Close(1002, "control frame payload over 125 bytes"),
            E::InvalidValue => End::Close(1002, "unknown opcode"),
            _ => End::Close(1002, "protocol error"),
        }
    }
}

/// A fragmented message in progress.
#[derive(Debug)]
struct Fragmented {
    text: bool,
    total: usize,
    utf8: Utf8Stream,
}

/// Runs the echo session on an upgraded connection until it closes.
pub async fn run<S: Stream>(io: S, worker: &Worker) {
    let mut ws = WebSocket::after_handshake(io, Role::Server);
    // Pings and closes are answered here, so that reading a frame never
    // writes and can be cancelled (by drain or idle timers) at any point.
    ws.set_auto_close(false);
    ws.set_auto_pong(false);
    // fastwebsockets rejects frames of `>= max_message_size` bytes.
    let max = worker.shared.config.max_message_size;
    ws.set_max_message_size(max.saturating_add(1));
    let end = echo(&mut ws, worker).await;
    tracing::debug!(?end, "session ending");
    // Boxed: the closing phase's state stays out of the session future.
    Box::pin(close(ws, end, worker)).await;
}

enum Event<'f> {
    Frame(Result<Frame<'f>, WebSocketError>),
    Drain,
    Idle,
}

const fn fail(code: u16, reason: &'static str) -> End {
    End::Close(code, reason)
}

async fn echo<S: Stream>(ws: &mut WebSocket<S>, worker: &Worker) -> End {
    let shared = &*worker.shared;
    let m = &*worker.metrics;
    let max = shared.config.max_message_size;
    let idle = shared.config.idle_timeout;
    let idle_on = !idle.is_zero();

    // Idle timer: armed once per period, not per message. When it fires the
    // session checks whether it heard anything since it was armed.
    let timer = tokio::time::sleep(if idle_on {
        idle
    } else {
        Duration::from_secs(3600)
    });
    tokio::pin!(timer);
    let mut heard = false;
    let mut pinged = false;
    let drained = worker.sessions.close_signal().notified();
    tokio::pin!(drained);
    drained.as_mut().enable();

    let mut message: Option<Fragmented> = None;
    loop {
        if shared.drain.is_draining() {
            return fail(1001, "server is draining");
        }
        // `biased`: frames already buffered are echoed before a drain or
        // idle event is looked at, so nothing read is lost.
        let event = tokio::select! {
            biased;
            r = std::future::poll_fn(|cx| poll_frame(ws, &worker.buffers, cx)) => Event::Frame(r),
            () = &mut drained => Event::Drain,
            () = &mut timer, if idle_on => Event::Idle,
        };
        let frame = match event {
            Event::Frame(Ok(frame)) => frame,
            Event::Frame(Err(e)) => return e.into(),
            Event::Drain => return fail(1001, "server is draining"),
            Event::Idle => {
                if heard {
                    heard = false;
                    pinged = false;
                } else if pinged {
                    return fail(1001, "no answer to ping");
                } else {
                    pinged = true;
                    let ping = Frame::new(true, OpCode::Ping, None, Payload::Borrowed(&[]));
                    if send(ws.get_mut(), ping).await.is_err() {
                        return End::Gone;
                    }
                }
                timer.as_mut().reset(Instant::now() + idle);
                continue;
            }
        };
        heard = true;
        // fastwebsockets unmasks in place but leaves `mask` set: `None` here
        // means the client sent an unmasked frame.
        if !frame.is_masked() {
            return fail(1002, "client frames must be masked");
        }
        let len = frame.payload.len();
        match frame.opcode {
            OpCode::Text | OpCode::Binary | OpCode::Continuation => {
                m.frames_in.add(1);
                m.bytes_in.add(len as u64);
                if frame.opcode == OpCode::Continuation {
                    let Some(msg) = message.as_mut() else {
                        return fail(1002, "continuation frame without a message to continue");
                    };
                    msg.total += len;
                    if msg.total > max {
                        return fail(1009, "message exceeds --max-message-size");
                    }
                    if msg.text
                        && (msg.utf8.feed(&frame.payload).is_err()
                            || (frame.fin && msg.utf8.finish().is_err()))
                    {
                        return fail(1007, "text is not valid UTF-8");
                    }
                    if frame.fin {
                        message = None;
                    }
                } else if message.is_some() {
                    return fail(1002, "new message inside a fragmented message");
                } else if !frame.fin {
                    let mut msg = Fragmented {
                        text: frame.opcode == OpCode::Text,
                        total: len,
                        utf8: Utf8Stream::default(),
                    };
                    if msg.text && msg.utf8.feed(&frame.payload).is_err() {
                        return fail(1007, "text is not valid UTF-8");
                    }
                    message = Some(msg);
                }
                // (A whole text message was validated by fastwebsockets.)
                let echo = Frame::new(frame.fin, frame.opcode, None, frame.payload);
                if send(ws.get_mut(), echo).await.is_err() {
                    return End::Gone;
                }
                m.frames_out.add(1);
                m.bytes_out.add(len as u64);
            }
            OpCode::Ping => {
                if send(ws.get_mut(), Frame::pong(frame.payload))
                    .await
                    .is_err()
                {
                    return End::Gone;
                }
            }
            OpCode::Pong => {}
            OpCode::Close => return peer_close(&frame.payload),
        }
    }
}

/// Reads the next frame into a buffer lent by the worker's pool, and gives
/// the buffer back when the read would block with nothing buffered: an idle
/// session holds no read buffer.
fn poll_frame<'f, S: Stream>(
    ws: &mut WebSocket<S>,
    pool: &BufferPool,
    cx: &mut Context<'_>,
) -> Poll<Result<Frame<'f>, WebSocketError>> {
    let buf = ws.read_buffer_mut();
    if buf.capacity() == 0 {
        *buf = pool.take();
    }
    let polled = ws.poll_read_frame(cx);
    if polled.is_pending() {
        let buf = ws.read_buffer_mut();
        if buf.is_empty() {
            pool.give(std::mem::take(buf));
        }
    }
    polled
}

/// Writes one server frame: header (formatted by fastwebsockets) and payload
/// in one vectored write, straight from the payload's buffer. Its state is a
/// few dozen bytes, where a `write_frame` future is ~320, and it lives in
/// every session's future.
async fn send<S: Stream>(io: &mut S, mut frame: Frame<'_>) -> io::Result<()> {
    let mut head = [0u8; 10];
    let head_len = frame.fmt_head(&mut head);
    let total = head_len + frame.payload.len();
    let mut written = 0;
    while written < total {
        let n = if written < head_len {
            let parts = [
                io::IoSlice::new(&head[written..head_len]),
                io::IoSlice::new(&frame.payload),
            ];
            io.write_vectored(&parts).await?
        } else {
            io.write(&frame.payload[written - head_len..]).await?
        };
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        written += n;
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
async fn close<S: Stream>(mut ws: WebSocket<S>, end: End, worker: &Worker) {
    let frame = match end {
        End::Gone => return,
        End::Reply(Some(code)) => Frame::close(code, b""),
        End::Reply(None) => Frame::close_raw(Payload::Borrowed(&[])),
        End::Close(code, reason) => Frame::close(code, reason.as_bytes()),
    };
    let lingering = matches!(end, End::Close(..));
    let timeout = worker.shared.config.close_timeout;
    let _ = tokio::time::timeout(timeout, async {
        if ws.write_frame(frame).await.is_err() || ws.flush().await.is_err() {
            return;
        }
        worker.metrics.closes_sent.add(1);
        let mut io = ws.into_inner();
        if io.shutdown().await.is_err() || !lingering {
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
