//! The HTTP/1.1 phase of every connection: reading the request head,
//! routes, probes, metrics, and the hand-off of upgraded connections to the
//! WebSocket session.
//!
//! A connection costs little until its request arrives: the phase first
//! reads the request head itself, into a read buffer lent from the worker's
//! pool only while bytes are buffered, up to `--max-request-header-size`
//! (beyond it: `431` and close). hyper's connection, with its own buffers,
//! is built only once the whole head is there, and parses it from those
//! bytes ([`Replay`]). A connection that has sent nothing holds no buffer,
//! and one that trickles its head holds at most the header cap; the worker
//! keeps at most `--max-pending-handshakes` connections in this phase
//! ([`crate::handshakes`]), and the whole phase must end within
//! `--handshake-timeout`.
//!
//! hyper serves the connection *without* its upgrade machinery (which needs
//! `Send` I/O, and the io_uring stream is `!Send`). The `/ws` route answers
//! `101` itself; the connection is then driven with `without_shutdown()` and
//! taken apart with `into_parts()`, and the bytes read past the request
//! (often the client's first frame) are handed to the session, which parses
//! them before reading from the socket. Every other response carries
//! `Connection: close`, so a connection never idles in hyper's keep-alive
//! with hyper's buffers.

use std::cell::RefCell;
use std::convert::Infallible;
use std::future::{Future, Ready, ready};
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::config::Deflate;
use crate::context::{SessionSlot, Worker};
use crate::deflate::{self, Agreed};
use crate::handler::{self, Handler};
use crate::io::Stream;
use crate::metrics::{self, HandshakeFailure};
use crate::upgrade::{self, Rejection};

type Body = Full<Bytes>;

/// Most header lines in a request (hyper's default, stated here so that
/// the answer to more, `431`, is ringws' documented behaviour).
pub const MAX_HEADERS: usize = 100;

/// A connection that completed the WebSocket handshake.
pub struct Upgraded<S, H: Handler> {
    /// The connection.
    pub io: S,
    /// Bytes read past the request (often the client's first frame): the
    /// session must parse them before reading from `io`.
    pub read_ahead: Bytes,
    /// The session's place in `--max-connections`.
    pub slot: SessionSlot<H>,
    /// The connection's state, as the handler accepted it.
    pub state: H::State,
    /// permessage-deflate, if it was negotiated.
    pub(crate) deflate: Option<Agreed>,
}

/// What the `/ws` route hands over to the session once hyper has sent the
/// `101`.
type Accepted<H> = Rc<RefCell<Option<(SessionSlot<H>, <H as Handler>::State, Option<Agreed>)>>>;

/// A connection's place among its worker's pending handshakes; leaves the
/// list when dropped, however the phase ends.
struct Pending<H: Handler> {
    worker: Rc<Worker<H>>,
    key: usize,
}

impl<H: Handler> Drop for Pending<H> {
    fn drop(&mut self) {
        self.worker.handshakes.leave(self.key);
    }
}

/// Serves HTTP on `io` until the connection closes (`None`) or is upgraded,
/// within `--handshake-timeout`, unless newer connections evict it first.
pub async fn serve<S: Stream, H: Handler>(io: S, worker: Rc<Worker<H>>) -> Option<Upgraded<S, H>> {
    let (key, evicted) = worker.handshakes.enter();
    if evicted {
        worker
            .metrics
            .handshake_failed(HandshakeFailure::PendingLimit);
    }
    let pending = Pending {
        worker: worker.clone(),
        key,
    };
    let mut phase = std::pin::pin!(phase(io, worker.clone()));
    let evictable = std::future::poll_fn(|cx| {
        if pending.worker.handshakes.evicted(pending.key, cx) {
            tracing::debug!("pending handshake evicted by --max-pending-handshakes");
            return Poll::Ready(None);
        }
        phase.as_mut().poll(cx)
    });
    let timeout = worker.shared.config.handshake_timeout;
    let upgraded = crate::timer::timeout(timeout, evictable).await;
    if upgraded.is_none() {
        worker.metrics.handshake_failed(HandshakeFailure::Timeout);
        tracing::debug!("handshake timeout");
    }
    upgraded.flatten()
}

/// The HTTP phase: the request head, then hyper on it.
async fn phase<S: Stream, H: Handler>(mut io: S, worker: Rc<Worker<H>>) -> Option<Upgraded<S, H>> {
    match read_head(&mut io, &worker).await {
        Ok(head) => Box::pin(respond(Replay { head, io }, worker)).await,
        Err(Head::Closed) => None,
        Err(refused) => {
            let (failure, answer) = match refused {
                Head::TooManyLines => (HandshakeFailure::TooManyHeaders, TOO_MANY),
                _ => (HandshakeFailure::HeaderTooLarge, TOO_LARGE),
            };
            worker.metrics.handshake_failed(failure);
            tracing::debug!(reason = failure.label(), "request head refused: 431");
            refuse(io, answer).await;
            None
        }
    }
}

