//! The io_uring backend: tokio-uring runtimes and a poll adapter over its
//! completion-based `TcpStream`.
//!
//! # How the adapter works
//!
//! tokio-uring hands a buffer to the kernel with each operation and gives it
//! back on completion; hyper and fastwebsockets want poll-based
//! `AsyncRead`/`AsyncWrite`. [`UringStream`] keeps at most one read and one
//! write operation in flight. Both live inline in the (boxed once per
//! connection) adapter, so polling never allocates: the write as tokio-uring's
//! named `InFlightOneshot`, the read as the future of its `read` (unnameable,
//! hence a generic parameter built through a function pointer).
//!
//! * **Read**: `poll_read` first hands out bytes left from the last
//!   completion; otherwise it polls the in-flight read, or starts one into the
//!   adapter's own buffer and polls it. A read that is in flight when the
//!   caller stops polling (a `select!` that picked another branch) stays in
//!   flight and is picked up by the next `poll_read`: nothing is lost. The
//!   buffer starts at 64 bytes, grows fourfold whenever a read fills it (up to
//!   64 KiB) and shrinks fourfold (down to 64 bytes) after each run of 16
//!   reads that used less than a quarter of it, so a connection that carries
//!   small messages pins only a small buffer in its pending read, one that a
//!   burst grew gets back to the size of its traffic, and mixed sizes do not
//!   reallocate per message.
//! * **Write**: `poll_write` copies the caller's bytes into a staging buffer
//!   and returns at once (write-behind); a write operation sends the staged
//!   bytes (the rest of a short write is resubmitted first), and bytes
//!   written meanwhile are staged behind it and sent by the next operation,
//!   so several frames go out in one `send`. Staging is
//!   bounded: past 64 KiB `poll_write` waits. A sent buffer is kept for
//!   staging again unless it is over 48 KiB, or it is over 1 KiB, this write
//!   used less than half of it and so did the last 16 writes of the larger
//!   of the two buffers taking turns (a burst's buffers are dropped once the
//!   traffic is small again; with "a quarter", 1 KiB frames never counted as
//!   small against the 4 KiB buffers a stall left, and every stall left
//!   ~0.4 MB more resident over 100 connections). `poll_flush` waits until all is
//!   sent; a failed send is reported by the next write or flush. `poll_read`
//!   also drives the write side, since a session that wrote and went back to
//!   reading polls nothing else.
//! * **Drop**: dropping an in-flight operation does not cancel it, and its
//!   completion keeps the socket open; the adapter therefore shuts the socket
//!   down when dropped with an operation pending, which completes it.

use std::future::Future;
use std::io;
use std::net::Shutdown;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_uring::net::TcpStream;
use tokio_uring::{InFlightOneshot, OneshotOutputTransform, UnsubmittedOneshot};

use super::Handler;

/// Ring settings found to work by [`probe`].
#[derive(Copy, Clone, Debug)]
pub struct RingFlags {
    /// `IORING_SETUP_COOP_TASKRUN`: completions are delivered without an
    /// inter-processor interrupt (Linux ≥ 5.19). Measured to cut CPU per
    /// message by ~30 % (in the design's prototype); always set when the
    /// kernel has it.
    pub coop_taskrun: bool,
    /// Submission queue entries per ring.
    pub entries: u32,
}

const ENTRIES: u32 = 1024;

fn ring_builder(coop_taskrun: bool) -> io_uring::Builder {
    let mut b = io_uring::IoUring::builder();
    if coop_taskrun {
        b.setup_coop_taskrun();
    }
    b
}

/// Tries to create a ring the way the workers will; explains a failure.
pub fn probe() -> Result<RingFlags, String> {
    let flags = |coop_taskrun| RingFlags {
        coop_taskrun,
        entries: ENTRIES,
    };
    match ring_builder(true).build(8) {
        Ok(_) => Ok(flags(true)),
        // Kernels before 5.19 reject COOP_TASKRUN with EINVAL.
        Err(e) if e.kind() == io::ErrorKind::InvalidInput => match ring_builder(false).build(8) {
            Ok(_) => Ok(flags(false)),
            Err(e) => Err(explain(&e)),
        },
        Err(e) => Err(explain(&e)),
    }
}

