//! One listening socket per worker on the same address (SO_REUSEPORT), so
//! the kernel spreads new connections over the workers.

use std::io;
use std::net::{SocketAddr, TcpListener};

use socket2::{Domain, Protocol, Socket, Type};

/// Listen backlog (the kernel caps it at `net.core.somaxconn`).
const BACKLOG: i32 = 4096;

/// Binds `count` listeners to `addr`. With port 0 the first picks a free
/// port and the others join it.
pub fn bind(addr: SocketAddr, count: usize) -> io::Result<Vec<TcpListener>> {
    let first = bind_one(addr)?;
    let addr = first.local_addr()?;
    let mut all = vec![first];
    for _ in 1..count {
        all.push(bind_one(addr)?);
    }
    Ok(all)
}

fn bind_one(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_tcp_nodelay(true)?;
    socket
        .bind(&addr.into())
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}
