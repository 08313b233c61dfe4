// Copyright 2023 Divy Srivastava <dj.srivastava23@gmail.com>
//
// Licensed under the Apache License, Version 2.0 (the "License");
// you may not use this file except in compliance with the License.
// You may obtain a copy of the License at
//
// http://www.apache.org/licenses/LICENSE-2.0
//
// Unless required by applicable law or agreed to in writing, software
// distributed under the License is distributed on an "AS IS" BASIS,
// WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
// See the License for the specific language governing permissions and
// limitations under the License.

//! _fastwebsockets_ is a minimal, fast WebSocket server implementation.
//!
//! [https://github.com/denoland/fastwebsockets](https://github.com/denoland/fastwebsockets)
//!
//! Passes the _Autobahn|TestSuite_ and fuzzed with LLVM's _libfuzzer_.
//!
//! You can use it as a raw websocket frame parser and deal with spec compliance yourself, or you can use it as a full-fledged websocket server.
//!
//! # Example
//!
//! ```
//! use tokio::net::TcpStream;
//! use fastwebsockets::{WebSocket, OpCode, Role};
//! use anyhow::Result;
//!
//! async fn handle(
//!   socket: TcpStream,
//! ) -> Result<()> {
//!   let mut ws = WebSocket::after_handshake(socket, Role::Server);
//!   ws.set_writev(false);
//!   ws.set_auto_close(true);
//!   ws.set_auto_pong(true);
//!
//!   loop {
//!     let frame = ws.read_frame().await?;
//!     match frame.opcode {
//!       OpCode::Close => break,
//!       OpCode::Text | OpCode::Binary => {
//!         ws.write_frame(frame).await?;
//!       }
//!       _ => {}
//!     }
//!   }
//!   Ok(())
//! }
//! ```
//!
//! ## Fragmentation
//!
//! By default, fastwebsockets will give the application raw frames with FIN set. Other
//! crates like tungstenite which will give you a single message with all the frames
//! concatenated.
//!
//! For concanated frames, use `FragmentCollector`:
//! ```
//! use fastwebsockets::{FragmentCollector, WebSocket, Role};
//! use tokio::net::TcpStream;
//! use anyhow::Result;
//!
//! async fn handle(
//!   socket: TcpStream,
//! ) -> Result<()> {
//!   let mut ws = WebSocket::after_handshake(socket, Role::Server);
//!   let mut ws = FragmentCollector::new(ws);
//!   let incoming = ws.read_frame().await?;
//!   // Always returns full messages
//!   assert!(incoming.fin);
//!   Ok(())
//! }
//! ```
//!
//! _permessage-deflate is not supported yet._
//!
//! ## HTTP Upgrades
//!
//! Enable the `upgrade` feature to do server-side upgrades and client-side
//! handshakes.
//!
//! This feature is powered by [hyper](https://docs.rs/hyper).
//!
//! ```
//! use fastwebsockets::upgrade::upgrade;
//! use http_body_util::Empty;
//! use hyper::{Request, body::{Incoming, Bytes}, Response};
//! use anyhow::Result;
//!
//! async fn server_upgrade(
//!   mut req: Request<Incoming>,
//! ) -> Result<Response<Empty<Bytes>>> {
//!   let (response, fut) = upgrade(&mut req)?;
//!
//!   tokio::spawn(async move {
//!     let ws = fut.await;
//!     // Do something with the websocket
//!   });
//!
//!   Ok(response)
//! }
//! ```
//!
//! Use the `handshake` module for client-side handshakes.
//!
//! ```
//! use fastwebsockets::handshake;
//! use fastwebsockets::FragmentCollector;
//! use hyper::{Request, body::Bytes, upgrade::Upgraded, header::{UPGRADE, CONNECTION}};
//! use http_body_util::Empty;
//! use hyper_util::rt::TokioIo;
//! use tokio::net::TcpStream;
//! use std::future::Future;
//! use anyhow::Result;
//!
//! async fn connect() -> Result<FragmentCollector<TokioIo<Upgraded>>> {
//!   let stream = TcpStream::connect("localhost:9001").await?;
//!
//!   let req = Request::builder()
//!     .method("GET")
//!     .uri("http://localhost:9001/")
//!     .header("Host", "localhost:9001")
//!     .header(UPGRADE, "websocket")
//!     .header(CONNECTION, "upgrade")
//!     .header(
//!       "Sec-WebSocket-Key",
//!       fastwebsockets::handshake::generate_key(),
//!     )
//!     .header("Sec-WebSocket-Version", "13")
//!     .body(Empty::<Bytes>::new())?;
//!
//!   let (ws, _) = handshake::client(&SpawnExecutor, req, stream).await?;
//!   Ok(FragmentCollector::new(ws))
//! }
//!
//! // Tie hyper's executor to tokio runtime
//! struct SpawnExecutor;
//!
//! impl<Fut> hyper::rt::Executor<Fut> for SpawnExecutor
//! where
//!   Fut: Future + Send + 'static,
//!   Fut::Output: Send + 'static,
//! {
//!   fn execute(&self, fut: Fut) {
//!     tokio::task::spawn(fut);
//!   }
//! }
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]

