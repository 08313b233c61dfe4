//! Server frames: unmasked, unfragmented, with the shortest length encoding.

use bytes::{BufMut, BytesMut};

/// Appends an unmasked, unfragmented server frame.
pub(crate) fn put_frame(out: &mut BytesMut, opcode: u8, payload: &[u8]) {
    let (header, n) = frame_header(opcode, payload.len());
    out.reserve(n + payload.len());
    out.put_slice(&header[..n]);
    out.put_slice(payload);
}

/// The header of an unmasked, unfragmented server frame of `len` payload
/// bytes, and its length (2, 4 or 10 bytes: the shortest encoding).
pub(crate) fn frame_header(opcode: u8, len: usize) -> ([u8; 10], usize) {
    let mut header = [0u8; 10];
    header[0] = 0x80 | opcode;
    if len < 126 {
        header[1] = len as u8;
        (header, 2)
    } else if let Ok(len) = u16::try_from(len) {
        header[1] = 126;
        header[2..4].copy_from_slice(&len.to_be_bytes());
        (header, 4)
    } else {
        header[1] = 127;
        header[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        (header, 10)
    }
}

/// The header of the server frame at the front of `bytes` (as
/// [`put_frame`] writes it): its opcode, header length and payload length.
pub(crate) fn parse_header(bytes: &[u8]) -> (u8, usize, usize) {
    let opcode = bytes[0] & 0x0f;
    match bytes[1] & 0x7f {
        126 => (
            opcode,
            4,
            usize::from(u16::from_be_bytes([bytes[2], bytes[3]])),
        ),
        127 => {
            let len = u64::from_be_bytes(bytes[2..10].try_into().expect("8 bytes"));
            (opcode, 10, usize::try_from(len).unwrap_or(usize::MAX))
        }
        n => (opcode, 2, usize::from(n)),
    }
}
