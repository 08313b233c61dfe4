//! `session`: a valid upgrade request, then an arbitrary client byte stream
//! split at arbitrary points, served by `Standalone` over a duplex.
//!
//! Input: `[flags] [n] [n × u16 cut points] [client bytes…]`; flags bit 0
//! sends the first chunk in the same write as the request (pipelined behind
//! the upgrade), otherwise the client waits for the 101 first; `n` is the
//! low nibble. The server's answer must be exactly what the reference model
//! (`ringws_fuzz::expect`) predicts: every data frame echoed with its opcode,
//! FIN bit and payload, a Pong per Ping, then the right Close (or none if
//! the stream just ended), nothing after it, no masked frame; and the heap
//! must stay bounded whatever lengths the frames claim.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringws_fuzz::*;

/// Heap growth allowed for one connection beyond 8× its input (runtime
/// bookkeeping, hyper's buffers, one 8 KiB read buffer, the duplex pipe).
const HEAP_SLACK: usize = 512 << 10;

fuzz_target!(|data: &[u8]| {
    init();
    let (flags, rest) = data.split_first().unwrap_or((&0, &[]));
    let (n, rest) = rest.split_first().unwrap_or((&0, &[]));
    let n = usize::from(n & 0x0f).min(rest.len() / 2);
    let (cuts, wire) = rest.split_at(n * 2);
    let cuts: Vec<u16> = cuts
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    let plan = Plan {
        request: UPGRADE,
        chunks: split_at(wire, &cuts),
        pipelined: flags & 1 != 0,
        eof_early: false,
    };
    let (out, heap) = exchange(&plan);
    let context = || {
        format!(
            "plan: pipelined={} cuts={cuts:?}\nwire: {}\nout: {}",
            plan.pipelined,
            hex(wire),
            hex(&out)
        )
    };
    assert!(
        heap.peak <= 8 * data.len() + HEAP_SLACK && heap.largest <= MAX_ALLOCATION,
        "heap: {heap:?} for {} bytes of input\n{}",
        data.len(),
        context()
    );
    let Some((status, head, frames)) = response_head(&out) else {
        panic!("no response head\n{}", context());
    };
    assert_eq!(status, 101, "{head}\n{}", context());
    assert!(
        head.to_ascii_lowercase().contains(&format!(
            "sec-websocket-accept: {}\r\n",
            ACCEPT.to_ascii_lowercase()
        )),
        "{head}"
    );
    let frames = server_frames(frames).unwrap_or_else(|e| panic!("{e}\n{}", context()));
    check(&expect(wire, MAX_MESSAGE), &frames, &context);
});