mod close;
mod error;
mod fragment;
mod frame;
/// Client handshake.
#[cfg(feature = "upgrade")]
#[cfg_attr(docsrs, doc(cfg(feature = "upgrade")))]
pub mod handshake;
mod mask;
/// HTTP upgrades.
#[cfg(feature = "upgrade")]
#[cfg_attr(docsrs, doc(cfg(feature = "upgrade")))]
pub mod upgrade;

use bytes::Buf;

use bytes::BytesMut;
#[cfg(feature = "unstable-split")]
use std::future::Future;

use tokio::io::AsyncRead;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWrite;
use tokio::io::AsyncWriteExt;

pub use crate::close::CloseCode;
pub use crate::error::WebSocketError;
pub use crate::fragment::FragmentCollector;
#[cfg(feature = "unstable-split")]
pub use crate::fragment::FragmentCollectorRead;
pub use crate::frame::Frame;
pub use crate::frame::OpCode;
pub use crate::frame::Payload;
pub use crate::mask::unmask;

#[derive(Copy, Clone, PartialEq)]
pub enum Role {
  Server,
  Client,
}

pub(crate) struct WriteHalf {
  role: Role,
  closed: bool,
  vectored: bool,
  auto_apply_mask: bool,
  writev_threshold: usize,
  write_buffer: Vec<u8>,
}

pub(crate) struct ReadHalf {
  role: Role,
  auto_apply_mask: bool,
  auto_close: bool,
  auto_pong: bool,
  writev_threshold: usize,
  max_message_size: usize,
  /// RSV1 is allowed on a data frame that begins a message: an extension
  /// that uses it (permessage-deflate) was negotiated (ringws patch).
  allow_rsv1: bool,
  buffer: BytesMut,
}

#[cfg(feature = "unstable-split")]
pub struct WebSocketRead<S> {
  stream: S,
  read_half: ReadHalf,
}

#[cfg(feature = "unstable-split")]
pub struct WebSocketWrite<S> {
  stream: S,
  write_half: WriteHalf,
}

#[cfg(feature = "unstable-split")]
/// Create a split `WebSocketRead`/`WebSocketWrite` pair from a stream that has already completed the WebSocket handshake.
pub fn after_handshake_split<R, W>(
  read: R,
  write: W,
  role: Role,
) -> (WebSocketRead<R>, WebSocketWrite<W>)
where
  R: AsyncRead + Unpin,
  W: AsyncWrite + Unpin,
{
  (
    WebSocketRead {
      stream: read,
      read_half: ReadHalf::after_handshake(role),
    },
    WebSocketWrite {
      stream: write,
      write_half: WriteHalf::after_handshake(role),
    },
  )
}

#[cfg(feature = "unstable-split")]
impl<'f, S> WebSocketRead<S> {
  /// Consumes the `WebSocketRead` and returns the underlying stream.
  #[inline]
  pub(crate) fn into_parts_internal(self) -> (S, ReadHalf) {
    (self.stream, self.read_half)
  }

  pub fn set_writev_threshold(&mut self, threshold: usize) {
    self.read_half.writev_threshold = threshold;
  }

  /// Sets whether to automatically close the connection when a close frame is received. When set to `false`, the application will have to manually send close frames.
  ///
  /// Default: `true`
  pub fn set_auto_close(&mut self, auto_close: bool) {
    self.read_half.auto_close = auto_close;
  }

  /// Sets whether to automatically send a pong frame when a ping frame is received.
  ///
  /// Default: `true`
  pub fn set_auto_pong(&mut self, auto_pong: bool) {
    self.read_half.auto_pong = auto_pong;
  }

  /// Sets the maximum message size in bytes. If a message is received that is larger than this, the connection will be closed.
  ///
  /// Default: 64 MiB
  pub fn set_max_message_size(&mut self, max_message_size: usize) {
    self.read_half.max_message_size = max_message_size;
  }

  /// Allows RSV1 on the first frame of a data message, for an extension
  /// that was negotiated and uses it, permessage-deflate (ringws patch).
  /// The frame reports it in [`InPlace::rsv1`]; RSV1 on a control frame
  /// stays an error. The caller checks continuation frames.
  pub fn set_rsv1_allowed(&mut self, allowed: bool) {
    self.read_half.allow_rsv1 = allowed;
  }

  /// Sets whether to automatically apply the mask to the frame payload.
  ///
  /// Default: `true`
  pub fn set_auto_apply_mask(&mut self, auto_apply_mask: bool) {
    self.read_half.auto_apply_mask = auto_apply_mask;
  }

  /// Reads a frame from the stream.
  pub async fn read_frame<R, E>(
    &mut self,
    send_fn: &mut impl FnMut(Frame<'f>) -> R,
  ) -> Result<Frame, WebSocketError>
  where
    S: AsyncRead + Unpin,
    E: Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    R: Future<Output = Result<(), E>>,
  {
    loop {
      let (res, obligated_send) =
        self.read_half.read_frame_inner(&mut self.stream).await;
      if let Some(frame) = obligated_send {
        let res = send_fn(frame).await;
        res.map_err(|e| WebSocketError::SendError(e.into()))?;
      }
      if let Some(frame) = res? {
        break Ok(frame);
      }
    }
  }
}

