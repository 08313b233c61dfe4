//! The epoll backend: a tokio current-thread runtime per worker.

use std::io;

use super::Handler;

/// A new current-thread tokio runtime with a `LocalSet` to run `!Send` tasks.
pub fn runtime() -> io::Result<(tokio::runtime::Runtime, tokio::task::LocalSet)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    Ok((rt, tokio::task::LocalSet::new()))
}

/// Accepts on `listener` forever; tokio's `TcpStream` is the stream.
pub async fn accept_loop<H: Handler>(
    listener: std::net::TcpListener,
    handler: H,
) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                handler.handle(stream);
            }
            Err(e) => super::accept_failed(e).await,
        }
    }
}
