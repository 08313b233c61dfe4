//! tokio-tungstenite 0.30 echo server with default settings, as in
//! tokio-tungstenite's `examples/echo-server.rs` (`accept_async`, then the
//! stream of text/binary messages forwarded back into the sink), on a tokio
//! current-thread runtime: one thread, for a per-core comparison with
//! `ringws --workers 1`.
//!
//! Differences from the example: mimalloc as the global allocator (as in
//! ringws), `--port` on 127.0.0.1, TCP_NODELAY on accepted sockets (ringws sets
//! it), no logging per connection, and a failed handshake or a connection that
//! ends with an error is dropped instead of panicking the task.

use futures_util::{StreamExt, TryStreamExt, future};
use tokio::net::{TcpListener, TcpStream};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::io::Result<()> {
    let port = ringws_baselines::port_from_args();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;

    rt.block_on(async move {
        let addr = format!("127.0.0.1:{port}");
        let listener = TcpListener::bind(&addr).await?;
        println!(
            "tungstenite-echo (tokio-tungstenite 0.30, tokio current-thread) listening on {addr}"
        );
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            tokio::spawn(accept_connection(stream));
        }
    })
}

async fn accept_connection(stream: TcpStream) {
    let Ok(ws_stream) = tokio_tungstenite::accept_async(stream).await else {
        return;
    };
    let (write, read) = ws_stream.split();
    // We should not forward messages other than text or binary.
    let _ = read
        .try_filter(|msg| future::ready(msg.is_text() || msg.is_binary()))
        .forward(write)
        .await;
}