#[cfg(feature = "unstable-split")]
impl<'f, S> WebSocketWrite<S> {
  /// Sets whether to use vectored writes. This option does not guarantee that vectored writes will be always used.
  ///
  /// Default: `true`
  pub fn set_writev(&mut self, vectored: bool) {
    self.write_half.vectored = vectored;
  }

  pub fn set_writev_threshold(&mut self, threshold: usize) {
    self.write_half.writev_threshold = threshold;
  }

  /// Sets whether to automatically apply the mask to the frame payload.
  ///
  /// Default: `true`
  pub fn set_auto_apply_mask(&mut self, auto_apply_mask: bool) {
    self.write_half.auto_apply_mask = auto_apply_mask;
  }

  pub fn is_closed(&self) -> bool {
    self.write_half.closed
  }

  pub async fn write_frame(
    &mut self,
    frame: Frame<'f>,
  ) -> Result<(), WebSocketError>
  where
    S: AsyncWrite + Unpin,
  {
    self.write_half.write_frame(&mut self.stream, frame).await
  }

  pub async fn flush(&mut self) -> Result<(), WebSocketError>
  where
    S: AsyncWrite + Unpin,
  {
    flush(&mut self.stream).await
  }
}

#[inline]
async fn flush<S>(stream: &mut S) -> Result<(), WebSocketError>
where
  S: AsyncWrite + Unpin,
{
  stream.flush().await.map_err(WebSocketError::IoError)
}

/// WebSocket protocol implementation over an async stream.
pub struct WebSocket<S> {
  stream: S,
  write_half: WriteHalf,
  read_half: ReadHalf,
}