/// Why `io_uring_setup` failed, in words an operator can act on.
pub(super) fn explain(e: &io::Error) -> String {
    let sysctl = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    match e.raw_os_error() {
        Some(1) if sysctl == "2" => {
            "io_uring_setup: EPERM: disabled by sysctl kernel.io_uring_disabled=2".to_owned()
        }
        Some(1) if sysctl == "1" => "io_uring_setup: EPERM: kernel.io_uring_disabled=1 and this \
                                     process is not in kernel.io_uring_group"
            .to_owned(),
        Some(1) => "io_uring_setup: EPERM: blocked by the seccomp profile (the default profiles \
                    of Docker >= 25 and containerd >= 2.0 forbid io_uring)"
            .to_owned(),
        Some(38) => "io_uring_setup: ENOSYS: this kernel has no io_uring".to_owned(),
        Some(12) => {
            "io_uring_setup: ENOMEM: the locked-memory limit (RLIMIT_MEMLOCK) is too low".to_owned()
        }
        _ => format!("io_uring_setup: {e}"),
    }
}

/// Runs `f` on a new tokio-uring runtime (never `tokio_uring::start`, which
/// panics when io_uring is unavailable).
pub fn block_on<F: Future>(flags: &RingFlags, f: F) -> io::Result<F::Output> {
    Ok(runtime(flags)?.block_on(f))
}

/// A tokio-uring runtime with `flags`.
pub fn runtime(flags: &RingFlags) -> io::Result<tokio_uring::Runtime> {
    let mut builder = tokio_uring::builder();
    builder
        .entries(flags.entries)
        .uring_builder(&ring_builder(flags.coop_taskrun));
    tokio_uring::Runtime::new(&builder)
}

/// Accepts on `listener` forever; each connection is a task, its stream a
/// boxed [`UringStream`].
pub async fn accept_loop<H: Handler>(
    listener: std::net::TcpListener,
    handler: H,
) -> io::Result<()> {
    let listener = tokio_uring::net::TcpListener::from_std(listener);
    loop {
        // Never cancelled: tokio-uring's accept is not cancellation-safe.
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                tokio::task::spawn_local(handler.connection(UringStream::boxed(stream)));
            }
            Err(e) => super::accept_failed(e).await,
        }
    }
}

/// Smallest read buffer, used while a connection is idle.
const READ_MIN: usize = 64;
/// Consecutive reads that used less than a quarter of their buffer (writes:
/// half), after which the read buffer shrinks fourfold (a write buffer is
/// dropped).
const SHRINK_AFTER: u8 = 16;
/// Largest read buffer.
const READ_MAX: usize = 64 << 10;
/// Staged write bytes beyond which `poll_write` waits for the socket.
const WRITE_HIGH_WATER: usize = 64 << 10;
/// Write buffers larger than this are released after use rather than kept
/// (a burst of large messages must not leave two large buffers behind on
/// every connection). 48 KiB: staging grows by doubling, so traffic around
/// 16 KiB ends up with ~32 KiB buffers, which must stay reusable.
const WRITE_RETAIN: usize = 48 << 10;
/// Write buffers up to this size are kept however little of them is used.
const WRITE_KEEP: usize = 1 << 10;

type ReadOutput = (io::Result<usize>, Vec<u8>);

async fn read_op(stream: Rc<TcpStream>, buf: Vec<u8>) -> ReadOutput {
    stream.read(buf).await
}

/// Names the in-flight type of a submitted tokio-uring operation.
trait Submit {
    type InFlight;
}

impl<D: 'static, T: OneshotOutputTransform<StoredData = D>> Submit for UnsubmittedOneshot<D, T> {
    type InFlight = InFlightOneshot<D, T>;
}

/// A submitted write: a named type (unlike `write_all`'s future), holding
/// the socket's fd and the buffer; 56 bytes.
type WriteOp = <tokio_uring::UnsubmittedWrite<Vec<u8>> as Submit>::InFlight;

pin_project! {
    /// tokio `AsyncRead + AsyncWrite` over a tokio-uring `TcpStream`
    /// (see the module documentation).
    ///
    /// `R` is the type of the read operation's future; it is unnameable, so
    /// the adapter is built by [`UringStream::boxed`].
    pub struct UringStream<R> {
        stream: Rc<TcpStream>,
        // Bytes of the last completed read not yet handed out: rbuf[rpos..].
        rbuf: Vec<u8>,
        rpos: usize,
        // Capacity of the next read.
        rcap: usize,
        // Consecutive reads that used less than a quarter of the buffer.
        small_reads: u8,
        // Consecutive writes that used less than half of their buffer.
        small_writes: u8,
        // A failed write poisons the stream: later writes report this.
        werr: Option<io::ErrorKind>,
        #[pin]
        read: Option<R>,
        // Bytes staged for the next write operation.
        wnext: Vec<u8>,
        // The buffer of the last completed write, reused for staging.
        wspare: Vec<u8>,
        write: Option<WriteOp>,
        new_read: fn(Rc<TcpStream>, Vec<u8>) -> R,
    }

    impl<R> PinnedDrop for UringStream<R> {
        fn drop(this: Pin<&mut Self>) {
            if this.read.is_some() || this.write.is_some() {
                // Completes the pending operations, which otherwise keep
                // the socket open until the peer sends something.
                let _ = this.stream.shutdown(Shutdown::Both);
            }
        }
    }
}

