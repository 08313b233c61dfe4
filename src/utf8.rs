//! Incremental UTF-8 validation for text messages that arrive in fragments.
//!
//! A code point may be split between two fragments, so each fragment is
//! checked with up to three bytes carried over from the previous one. Invalid
//! input is reported as soon as the bytes seen so far cannot start valid
//! UTF-8 (fail fast), not only at the end of the message.

/// Validation state across the fragments of one text message.
#[derive(Debug, Default, Clone)]
pub struct Utf8Stream {
    partial: [u8; 4],
    len: u8,
}

/// The bytes are not UTF-8.
#[derive(Debug, PartialEq, Eq)]
pub struct InvalidUtf8;

/// Length of the sequence a leading byte announces (0 for an invalid lead).
fn sequence_len(lead: u8) -> usize {
    match lead {
        0x00..=0x7f => 1,
        0xc2..=0xdf => 2,
        0xe0..=0xef => 3,
        0xf0..=0xf4 => 4,
        _ => 0,
    }
}

impl Utf8Stream {
    /// Checks the next fragment.
    pub fn feed(&mut self, mut data: &[u8]) -> Result<(), InvalidUtf8> {
        if self.len > 0 {
            let have = usize::from(self.len);
            let need = sequence_len(self.partial[0]);
            let take = (need - have).min(data.len());
            self.partial[have..have + take].copy_from_slice(&data[..take]);
            data = &data[take..];
            let got = have + take;
            match std::str::from_utf8(&self.partial[..got]) {
                Ok(_) => self.len = 0,
                Err(e) if e.error_len().is_none() => {
                    self.len = got as u8; // still incomplete: `data` is empty
                    return Ok(());
                }
                Err(_) => return Err(InvalidUtf8),
            }
        }
        match std::str::from_utf8(data) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_none() => {
                let tail = &data[e.valid_up_to()..];
                self.partial[..tail.len()].copy_from_slice(tail);
                self.len = tail.len() as u8;
                Ok(())
            }
            Err(_) => Err(InvalidUtf8),
        }
    }

    /// Ends the message: a code point left incomplete is an error.
    pub fn finish(&mut self) -> Result<(), InvalidUtf8> {
        let complete = self.len == 0;
        self.len = 0;
        if complete { Ok(()) } else { Err(InvalidUtf8) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_split(bytes: &[u8]) -> Result<(), InvalidUtf8> {
        // Every way of cutting `bytes` into three fragments must agree with std.
        let expected = std::str::from_utf8(bytes).is_ok();
        for i in 0..=bytes.len() {
            for j in i..=bytes.len() {
                let mut v = Utf8Stream::default();
                let r = v
                    .feed(&bytes[..i])
                    .and_then(|_| v.feed(&bytes[i..j]))
                    .and_then(|_| v.feed(&bytes[j..]))
                    .and_then(|_| v.finish());
                assert_eq!(r.is_ok(), expected, "{bytes:x?} cut at {i},{j}");
            }
        }
        if expected { Ok(()) } else { Err(InvalidUtf8) }
    }

    #[test]
    fn splits_agree_with_std() {
        assert!(check_split("κόσμε €𝄞 ascii".as_bytes()).is_ok());
        assert!(
            check_split(b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited").is_err()
        );
        assert!(check_split(b"\xf4\x90\x80\x80").is_err());
        assert!(check_split(b"ab\xc0\xaf").is_err());
        assert!(check_split(b"\xf0\x9f\x98").is_err());
    }

    #[test]
    fn fails_fast() {
        let mut v = Utf8Stream::default();
        // 0xed 0xa0 starts a surrogate: invalid before the message ends.
        assert!(v.feed(b"ok\xed").is_ok());
        assert_eq!(v.feed(b"\xa0"), Err(InvalidUtf8));
    }
}