impl<'f, S> WebSocket<S> {
  /// Creates a new `WebSocket` from a stream that has already completed the WebSocket handshake.
  ///
  /// Use the `upgrade` feature to handle server upgrades and client handshakes.
  ///
  /// # Example
  ///
  /// ```
  /// use tokio::net::TcpStream;
  /// use fastwebsockets::{WebSocket, OpCode, Role};
  /// use anyhow::Result;
  ///
  /// async fn handle_client(
  ///   socket: TcpStream,
  /// ) -> Result<()> {
  ///   let mut ws = WebSocket::after_handshake(socket, Role::Server);
  ///   // ...
  ///   Ok(())
  /// }
  /// ```
  pub fn after_handshake(stream: S, role: Role) -> Self
  where
    S: AsyncRead + AsyncWrite + Unpin,
  {
    Self {
      stream,
      write_half: WriteHalf::after_handshake(role),
      read_half: ReadHalf::after_handshake(role),
    }
  }

  /// Split a [`WebSocket`] into a [`WebSocketRead`] and [`WebSocketWrite`] half. Note that the split version does not
  /// handle fragmented packets and you may wish to create a [`FragmentCollectorRead`] over top of the read half that
  /// is returned.
  #[cfg(feature = "unstable-split")]
  pub fn split<R, W>(
    self,
    split_fn: impl Fn(S) -> (R, W),
  ) -> (WebSocketRead<R>, WebSocketWrite<W>)
  where
    S: AsyncRead + AsyncWrite + Unpin,
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
  {
    let (stream, read, write) = self.into_parts_internal();
    let (r, w) = split_fn(stream);
    (
      WebSocketRead {
        stream: r,
        read_half: read,
      },
      WebSocketWrite {
        stream: w,
        write_half: write,
      },
    )
  }

  /// Consumes the `WebSocket` and returns the underlying stream.
  #[inline]
  pub fn into_inner(self) -> S {
    // self.write_half.into_inner().stream
    self.stream
  }

  /// Consumes the `WebSocket` and returns the underlying stream.
  #[inline]
  pub(crate) fn into_parts_internal(self) -> (S, ReadHalf, WriteHalf) {
    (self.stream, self.read_half, self.write_half)
  }

  /// Sets whether to use vectored writes. This option does not guarantee that vectored writes will be always used.
  ///
  /// Default: `true`
  pub fn set_writev(&mut self, vectored: bool) {
    self.write_half.vectored = vectored;
  }

  pub fn set_writev_threshold(&mut self, threshold: usize) {
    self.read_half.writev_threshold = threshold;
    self.write_half.writev_threshold = threshold;
  }

  /// Sets whether to automatically close the connection when a close frame is received. When set to `false`, the application will have to manually send close frames.
  ///
  /// Default: `true`
  pub fn set_auto_close(&mut self, auto_close: bool) {
    self.read_half.auto_close = auto_close;
  }

  /// Sets whether to automatically send a pong frame when a ping frame is received.
  ///
  /// Default: `true`
  pub fn set_auto_pong(&mut self, auto_pong: bool) {
    self.read_half.auto_pong = auto_pong;
  }

  /// Sets the maximum message size in bytes. If a message is received that is larger than this, the connection will be closed.
  ///
  /// Default: 64 MiB
  pub fn set_max_message_size(&mut self, max_message_size: usize) {
    self.read_half.max_message_size = max_message_size;
  }

  /// Allows RSV1 on the first frame of a data message, for an extension
  /// that was negotiated and uses it, permessage-deflate (ringws patch).
  /// The frame reports it in [`InPlace::rsv1`]; RSV1 on a control frame
  /// stays an error. The caller checks continuation frames.
  pub fn set_rsv1_allowed(&mut self, allowed: bool) {
    self.read_half.allow_rsv1 = allowed;
  }

  /// Sets whether to automatically apply the mask to the frame payload.
  ///
  /// Default: `true`
  pub fn set_auto_apply_mask(&mut self, auto_apply_mask: bool) {
    self.read_half.auto_apply_mask = auto_apply_mask;
    self.write_half.auto_apply_mask = auto_apply_mask;
  }

  pub fn is_closed(&self) -> bool {
    self.write_half.closed
  }

  /// Writes a frame to the stream.
  ///
  /// # Example
  ///
  /// ```
  /// use fastwebsockets::{WebSocket, Frame, OpCode};
  /// use tokio::net::TcpStream;
  /// use anyhow::Result;
  ///
  /// async fn send(
  ///   ws: &mut WebSocket<TcpStream>
  /// ) -> Result<()> {
  ///   let mut frame = Frame::binary(vec![0x01, 0x02, 0x03].into());
  ///   ws.write_frame(frame).await?;
  ///   Ok(())
  /// }
  /// ```
  pub async fn write_frame(
    &mut self,
    frame: Frame<'f>,
  ) -> Result<(), WebSocketError>
  where
    S: AsyncRead + AsyncWrite + Unpin,
  {
    self.write_half.write_frame(&mut self.stream, frame).await?;
    Ok(())
  }

  /// Flushes the data from the underlying stream.
  ///
  /// if the underlying stream is buffered (i.e: TlsStream<TcpStream>), it is needed to call flush
  /// to be sure that the written frame are correctly pushed down to the bottom stream/channel.
  ///
  pub async fn flush(&mut self) -> Result<(), WebSocketError>
  where
    S: AsyncWrite + Unpin,
  {
    flush(&mut self.stream).await
  }

  /// Reads a frame from the stream.
  ///
  /// This method will unmask the frame payload. For fragmented frames, use `FragmentCollector::read_frame`.
  ///
  /// Text frames payload is guaranteed to be valid UTF-8.
  ///
  /// # Example
  ///
  /// ```
  /// use fastwebsockets::{OpCode, WebSocket, Frame};
  /// use tokio::net::TcpStream;
  /// use anyhow::Result;
  ///
  /// async fn echo(
  ///   ws: &mut WebSocket<TcpStream>
  /// ) -> Result<()> {
  ///   let frame = ws.read_frame().await?;
  ///   match frame.opcode {
  ///     OpCode::Text | OpCode::Binary => {
  ///       ws.write_frame(frame).await?;
  ///     }
  ///     _ => {}
  ///   }
  ///   Ok(())
  /// }
  /// ```
  pub async fn read_frame(&mut self) -> Result<Frame<'f>, WebSocketError>
  where
    S: AsyncRead + AsyncWrite + Unpin,
  {
    loop {
      let (res, obligated_send) =
        self.read_half.read_frame_inner(&mut self.stream).await;
      let is_closed = self.write_half.closed;
      if let Some(frame) = obligated_send {
        if !is_closed {
          self.write_half.write_frame(&mut self.stream, frame).await?;
        }
      }
      if let Some(frame) = res? {
        if is_closed && frame.opcode != OpCode::Close {
          return Err(WebSocketError::ConnectionClosed);
        }
        break Ok(frame);
      }
    }
  }
  /// The buffer frames are read into (ringws patch), so a caller can lend
  /// it out while the connection is idle and back in when data arrives. An
  /// empty buffer with no capacity gets 8 KiB on the next read.
  pub fn read_buffer_mut(&mut self) -> &mut BytesMut {
    &mut self.read_half.buffer
  }

  /// Reads until one whole frame is buffered and leaves it there (ringws
  /// patch): the same parse and checks as [`WebSocket::read_frame`], the
  /// payload unmasked in place and a whole text frame validated, but nothing
  /// is split off or copied, and nothing is ever written, so `auto_close` and
  /// `auto_pong` do not apply. The payload is [`WebSocket::payload`]; an
  /// answer can be framed in the same bytes
  /// ([`WebSocket::frame_reply_in_place`], then [`InPlace::reply_range`]) and
  /// written with [`WebSocket::stream_and_buffer`]; [`WebSocket::consume`]
  /// then removes the frame. It keeps no state outside the read buffer, so
  /// it may be abandoned at any `Pending` and polled again later.
  ///
  /// The frame must be consumed before this is called again: a second call
  /// would unmask the same payload twice.
  pub fn poll_frame_in_place(
    &mut self,
    cx: &mut std::task::Context<'_>,
  ) -> std::task::Poll<Result<InPlace, WebSocketError>>
  where
    S: AsyncRead + Unpin,
  {
    self.poll_frame_in_place_within(cx, usize::MAX)
  }

  /// [`WebSocket::poll_frame_in_place`], with the read buffer never grown
  /// for a frame longer than `room` bytes (ringws patch): such a frame
  /// fails with [`WebSocketError::NeedsRoom`] and its length, as soon as its
  /// header is buffered, with nothing consumed, so that the caller can find
  /// the room (or wait for it) and poll again.
  pub fn poll_frame_in_place_within(
    &mut self,
    cx: &mut std::task::Context<'_>,
    room: usize,
  ) -> std::task::Poll<Result<InPlace, WebSocketError>>
  where
    S: AsyncRead + Unpin,
  {
    use std::future::Future;
    loop {
      // An empty buffer, the common case, costs no call.
      let head = if self.read_half.buffer.len() < 2 {
        None
      } else {
        self.read_half.parse_head(room)?
      };
      if let Some(head) = head {
        let frame_len = head.header_len + head.payload_len;
        let payload = &mut self.read_half.buffer[head.header_len..frame_len];
        if let Some(mask) = head.mask {
          if self.read_half.role == Role::Server
            && self.read_half.auto_apply_mask
          {
            mask::unmask(payload, mask);
          }
        }
        // A compressed payload is checked once inflated, by the caller.
        if head.opcode == OpCode::Text
          && head.fin
          && !head.rsv1
          && !frame::is_utf8(payload)
        {
          return std::task::Poll::Ready(Err(WebSocketError::InvalidUTF8));
        }
        return std::task::Poll::Ready(Ok(InPlace {
          fin: head.fin,
          rsv1: head.rsv1,
          opcode: head.opcode,
          masked: head.mask.is_some(),
          header_len: head.header_len,
          payload_len: head.payload_len,
        }));
      }
      self.read_half.reserve_for_read();
      let read =
        std::pin::pin!(self.stream.read_buf(&mut self.read_half.buffer));
      if std::task::ready!(read.poll(cx))? == 0 {
        return std::task::Poll::Ready(Err(WebSocketError::UnexpectedEOF));
      }
    }
  }

  /// The payload of `frame`, the frame [`WebSocket::poll_frame_in_place`]
  /// returned (ringws patch).
  pub fn payload(&self, frame: &InPlace) -> &[u8] {
    &self.read_half.buffer[frame.header_len..frame.frame_len()]
  }

  /// Writes an unmasked header for a frame of `frame`'s payload with `fin`
  /// and `opcode` into the bytes just before that payload (ringws patch),
  /// where `frame`'s own header was: it is never longer, since the payload
  /// length is the same and a server's frame carries no mask. The reply
  /// then lies at [`InPlace::reply_range`] in the read buffer, to be written
  /// from [`WebSocket::stream_and_buffer`] before the frame is consumed.
  pub fn frame_reply_in_place(
    &mut self,
    frame: &InPlace,
    fin: bool,
    opcode: OpCode,
  ) {
    let len = frame.payload_len;
    let range = frame.reply_range();
    // Written in place byte by byte (a copy of a variable-length header
    // costs a `memcpy` call per frame).
    let head = &mut self.read_half.buffer[range.start..frame.header_len];
    head[0] = (fin as u8) << 7 | opcode as u8;
    match head.len() {
      2 => head[1] = len as u8,
      4 => {
        head[1] = 126;
        head[2..4].copy_from_slice(&(len as u16).to_be_bytes());
      }
      _ => {
        head[1] = 127;
        head[2..10].copy_from_slice(&(len as u64).to_be_bytes());
      }
    }
  }

  /// The stream and the read buffer at once (ringws patch), to write a
  /// reply framed in place.
  /// The stream, beside a frame borrowed from the read buffer (ringws
  /// patch).
  pub fn stream(&self) -> &S {
    &self.stream
  }

  pub fn stream_and_buffer(&mut self) -> (&mut S, &BytesMut) {
    (&mut self.stream, &self.read_half.buffer)
  }

  /// Removes `frame`, the frame [`WebSocket::poll_frame_in_place`] returned,
  /// from the read buffer (ringws patch).
  pub fn consume(&mut self, frame: &InPlace) {
    let buffer = &mut self.read_half.buffer;
    buffer.advance(frame.frame_len());
    // The room left for reads shrinks with every frame consumed, and a frame
    // that no longer fits costs a second `recv` (one in eight 1 KiB messages
    // did). Once the room is less than a frame like this one and 4 KiB, go
    // back to the start of the allocation: no copy, since nothing is
    // buffered, and not on every frame, as it costs ~60 instructions.
    if buffer.is_empty() && buffer.capacity() < frame.frame_len() + 4096 {
      let _ = buffer.try_reclaim(buffer.capacity() + 1);
    }
  }
}

