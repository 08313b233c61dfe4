//! The HTTP/1.1 phase of every connection: routes, probes, metrics, and the
//! hand-off of upgraded connections to the WebSocket session.
//!
//! hyper serves the connection *without* its upgrade machinery (which needs
//! `Send` I/O, and the io_uring stream is `!Send`). The `/ws` route answers
//! `101` itself; the connection is then driven with `without_shutdown()` and
//! taken apart with `into_parts()`, and the bytes hyper read past the request
//! (often the client's first frame) are handed to the session, which parses
//! them before reading from the socket.

use std::cell::RefCell;
use std::convert::Infallible;
use std::future::{Ready, ready};
use std::rc::Rc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use crate::io::Stream;
use crate::metrics::{self, HandshakeFailure};
use crate::upgrade::{self, Rejection};
use crate::worker::{SessionSlot, Worker};

type Body = Full<Bytes>;

/// A connection that completed the WebSocket handshake.
pub struct Upgraded<S> {
    /// The connection.
    pub io: S,
    /// Bytes hyper read past the request (often the client's first frame):
    /// the session must parse them before reading from `io`.
    pub read_ahead: Bytes,
    /// The session's place in `--max-connections`.
    pub slot: SessionSlot,
}

/// Serves HTTP on `io` until the connection closes (`None`) or is upgraded.
pub async fn serve<S: Stream>(io: S, worker: Rc<Worker>) -> Option<Upgraded<S>> {
    let slot: Rc<RefCell<Option<SessionSlot>>> = Rc::default();
    let service = {
        let worker = worker.clone();
        let slot = slot.clone();
        hyper::service::service_fn(move |req| -> Ready<Result<Response<Body>, Infallible>> {
            ready(Ok(route(&req, &worker, &slot)))
        })
    };
    let cfg = &worker.shared.config;
    let conn = http1::Builder::new()
        .timer(crate::timer::HyperTimer)
        .header_read_timeout(cfg.handshake_timeout)
        .serve_connection(TokioIo::new(io), service)
        .without_shutdown();
    let parts = match conn.await {
        Ok(parts) => parts,
        Err(e) => {
            if e.is_timeout() {
                worker.metrics.handshake_failed(HandshakeFailure::Timeout);
            }
            tracing::debug!(error = %e, "http connection ended");
            return None;
        }
    };
    let slot = slot.borrow_mut().take()?;
    Some(Upgraded {
        io: parts.io.into_inner(),
        read_ahead: parts.read_buf,
        slot,
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

fn route(
    req: &Request<Incoming>,
    worker: &Rc<Worker>,
    slot: &RefCell<Option<SessionSlot>>,
) -> Response<Body> {
    let shared = &worker.shared;
    let path = req.uri().path();
    if path == shared.config.path {
        return websocket(req, worker, slot);
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
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn reject(rejection: Rejection, worker: &Worker) -> Response<Body> {
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

fn websocket(
    req: &Request<Incoming>,
    worker: &Rc<Worker>,
    slot: &RefCell<Option<SessionSlot>>,
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
    *slot.borrow_mut() = Some(SessionSlot::new(worker.clone()));
    let mut res = Response::new(Full::new(Bytes::new()));
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = res.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    res
}