impl UringStream<()> {
    /// Wraps an accepted stream. Boxed once per connection so the adapter is
    /// `Unpin` and its inline read future never moves.
    pub fn boxed(stream: TcpStream) -> Pin<Box<UringStream<impl Future<Output = ReadOutput>>>> {
        Box::pin(UringStream {
            stream: Rc::new(stream),
            rbuf: Vec::new(),
            rpos: 0,
            rcap: READ_MIN,
            small_reads: 0,
            small_writes: 0,
            werr: None,
            read: None,
            wnext: Vec::new(),
            wspare: Vec::new(),
            write: None,
            new_read: read_op as fn(_, _) -> _,
        })
    }
}

impl<R> UringStream<R> {
    /// Drives the write side: completes the in-flight operation (resubmitting
    /// what a short write left) and starts the next one for staged bytes.
    /// `Ready(Ok)` means everything staged has been sent; `Pending` that an
    /// operation is in flight (waker registered).
    fn poll_write_progress(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        loop {
            if let Some(kind) = *this.werr {
                return Poll::Ready(Err(kind.into()));
            }
            if let Some(op) = this.write.as_mut() {
                let (res, mut buf) = ready!(Pin::new(op).poll(cx));
                *this.write = None;
                match res {
                    Ok(n) if n > 0 && n < buf.len() => {
                        // Short write: send the rest before anything staged.
                        buf.drain(..n);
                        *this.write = Some(this.stream.write(buf).submit());
                        continue;
                    }
                    Ok(0) if !buf.is_empty() => {
                        *this.werr = Some(io::ErrorKind::WriteZero);
                        return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                    }
                    Ok(_) => {
                        // Two buffers take turns (this one and the one now
                        // staging): a write is small next to the larger.
                        let largest = buf.capacity().max(this.wnext.capacity());
                        if buf.len() < largest / 2 {
                            *this.small_writes = this.small_writes.saturating_add(1);
                        } else {
                            *this.small_writes = 0;
                        }
                        let oversized = buf.capacity() > WRITE_KEEP
                            && buf.len() < buf.capacity() / 2
                            && *this.small_writes >= SHRINK_AFTER;
                        if buf.capacity() <= WRITE_RETAIN && !oversized {
                            buf.clear();
                            *this.wspare = buf;
                        }
                    }
                    Err(e) => {
                        *this.werr = Some(e.kind());
                        return Poll::Ready(Err(e));
                    }
                }
            }
            if this.wnext.is_empty() {
                return Poll::Ready(Ok(()));
            }
            let staged = std::mem::replace(this.wnext, std::mem::take(this.wspare));
            *this.write = Some(this.stream.write(staged).submit());
        }
    }

