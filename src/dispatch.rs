//! Calling the application: each handler callback runs here, with a
//! [`Conn`] over the connection's state and the worker's spare send buffer,
//! inside `catch_unwind`, so that the session (`crate::session`) deals only
//! in what the callback asked for (`Requests`) and what it sent.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use bytes::BytesMut;

use crate::context::{SessionSlot, Worker};
use crate::deflate::{Agreed, Codec};
use crate::handler::{Conn, Handler, Mailbox, Membership, Message, Requests};
use crate::io::Stream;

/// The connection a callback runs for, beside its state.
pub(crate) struct Link<'a, S> {
    /// Its socket (the peer's address).
    pub stream: &'a S,
    /// Its mailbox, if a `Sender` was made.
    pub mailbox: Option<Arc<Mailbox>>,
    /// permessage-deflate, if negotiated.
    pub deflate: Option<Agreed>,
}

/// Runs one handler callback with a [`Conn`] on `state`, catching a panic
/// (`requests.panicked`). Sends are framed in the worker's spare buffer;
/// what was sent is returned, and the worker's next callback starts from a
/// pooled buffer.
pub(crate) fn call<S: Stream, H: Handler>(
    slot: &SessionSlot<H>,
    state: &mut H::State,
    link: Link<'_, S>,
    message: Option<Message<'_>>,
    requests: &mut Requests,
    f: impl FnOnce(&H, &mut Conn<'_, H::State>),
) -> Option<BytesMut> {
    let worker = &**slot.worker();
    // Callbacks do not nest (a callback cannot reach another session's), so
    // the spare buffer is borrowed for this one's length.
    let mut out = worker.out.borrow_mut();
    if out.capacity() == 0 {
        *out = worker.buffers.take();
    }
    let peer = || link.stream.peer_addr();
    let mut conn = Conn::new(
        state,
        &mut out,
        message,
        &peer,
        link.mailbox,
        Membership {
            topics: &worker.topics,
            sessions: &worker.sessions,
            key: slot.key(),
            limits: worker.backpressure,
            deflate: link.deflate.map(|agreed| Codec {
                deflater: &worker.deflater,
                agreed,
                key: slot.key(),
            }),
        },
        requests,
    );
    if catch_unwind(AssertUnwindSafe(|| f(&worker.handler, &mut conn))).is_err() {
        requests.panicked = true;
        out.clear();
        return None;
    }
    if out.is_empty() {
        return None;
    }
    Some(std::mem::take(&mut *out))
}

/// Runs a callback that cannot answer (`error`, `close`), counting a panic.
pub(crate) fn guard<H: Handler>(worker: &Worker<H>, f: impl FnOnce()) {
    if catch_unwind(AssertUnwindSafe(f)).is_err() {
        worker.metrics.handler_panics.add(1);
        tracing::error!("handler panicked in its close or error callback");
    }
}