const MAX_HEADER_SIZE: usize = 14;
/// Most spare capacity reserved ahead of a frame's bytes (ringws patch).
const READ_AHEAD: usize = 64 << 10;

impl ReadHalf {
  pub fn after_handshake(role: Role) -> Self {
    // ringws patch: allocated on first read (`reserve_for_read`), not here, so a
    // caller that lends the buffer in and out (`read_buffer_mut`) pays nothing.
    let buffer = BytesMut::new();

    Self {
      role,
      auto_apply_mask: true,
      auto_close: true,
      auto_pong: true,
      writev_threshold: 1024,
      max_message_size: 64 << 20,
      allow_rsv1: false,
      buffer,
    }
  }

  /// Attempt to read a single frame from from the incoming stream, returning any send obligations if
  /// `auto_close` or `auto_pong` are enabled. Callers to this function are obligated to send the
  /// frame in the latter half of the tuple if one is specified, unless the write half of this socket
  /// has been closed.
  ///
  /// XXX: Do not expose this method to the public API.
  pub(crate) async fn read_frame_inner<'f, S>(
    &mut self,
    stream: &mut S,
  ) -> (Result<Option<Frame<'f>>, WebSocketError>, Option<Frame<'f>>)
  where
    S: AsyncRead + Unpin,
  {
    let mut frame = match self.parse_frame_header(stream).await {
      Ok(frame) => frame,
      Err(e) => return (Err(e), None),
    };

    if self.role == Role::Server && self.auto_apply_mask {
      frame.unmask()
    };

    match frame.opcode {
      OpCode::Close if self.auto_close => {
        match frame.payload.len() {
          0 => {}
          1 => return (Err(WebSocketError::InvalidCloseFrame), None),
          _ => {
            let code = close::CloseCode::from(u16::from_be_bytes(
              frame.payload[0..2].try_into().unwrap(),
            ));

            #[cfg(feature = "simd")]
            if simdutf8::basic::from_utf8(&frame.payload[2..]).is_err() {
              return (Err(WebSocketError::InvalidUTF8), None);
            };

            #[cfg(not(feature = "simd"))]
            if std::str::from_utf8(&frame.payload[2..]).is_err() {
              return (Err(WebSocketError::InvalidUTF8), None);
            };

            if !code.is_allowed() {
              return (
                Err(WebSocketError::InvalidCloseCode),
                Some(Frame::close(1002, &frame.payload[2..])),
              );
            }
          }
        };

        let obligated_send = Frame::close_raw(frame.payload.to_owned().into());
        (Ok(Some(frame)), Some(obligated_send))
      }
      OpCode::Ping if self.auto_pong => {
        (Ok(None), Some(Frame::pong(frame.payload)))
      }
      OpCode::Text => {
        if frame.fin && !frame.is_utf8() {
          (Err(WebSocketError::InvalidUTF8), None)
        } else {
          (Ok(Some(frame)), None)
        }
      }
      _ => (Ok(Some(frame)), None),
    }
  }

  /// Reads until one whole frame is buffered, then parses it.
  ///
  /// ringws patch: cancel-safe. Nothing is consumed from `self.buffer` until
  /// the whole frame (header and payload) is buffered, so dropping this
  /// future at an `.await` (e.g. in a `select!` against a drain signal) loses
  /// no bytes, and a later call resumes where this one stopped. Upstream
  /// advanced past the first two header bytes before reading the rest.
  async fn parse_frame_header<'a, S>(
    &mut self,
    stream: &mut S,
  ) -> Result<Frame<'a>, WebSocketError>
  where
    S: AsyncRead + Unpin,
  {
    loop {
      if let Some(frame) = self.try_parse_frame()? {
        return Ok(frame);
      }
      self.reserve_for_read();
      if stream.read_buf(&mut self.buffer).await? == 0 {
        return Err(WebSocketError::UnexpectedEOF);
      }
    }
  }

  /// Makes room for `want` more bytes (ringws patch): in place if bytes
  /// already consumed from the front leave it; else a buffer of twice the
  /// capacity (amortized copies), or, for a frame longer than
  /// [`READ_AHEAD`], all of `room` (what the caller may hold) once the new
  /// buffer would be more than an eighth of it. So the buffer follows the
  /// bytes that arrive (an announced length alone allocates nothing) and a
  /// large frame's never passes `room`; a smaller frame's may, as before,
  /// so that the buffer it leaves in the pool holds it again at any offset
  /// (steady echo does not allocate: `tests/alloc.rs`). `BytesMut::reserve`
  /// doubles past any bound: an 8 MiB frame and the next header went
  /// 4 MiB, 8 MiB (28 bytes short), then 16 MiB, twice its charge, and
  /// every large step left a block behind that the allocator could not
  /// reuse for the next.
  fn grow_within(&mut self, want: usize, room: usize) {
    let len = self.buffer.len();
    if self.buffer.capacity() - len >= want || self.buffer.try_reclaim(want) {
      return;
    }
    let mut target = (self.buffer.capacity() * 2).max(len + want);
    if room > READ_AHEAD && target.saturating_mul(8) > room {
      target = room.max(len + want);
    }
    let mut grown = BytesMut::with_capacity(target);
    grown.extend_from_slice(&self.buffer);
    self.buffer = grown;
  }

  /// Gives a never-used (or lent-out) buffer upstream's initial 8 KiB.
  fn reserve_for_read(&mut self) {
    if self.buffer.capacity() == 0 {
      self.buffer.reserve(8192);
    }
  }

  /// Parses one frame if it is wholly buffered; `Ok(None)` asks for more
  /// bytes. Header errors are reported as soon as the header is buffered.
  fn try_parse_frame<'a>(
    &mut self,
  ) -> Result<Option<Frame<'a>>, WebSocketError> {
    let Some(head) = self.parse_head(usize::MAX)? else {
      return Ok(None);
    };
    self.buffer.advance(head.header_len);
    // if we read too much it will stay in the buffer, for the next call to this method
    let payload = self.buffer.split_to(head.payload_len);
    Ok(Some(Frame::new(
      head.fin,
      head.opcode,
      head.mask,
      Payload::Bytes(payload),
    )))
  }

  /// The header of the first frame in the buffer if the whole frame is
  /// buffered (ringws patch: `try_parse_frame`'s checks, without consuming
  /// anything); `Ok(None)` asks for more bytes. A frame longer than `room`
  /// that is not wholly buffered is [`WebSocketError::NeedsRoom`].
  #[inline]
  fn parse_head(
    &mut self,
    room: usize,
  ) -> Result<Option<FrameHead>, WebSocketError> {
    let buf = &self.buffer[..];
    if buf.len() < 2 {
      return Ok(None);
    }

    let fin = buf[0] & 0b10000000 != 0;
    let rsv1 = buf[0] & 0b01000000 != 0;
    let rsv2 = buf[0] & 0b00100000 != 0;
    let rsv3 = buf[0] & 0b00010000 != 0;

    if rsv2 || rsv3 {
      return Err(WebSocketError::ReservedBitsNotZero);
    }

    let opcode = frame::OpCode::try_from(buf[0] & 0b00001111)?;
    // ringws patch: RSV1 where a negotiated extension gives it a meaning.
    if rsv1 && (!self.allow_rsv1 || frame::is_control(opcode)) {
      return Err(WebSocketError::ReservedBitsNotZero);
    }
    let masked = buf[1] & 0b10000000 != 0;

    let length_code = buf[1] & 0x7F;
    let extra = match length_code {
      126 => 2,
      127 => 8,
      _ => 0,
    };
    let header_len = 2 + extra + masked as usize * 4;
    if buf.len() < header_len {
      return Ok(None);
    }

    let payload_len: u64 = match extra {
      0 => u64::from(length_code),
      2 => u64::from(u16::from_be_bytes([buf[2], buf[3]])),
      _ => u64::from_be_bytes(buf[2..10].try_into().unwrap()),
    };

    let mask = if masked {
      Some(buf[2 + extra..header_len].try_into().unwrap())
    } else {
      None
    };

    if frame::is_control(opcode) && !fin {
      return Err(WebSocketError::ControlFrameFragmented);
    }

    // ringws patch: upstream checked Ping only; RFC 6455 §5.5 bounds every
    // control frame (Autobahn 7.3.6 sends a 126-byte Close).
    if frame::is_control(opcode) && payload_len > 125 {
      return Err(WebSocketError::PingFrameTooLarge);
    }

    // Checked before any allocation, so a 2^63 length costs nothing.
    let payload_len = match usize::try_from(payload_len) {
      Ok(len) if len < self.max_message_size => len,
      _ => return Err(WebSocketError::FrameTooLarge),
    };

    let frame_len = header_len + payload_len;
    if buf.len() < frame_len {
      if frame_len > room {
        return Err(WebSocketError::NeedsRoom(frame_len));
      }
      // Reserve a bit more to try to get next frame header and avoid a syscall to read it next time.
      // ringws patch: at most READ_AHEAD at a time, so the buffer grows with the
      // bytes that arrive, not with the length a peer announces (upstream
      // reserved the whole announced frame: 16 MiB for a 14-byte header).
      let missing = frame_len - buf.len();
      self.grow_within((missing + MAX_HEADER_SIZE).min(READ_AHEAD), room);
      return Ok(None);
    }

    Ok(Some(FrameHead {
      fin,
      rsv1,
      opcode,
      mask,
      header_len,
      payload_len,
    }))
  }
}