    fn poll_stage(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        stage: impl FnOnce(&mut Vec<u8>) -> usize,
    ) -> Poll<io::Result<usize>> {
        match self.as_mut().poll_write_progress(cx) {
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending if self.wnext.len() >= WRITE_HIGH_WATER => return Poll::Pending,
            _ => {}
        }
        let n = stage(self.as_mut().project().wnext);
        // Starts (and registers) the operation for what was just staged.
        if let Poll::Ready(Err(e)) = self.poll_write_progress(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }
}

impl<R> super::Stream for Pin<Box<UringStream<R>>>
where
    R: Future<Output = ReadOutput> + 'static,
{
    fn peer_addr(&self) -> Option<std::net::SocketAddr> {
        use std::os::fd::{AsRawFd, BorrowedFd};
        // SAFETY: the descriptor belongs to `self.stream`, which this borrow
        // does not outlive (it ends with this call), so it stays open.
        let fd = unsafe { BorrowedFd::borrow_raw(self.stream.as_raw_fd()) };
        super::peer_of(fd)
    }
}

impl<R> AsyncRead for UringStream<R>
where
    R: Future<Output = ReadOutput>,
{
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // Staged writes are sent by whoever polls next: a session waiting to
        // read must also push out what it wrote (a failure is kept in `werr`
        // for the next write).
        if self.write.is_some() || !self.wnext.is_empty() {
            let _ = self.as_mut().poll_write_progress(cx);
        }
        let mut this = self.project();
        if out.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if *this.rpos < this.rbuf.len() {
                let n = out.remaining().min(this.rbuf.len() - *this.rpos);
                out.put_slice(&this.rbuf[*this.rpos..*this.rpos + n]);
                *this.rpos += n;
                return Poll::Ready(Ok(()));
            }
            if let Some(op) = this.read.as_mut().as_pin_mut() {
                let (res, buf) = ready!(op.poll(cx));
                this.read.set(None);
                *this.rbuf = buf;
                *this.rpos = 0;
                let n = res?;
                if n == 0 {
                    return Poll::Ready(Ok(())); // end of stream
                }
                if n == this.rbuf.capacity() {
                    *this.rcap = (*this.rcap * 4).min(READ_MAX);
                    *this.small_reads = 0;
                } else if n < this.rbuf.capacity() / 4 {
                    // Shrink only after a run of small reads, so traffic that
                    // mixes sizes does not reallocate per message; by a
                    // quarter, which still holds every read of the run.
                    *this.small_reads = this.small_reads.saturating_add(1);
                    if *this.small_reads >= SHRINK_AFTER {
                        *this.rcap = (*this.rcap / 4).max(READ_MIN);
                        *this.small_reads = 0;
                    }
                } else {
                    *this.small_reads = 0;
                }
                continue;
            }
            let mut buf = std::mem::take(this.rbuf);
            buf.clear();
            if buf.capacity() != *this.rcap {
                buf = Vec::with_capacity(*this.rcap);
            }
            *this.rpos = 0;
            this.read
                .set(Some((this.new_read)(this.stream.clone(), buf)));
        }
    }
}

impl<R> AsyncWrite for UringStream<R> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_stage(cx, |staged| {
            staged.extend_from_slice(buf);
            buf.len()
        })
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.poll_stage(cx, |staged| {
            bufs.iter()
                .map(|b| {
                    staged.extend_from_slice(b);
                    b.len()
                })
                .sum()
        })
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_write_progress(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.as_mut().poll_write_progress(cx))?;
        Poll::Ready(self.stream.shutdown(Shutdown::Write))
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A burst grows the adapter's buffers; small traffic afterwards brings
    /// them back down, so a connection does not keep a burst's memory for
    /// the rest of its life.
    #[test]
    fn buffers_shrink_back_after_a_burst() {
        let flags = match probe() {
            Ok(flags) => flags,
            // CI sets this where io_uring must work: a skip there would
            // pass a test that did not run.
            Err(why) if std::env::var_os("RINGWS_REQUIRE_IO_URING").is_some() => {
                panic!("io_uring unavailable ({why}) with RINGWS_REQUIRE_IO_URING set")
            }
            Err(why) => {
                eprintln!("io_uring unavailable here ({why}): skipped");
                return;
            }
        };
        block_on(&flags, async {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let listener = tokio_uring::net::TcpListener::from_std(listener);
            let (accepted, _) = listener.accept().await.unwrap();
            let mut s = UringStream::boxed(accepted);
            let mut buf = vec![0u8; 64 << 10];

            // Read side: a 48 KiB burst, then small messages.
            client.write_all(&vec![1u8; 48 << 10]).unwrap();
            let mut got = 0;
            while got < 48 << 10 {
                got += s.read(&mut buf).await.unwrap();
            }
            assert_eq!(s.rcap, READ_MAX, "the burst grew the read buffer");
            for _ in 0..100 {
                client.write_all(&[2u8; 100]).unwrap();
                assert_eq!(s.read(&mut buf).await.unwrap(), 100);
            }
            assert_eq!(
                s.rcap, 256,
                "smallest size that 100-byte reads use a quarter of"
            );

            // Write side: a 40 KiB message, then small ones.
            s.write_all(&vec![3u8; 40 << 10]).await.unwrap();
            s.flush().await.unwrap();
            client.read_exact(&mut buf[..40 << 10]).unwrap();
            assert!(s.wspare.capacity() >= 40 << 10, "kept for reuse");
            for _ in 0..100 {
                s.write_all(&[4u8; 100]).await.unwrap();
                s.flush().await.unwrap();
                client.read_exact(&mut buf[..100]).unwrap();
            }
            assert!(
                s.wspare.capacity() <= WRITE_KEEP && s.wnext.capacity() <= WRITE_KEEP,
                "write buffers {} and {} bytes after 100 small writes",
                s.wspare.capacity(),
                s.wnext.capacity()
            );
        })
        .unwrap();
    }
}
