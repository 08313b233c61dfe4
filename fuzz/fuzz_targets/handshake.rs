//! `handshake`: arbitrary bytes as the start of a connection, served by
//! `Standalone` over a duplex, then EOF (at once for inputs of odd length,
//! after the server's first answer for even ones).
//!
//! Checks: no panic, bounded heap, the first answer is one of the statuses
//! ringws (or hyper, for unparsable input) gives; a `101` only for a request
//! that `ringws::upgrade::validate` accepts (parsed independently with
//! httparse), with the right `Sec-WebSocket-Accept`; after a `101`, the bytes
//! that followed the request (what hyper read ahead) are served exactly as
//! the session model predicts. `validate` is also called directly on every
//! request httparse can parse.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringws_fuzz::*;

const HEAP_SLACK: usize = 1 << 20;

/// Statuses the first response may have: ringws' routes and refusals, and
/// hyper's answers to requests it cannot parse or serve.
const STATUSES: &[u16] = &[
    101, 200, 400, 404, 405, 408, 413, 414, 426, 431, 501, 503, 505,
];

/// The request at the start of `data`, if httparse reads a whole one:
/// (length, request for `validate`, has a body).
fn parse(data: &[u8]) -> Option<(usize, http::Request<()>, bool)> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    let httparse::Status::Complete(len) = req.parse(data).ok()? else {
        return None;
    };
    let mut b = http::Request::builder()
        .method(req.method?)
        .uri(req.path?)
        .version(if req.version? == 1 {
            http::Version::HTTP_11
        } else {
            http::Version::HTTP_10
        });
    let mut body = false;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length")
            || h.name.eq_ignore_ascii_case("transfer-encoding")
        {
            body = true;
        }
        b = b.header(h.name, h.value);
    }
    Some((len, b.body(()).ok()?, body))
}

fuzz_target!(|data: &[u8]| {
    init();
    let parsed = parse(data);
    let verdict = parsed
        .as_ref()
        .map(|(_, req, _)| ringws::upgrade::validate(req));
    if let Some(Ok(accept)) = &verdict {
        let key = parsed.as_ref().unwrap().1.headers()["sec-websocket-key"].as_bytes();
        assert_eq!(*accept, ringws::upgrade::accept_key(key));
    }
    let plan = Plan {
        request: data,
        chunks: Vec::new(),
        pipelined: true,
        // Odd lengths half-close at once, even ones after the answer.
        eof_early: data.len() % 2 == 1,
    };
    let (out, heap) = exchange(&plan);
    let context = || {
        format!(
            "input: {}\nout: {:?}",
            hex(data),
            String::from_utf8_lossy(&out)
        )
    };
    assert!(
        heap.peak <= 8 * data.len() + HEAP_SLACK && heap.largest <= MAX_ALLOCATION,
        "heap: {heap:?} for {} bytes of input\n{}",
        data.len(),
        context()
    );
    if out.is_empty() {
        return; // closed without answering (EOF inside a request)
    }
    let Some((status, head, rest)) = response_head(&out) else {
        panic!("answer is not an HTTP response\n{}", context());
    };
    assert!(head.starts_with("HTTP/1."), "{}", context());
    assert!(STATUSES.contains(&status), "status {status}\n{}", context());
    if status != 101 {
        return;
    }
    let Some((len, req, body)) = parsed else {
        // hyper accepted what httparse (default settings) did not: nothing
        // more to compare against.
        return;
    };
    assert!(
        req.uri().path() == "/ws",
        "101 for path {:?}\n{}",
        req.uri().path(),
        context()
    );
    let accept = match verdict {
        Some(Ok(accept)) => accept,
        other => panic!(
            "101 for a request validate() refuses: {other:?}\n{}",
            context()
        ),
    };
    assert!(
        head.contains(&format!(
            "sec-websocket-accept: {}\r\n",
            accept.to_str().unwrap()
        )),
        "{}",
        context()
    );
    let frames = server_frames(rest).unwrap_or_else(|e| panic!("{e}\n{}", context()));
    if !body {
        check(&expect(&data[len..], MAX_MESSAGE), &frames, &context);
    }
});