/// The header of a wholly buffered frame (ringws patch).
#[derive(Clone, Copy, Debug)]
struct FrameHead {
  fin: bool,
  rsv1: bool,
  opcode: OpCode,
  mask: Option<[u8; 4]>,
  header_len: usize,
  payload_len: usize,
}

/// A frame parsed where it lies, at the front of the read buffer (ringws
/// patch): see [`WebSocket::poll_frame_in_place`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InPlace {
  /// Last frame of its message.
  pub fin: bool,
  /// RSV1: with permessage-deflate, the message is compressed (only when
  /// allowed: [`WebSocket::set_rsv1_allowed`]).
  pub rsv1: bool,
  /// The frame's opcode.
  pub opcode: OpCode,
  /// The peer masked it (it is unmasked in the buffer now).
  pub masked: bool,
  header_len: usize,
  payload_len: usize,
}

impl InPlace {
  /// Payload bytes.
  pub fn payload_len(&self) -> usize {
    self.payload_len
  }

  /// Header and payload bytes: what [`WebSocket::consume`] removes.
  pub fn frame_len(&self) -> usize {
    self.header_len + self.payload_len
  }

  /// Where the reply [`WebSocket::frame_reply_in_place`] writes lies in the
  /// read buffer: its unmasked header (the shortest encoding of the same
  /// payload length) ends where this frame's header ends.
  pub fn reply_range(&self) -> std::ops::Range<usize> {
    let head_len = match self.payload_len {
      0..126 => 2,
      126..65536 => 4,
      _ => 10,
    };
    // A frame's length field is at least as long as the shortest encoding.
    debug_assert!(head_len <= self.header_len);
    self.header_len - head_len..self.frame_len()
  }
}

