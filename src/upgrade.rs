//! The WebSocket opening handshake (RFC 6455 §4.2): request validation and
//! the `101 Switching Protocols` response.
//!
//! Pure functions over `http` types, so they are tested (and fuzzed) without
//! a socket. Taking the connection back from hyper afterwards is `http.rs`'s job.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, StatusCode, Version};
use sha1::{Digest, Sha1};

use crate::metrics::HandshakeFailure;

/// The GUID RFC 6455 appends to the client's key.
const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Why a request cannot be upgraded, and how to answer it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// Status of the answer (400, 426 or 503).
    pub status: StatusCode,
    /// One line for the body.
    pub reason: &'static str,
    /// The metrics label.
    pub failure: HandshakeFailure,
}

impl Rejection {
    fn new(status: StatusCode, reason: &'static str, failure: HandshakeFailure) -> Self {
        Rejection {
            status,
            reason,
            failure,
        }
    }
}

/// True if the comma-separated header `name` contains `token` (ASCII
/// case-insensitive), looking at every occurrence of the header.
fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// Checks an upgrade request and returns the `Sec-WebSocket-Accept` value.
///
/// The order of the checks decides the answer when several things are
/// wrong: method (400), no `Upgrade: websocket` (426), HTTP version (400),
/// `Connection: upgrade` (400), version (426 with `Sec-WebSocket-Version: 13`),
/// key (400).
pub fn validate<B>(req: &Request<B>) -> Result<HeaderValue, Rejection> {
    use HandshakeFailure as F;
    let h = req.headers();
    if req.method() != Method::GET {
        return Err(Rejection::new(
            StatusCode::BAD_REQUEST,
            "WebSocket upgrades must use GET",
            F::Method,
        ));
    }
    if !has_token(h, header::UPGRADE, "websocket") {
        return Err(Rejection::new(
            StatusCode::UPGRADE_REQUIRED,
            "this endpoint speaks WebSocket only: send Upgrade: websocket",
            F::NotUpgrade,
        ));
    }
    if req.version() != Version::HTTP_11 {
        return Err(Rejection::new(
            StatusCode::BAD_REQUEST,
            "WebSocket upgrades need HTTP/1.1",
            F::HttpVersion,
        ));
    }
    if !has_token(h, header::CONNECTION, "upgrade") {
        return Err(Rejection::new(
            StatusCode::BAD_REQUEST,
            "the Connection header must contain the upgrade token",
            F::ConnectionHeader,
        ));
    }
    if h.get(header::SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        return Err(Rejection::new(
            StatusCode::UPGRADE_REQUIRED,
            "unsupported WebSocket version: only 13 is spoken",
            F::Version,
        ));
    }
    let mut keys = h.get_all(header::SEC_WEBSOCKET_KEY).iter();
    let key = match (keys.next(), keys.next()) {
        (Some(k), None) if key_is_valid(k.as_bytes()) => k,
        _ => {
            return Err(Rejection::new(
                StatusCode::BAD_REQUEST,
                "Sec-WebSocket-Key must be one base64-encoded 16-byte value",
                F::Key,
            ));
        }
    };
    Ok(accept_key(key.as_bytes()))
}

/// A key is the base64 encoding of 16 bytes: 24 characters ending in `==`.
fn key_is_valid(key: &[u8]) -> bool {
    let mut out = [0u8; 18];
    key.len() == 24 && STANDARD.decode_slice(key, &mut out) == Ok(16)
}

/// `Sec-WebSocket-Accept` for a client key: base64(SHA-1(key + GUID)).
pub fn accept_key(key: &[u8]) -> HeaderValue {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(GUID);
    let mut out = [0u8; 28];
    let n = STANDARD
        .encode_slice(sha.finalize(), &mut out)
        .expect("28 bytes hold base64 of 20");
    HeaderValue::from_bytes(&out[..n]).expect("base64 is a valid header value")
}

/// Headers that go on every rejection of the WebSocket path.
pub fn rejection_headers(rejection: &Rejection, headers: &mut HeaderMap) {
    match rejection.failure {
        HandshakeFailure::Version => {
            headers.insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            );
        }
        HandshakeFailure::NotUpgrade => {
            headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        }
        HandshakeFailure::Capacity | HandshakeFailure::Draining => {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> hyper::http::request::Builder {
        Request::get("/ws")
            .header("Host", "x")
            .header("Upgrade", "websocket")
            .header("Connection", "keep-alive, Upgrade")
            .header("Sec-WebSocket-Version", "13")
    }

    #[test]
    fn rfc_example_key() {
        // RFC 6455 §1.3.
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        let req = request()
            .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
            .body(())
            .unwrap();
        assert_eq!(validate(&req).unwrap(), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn rejections() {
        let failure = |req: Request<()>| validate(&req).unwrap_err();
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let r = failure(request().body(()).unwrap());
        assert_eq!(
            (r.status, r.failure),
            (StatusCode::BAD_REQUEST, HandshakeFailure::Key)
        );
        let r = failure(
            request()
                .header("Sec-WebSocket-Key", "c2hvcnQ=")
                .body(())
                .unwrap(),
        );
        assert_eq!(r.failure, HandshakeFailure::Key);
        let r = failure(
            request()
                .header("Sec-WebSocket-Key", key)
                .header("Sec-WebSocket-Key", key)
                .body(())
                .unwrap(),
        );
        assert_eq!(r.failure, HandshakeFailure::Key);
        let r = failure(Request::get("/ws").body(()).unwrap());
        assert_eq!(
            (r.status, r.failure),
            (StatusCode::UPGRADE_REQUIRED, HandshakeFailure::NotUpgrade)
        );
        let mut req = request().header("Sec-WebSocket-Key", key).body(()).unwrap();
        *req.method_mut() = Method::POST;
        assert_eq!(failure(req).failure, HandshakeFailure::Method);
        let mut req = request().header("Sec-WebSocket-Key", key).body(()).unwrap();
        req.headers_mut()
            .insert("Sec-WebSocket-Version", HeaderValue::from_static("8"));
        let r = failure(req);
        assert_eq!(
            (r.status, r.failure),
            (StatusCode::UPGRADE_REQUIRED, HandshakeFailure::Version)
        );
        let mut req = request().header("Sec-WebSocket-Key", key).body(()).unwrap();
        req.headers_mut()
            .insert("Connection", HeaderValue::from_static("keep-alive"));
        assert_eq!(failure(req).failure, HandshakeFailure::ConnectionHeader);
    }
}