/// Why no request head was read.
#[derive(Debug, PartialEq, Eq)]
enum Head {
    /// EOF or an error before the head was complete.
    Closed,
    /// The head is longer than `--max-request-header-size`.
    TooLarge,
    /// More than [`MAX_HEADERS`] header lines.
    TooManyLines,
}

/// Reads until the request head (through its empty line) is buffered and
/// returns the bytes read, which may go on past the head. The buffer is
/// taken from the worker's pool when bytes are ready and given back while
/// none are buffered, and never grows past the header cap.
async fn read_head<S: Stream, H: Handler>(
    io: &mut S,
    worker: &Worker<H>,
) -> Result<BytesMut, Head> {
    let cap = worker.shared.config.max_request_header_size;
    let mut buf = BytesMut::new();
    let mut scan = Scan::default();
    let res = std::future::poll_fn(|cx| {
        loop {
            if buf.capacity() == 0 {
                buf = worker.buffers.take();
            }
            let limit = cap.saturating_sub(buf.len());
            if buf.len() == buf.capacity() {
                buf.reserve(limit);
            }
            let read = {
                let mut room = (&mut buf).limit(limit);
                std::pin::pin!(io.read_buf(&mut room)).poll(cx)
            };
            match read {
                Poll::Pending => {
                    if buf.is_empty() {
                        worker.buffers.give(std::mem::take(&mut buf));
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(Err(Head::Closed)),
                Poll::Ready(Ok(_)) => {}
            }
            let end = scan.head_end(&buf);
            if scan.lines > MAX_HEADERS {
                return Poll::Ready(Err(Head::TooManyLines));
            }
            if let Some(end) = end {
                return Poll::Ready(if end <= cap {
                    Ok(())
                } else {
                    Err(Head::TooLarge)
                });
            }
            if buf.len() >= cap {
                return Poll::Ready(Err(Head::TooLarge));
            }
        }
    })
    .await;
    match res {
        Ok(()) => Ok(buf),
        Err(e) => {
            buf.clear();
            worker.buffers.give(buf);
            Err(e)
        }
    }
}

/// How far a request head has been scanned for its end.
#[derive(Debug, Default)]
struct Scan {
    /// Bytes looked at: the next line end to look at is at or after this.
    at: usize,
    /// Line ends seen that did not end the head: the request line's and
    /// those of every header line but the last, so, once the head is
    /// complete, the number of header lines.
    lines: usize,
}

impl Scan {
    /// The end of the request head in `buf` (the index after its empty
    /// line), if it is there, looking only at bytes not looked at before.
    /// Lines end in CRLF, or in a bare LF as hyper also accepts.
    fn head_end(&mut self, buf: &[u8]) -> Option<usize> {
        while let Some(i) = buf[self.at..].iter().position(|&b| b == b'\n') {
            let lf = self.at + i;
            match &buf[lf + 1..] {
                [b'\n', ..] => return Some(lf + 2),
                [b'\r', b'\n', ..] => return Some(lf + 3),
                // What follows this line end has not arrived yet.
                [] | [b'\r'] => {
                    self.at = lf;
                    return None;
                }
                _ => {
                    self.lines += 1;
                    self.at = lf + 1;
                }
            }
        }
        self.at = buf.len();
        None
    }
}

/// The answer to a head over the cap, after which the connection closes.
const TOO_LARGE: &[u8] = b"HTTP/1.1 431 Request Header Fields Too Large\r\n\
    content-type: text/plain; charset=utf-8\r\ncontent-length: 47\r\n\
    connection: close\r\n\r\nrequest head exceeds --max-request-header-size\n";

/// The answer to more than [`MAX_HEADERS`] header lines.
const TOO_MANY: &[u8] = b"HTTP/1.1 431 Request Header Fields Too Large\r\n\
    content-type: text/plain; charset=utf-8\r\ncontent-length: 27\r\n\
    connection: close\r\n\r\nmore than 100 header lines\n";

/// Sends `answer` and closes. What the client sent past the head is not
/// read: draining it would keep a read buffer busy per connection (on
/// tokio-uring, 1,000 connections sending 384 KB heads held 42 MB that
/// way; on the io_uring loop it would hold the worker's receive buffers),
/// and closing with bytes unread resets the connection, which
/// the client sees after the answer, already sent ahead of our FIN.
async fn refuse<S: Stream>(mut io: S, answer: &[u8]) {
    if io.write_all(answer).await.is_ok() {
        let _ = io.shutdown().await;
    }
}

/// A connection whose request head was read ahead: hyper reads `head`
/// first, then the socket.
struct Replay<S> {
    head: BytesMut,
    io: S,
}

impl<S: Stream> AsyncRead for Replay<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.head.is_empty() {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        }
        let n = this.head.len().min(buf.remaining());
        buf.put_slice(&this.head[..n]);
        this.head.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<S: Stream> AsyncWrite for Replay<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, data)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        parts: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, parts)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// hyper on a connection whose request head has arrived: answers it, and
