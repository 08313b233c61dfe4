//! The epoll backend: a tokio current-thread runtime per worker.

use std::future::Future;
use std::io;

use super::Handler;

/// Runs `f` on a new current-thread tokio runtime with a `LocalSet`.
pub fn block_on<F: Future>(f: F) -> io::Result<F::Output> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    Ok(tokio::task::LocalSet::new().block_on(&rt, f))
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