impl WriteHalf {
  pub fn after_handshake(role: Role) -> Self {
    Self {
      role,
      closed: false,
      auto_apply_mask: true,
      vectored: true,
      writev_threshold: 1024,
      // Allocated on first use (ringws patch 7): a server that frames its
      // own replies never uses it.
      write_buffer: Vec::new(),
    }
  }

  /// Writes a frame to the provided stream.
  pub async fn write_frame<'a, S>(
    &'a mut self,
    stream: &mut S,
    mut frame: Frame<'a>,
  ) -> Result<(), WebSocketError>
  where
    S: AsyncWrite + Unpin,
  {
    if self.role == Role::Client && self.auto_apply_mask {
      frame.mask();
    }

    if frame.opcode == OpCode::Close {
      self.closed = true;
    } else if self.closed {
      return Err(WebSocketError::ConnectionClosed);
    }

    if self.vectored && frame.payload.len() > self.writev_threshold {
      frame.writev(stream).await?;
    } else {
      let text = frame.write(&mut self.write_buffer);
      stream.write_all(text).await?;
    }

    Ok(())
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  const _: () = {
    const fn assert_unsync<S>() {
      // Generic trait with a blanket impl over `()` for all types.
      trait AmbiguousIfImpl<A> {
        // Required for actually being able to reference the trait.
        fn some_item() {}
      }

      impl<T: ?Sized> AmbiguousIfImpl<()> for T {}

      // Used for the specialized impl when *all* traits in
      // `$($t)+` are implemented.
      #[allow(dead_code)]
      struct Invalid;

      impl<T: ?Sized + Sync> AmbiguousIfImpl<Invalid> for T {}

      // If there is only one specialized trait impl, type inference with
      // `_` can be resolved and this can compile. Fails to compile if
      // `$x` implements `AmbiguousIfImpl<Invalid>`.
      let _ = <S as AmbiguousIfImpl<_>>::some_item;
    }
    assert_unsync::<WebSocket<tokio::net::TcpStream>>();
  };
}