/// returns the connection if it was upgraded.
async fn respond<S: Stream, H: Handler>(
    io: Replay<S>,
    worker: Rc<Worker<H>>,
) -> Option<Upgraded<S, H>> {
    let slot: Accepted<H> = Rc::default();
    let peer = io.io.peer_addr();
    let service = {
        let worker = worker.clone();
        let slot = slot.clone();
        hyper::service::service_fn(move |req| -> Ready<Result<Response<Body>, Infallible>> {
            let mut res = route(&req, peer, &worker, &slot);
            if res.status() != StatusCode::SWITCHING_PROTOCOLS {
                res.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            ready(Ok(res))
        })
    };
    // hyper's own cap on its read buffer (it takes no less than 8 KiB): the
    // head it parses was already bounded by `read_head`.
    let cap = worker.shared.config.max_request_header_size.max(8 << 10);
    let conn = http1::Builder::new()
        .max_buf_size(cap)
        .max_headers(MAX_HEADERS)
        .serve_connection(TokioIo::new(io), service)
        .without_shutdown();
    let parts = match conn.await {
        Ok(parts) => parts,
        Err(e) => {
            tracing::debug!(error = %e, "http connection ended");
            return None;
        }
    };
    let (slot, state, deflate) = slot.borrow_mut().take()?;
    let Replay { mut head, io } = parts.io.into_inner();
    // hyper read from the front of `head`: what it read and did not parse
    // comes before what it left in `head`.
    let read_ahead = if head.is_empty() {
        parts.read_buf
    } else {
        let mut all = BytesMut::with_capacity(parts.read_buf.len() + head.len());
        all.extend_from_slice(&parts.read_buf);
        all.extend_from_slice(&head);
        head.clear();
        all.freeze()
    };
    worker.buffers.give(head);
    Some(Upgraded {
        io,
        read_ahead,
        slot,
        state,
        deflate,
    })
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut res = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}

fn route<H: Handler>(
    req: &Request<Incoming>,
    peer: Option<std::net::SocketAddr>,
    worker: &Rc<Worker<H>>,
    slot: &Accepted<H>,
) -> Response<Body> {
    let shared = &worker.shared;
    let path = req.uri().path();
    if path == shared.config.path {
        return websocket(req, peer, worker, slot);
    }
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        let mut res = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        res.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return res;
    }
    match path {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" if shared.drain.is_draining() => {
            text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
        }
        "/readyz" => text(StatusCode::OK, "ready\n"),
        "/metrics" => {
            let mut res = Response::new(Full::new(Bytes::from(shared.metrics.render())));
            res.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(metrics::CONTENT_TYPE),
            );
            res
        }
        _ => match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            worker.handler.page(path)
        })) {
            Err(_) => {
                worker.metrics.handler_panics.add(1);
                tracing::error!(path, "handler panicked in page");
                text(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n")
            }
            Ok(Some(page)) => {
                let mut res = Response::new(Full::new(page.body));
                match HeaderValue::from_str(page.content_type) {
                    Ok(value) => drop(res.headers_mut().insert(header::CONTENT_TYPE, value)),
                    Err(_) => tracing::warn!(path, "a page's content type is not a header value"),
                }
                res
            }
            Ok(None) => text(StatusCode::NOT_FOUND, "not found\n"),
        },
    }
}

fn reject<H: Handler>(rejection: Rejection, worker: &Worker<H>) -> Response<Body> {
    worker.metrics.handshake_failed(rejection.failure);
    tracing::debug!(status = %rejection.status, reason = rejection.reason, "upgrade refused");
    let mut res = Response::new(Full::new(Bytes::from(format!("{}\n", rejection.reason))));
    *res.status_mut() = rejection.status;
    let headers = res.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    upgrade::rejection_headers(&rejection, headers);
    res
}

fn websocket<H: Handler>(
    req: &Request<Incoming>,
    peer: Option<std::net::SocketAddr>,
    worker: &Rc<Worker<H>>,
    slot: &Accepted<H>,
) -> Response<Body> {
    let accept = match upgrade::validate(req) {
        Ok(accept) => accept,
        Err(rejection) => return reject(rejection, worker),
    };
    let shared = &worker.shared;
    if shared.drain.is_draining() {
        return reject(
            Rejection {
                status: StatusCode::SERVICE_UNAVAILABLE,
                reason: "server is draining: reconnect to another instance",
                failure: HandshakeFailure::Draining,
            },
            worker,
        );
    }
    let request = handler::Request { req, peer };
    let accepted = match worker.handler.upgrade(&request) {
        Ok(accepted) => accepted,
        Err(refuse) => return refused(refuse, worker),
    };
    let protocol = match accepted.protocol.as_deref() {
        None => None,
        Some(p) => match chosen(p, &request) {
            Some(value) => Some(value),
            None => {
                tracing::error!(
                    protocol = p,
                    "the handler chose a subprotocol the client did not offer"
                );
                return text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the server chose a subprotocol the client did not offer\n",
                );
            }
        },
    };
    let open = &shared.metrics.open_sessions;
    if open.fetch_add(1, Ordering::AcqRel) >= shared.max_connections {
        open.fetch_sub(1, Ordering::AcqRel);
        return reject(
            Rejection {
                status: StatusCode::SERVICE_UNAVAILABLE,
                reason: "server at --max-connections: retry later",
                failure: HandshakeFailure::Capacity,
            },
            worker,
        );
    }
    let deflate = match shared.config.deflate {
        Deflate::Off => None,
        mode => deflate::negotiate(
            req.headers()
                .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
                .iter()
                .map(HeaderValue::as_bytes),
            mode == Deflate::Dedicated,
        ),
    };
    *slot.borrow_mut() = Some((
        SessionSlot::new(worker.clone()),
        accepted.state,
        deflate.map(|(agreed, _)| agreed),
    ));
    let mut res = Response::new(Full::new(Bytes::new()));
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = res.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    if let Some(protocol) = protocol {
        headers.insert(header::SEC_WEBSOCKET_PROTOCOL, protocol);
    }
    if let Some((_, answer)) = deflate {
        headers.insert(
            header::SEC_WEBSOCKET_EXTENSIONS,
            HeaderValue::from_static(answer),
        );
    }
    res
}

/// The answer to an upgrade the handler refused.
fn refused<H: Handler>(refuse: handler::Refuse, worker: &Worker<H>) -> Response<Body> {
    worker.metrics.handshake_failed(HandshakeFailure::Refused);
    let status = StatusCode::from_u16(refuse.status)
        .ok()
        .filter(|s| s.is_client_error() || s.is_server_error())
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    tracing::debug!(%status, reason = %refuse.reason, "upgrade refused by the handler");
    let mut res = Response::new(Full::new(Bytes::from(format!("{}\n", refuse.reason))));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}

/// The `Sec-WebSocket-Protocol` answer for the subprotocol the handler
/// chose, if it is one the client offered (else the client would fail the
/// connection: RFC 6455 §4.1, so the upgrade is answered `500`).
fn chosen(protocol: &str, req: &handler::Request<'_>) -> Option<HeaderValue> {
    if !req.protocols().any(|p| p == protocol) {
        return None;
    }
    HeaderValue::from_str(protocol).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_head_ends_at_its_empty_line_however_it_is_split() {
        let req = b"GET /ws HTTP/1.1\r\nHost: x\r\nA: b\r\n\r\n\x81\x80";
        let end = 35;
        assert_eq!(Scan::default().head_end(req), Some(end));
        // Arriving a byte at a time.
        let mut scan = Scan::default();
        let at = (1..=req.len()).find_map(|n| scan.head_end(&req[..n]));
        assert_eq!((at, scan.lines), (Some(end), 2), "two header lines");
        let mut scan = Scan::default();
        assert_eq!(scan.head_end(b"GET / HTTP/1.1\nHost: x\n\nrest"), Some(24));
        assert_eq!(scan.lines, 1);
        for partial in [
            &b"GET / HTTP/1.1\r\nHost: x\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: x\r\n\r",
        ] {
            assert_eq!(Scan::default().head_end(partial), None);
        }
        let mut scan = Scan::default();
        assert_eq!(scan.head_end(b"GET / HTTP/1.1\r\n\r\n"), Some(18));
        assert_eq!(scan.lines, 0, "no header lines");
    }

    #[test]
    fn the_431_answers_are_well_formed() {
        for answer in [TOO_LARGE, TOO_MANY] {
            let text = std::str::from_utf8(answer).unwrap();
            let (head, body) = text.split_once("\r\n\r\n").unwrap();
            assert!(head.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
            assert!(
                head.contains(&format!("content-length: {}", body.len())),
                "{text}"
            );
        }
    }
}
