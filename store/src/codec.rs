//! The binary encoding of every record Coffer persists or replicates.
//!
//! Integers are fixed-width big-endian; byte strings carry a `u32` length
//! prefix and every read names the most it will accept, so a corrupt or
//! hostile length can never make the decoder allocate without bound. Nothing
//! here panics on any input: every failure is a [`DecodeError`].

use thiserror::Error;

/// Why a byte string could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input ended inside a field.
    #[error("truncated {what}: needed {needed} more bytes, {left} left")]
    Truncated {
        what: &'static str,
        needed: usize,
        left: usize,
    },
    /// A length prefix is larger than the field allows.
    #[error("{what} is {len} bytes long, more than the limit of {max}")]
    TooLong {
        what: &'static str,
        len: usize,
        max: usize,
    },
    /// A format version this build does not know.
    #[error("unknown {what} format version {version}")]
    UnknownVersion { what: &'static str, version: u8 },
    /// An enum tag that names no variant.
    #[error("unknown {what} tag {tag}")]
    UnknownTag { what: &'static str, tag: u8 },
    /// A field whose value breaks an invariant of the format.
    #[error("invalid {what}: {reason}")]
    Invalid {
        what: &'static str,
        reason: &'static str,
    },
    /// Bytes left over after the last field.
    #[error("{count} unexpected trailing bytes after {what}")]
    TrailingBytes { what: &'static str, count: usize },
}

/// Why a value could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("cannot encode {what}: {len} is more than the format's limit of {max}")]
pub struct EncodeError {
    pub what: &'static str,
    pub len: usize,
    pub max: usize,
}

/// Appends fields to a growing buffer.
///
/// Lengths and counts are `u32` on the wire. One that does not fit is not
/// written (a short or empty field would decode as something else): the
/// writer remembers the first such field and [`finish`](Self::finish)
/// returns it as an error. Callers bound their inputs far below `u32::MAX`
/// (requests are at most [`crate::MAX_REQUEST_BYTES`]), so this is a
/// guard against a bug, never a path a valid request takes.
#[derive(Debug, Default)]
pub struct Writer {
    buf: Vec<u8>,
    overflow: Option<EncodeError>,
}

impl Writer {
    pub fn with_capacity(capacity: usize) -> Self {
        Writer {
            buf: Vec::with_capacity(capacity),
            overflow: None,
        }
    }

    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }

    pub fn bool(&mut self, v: bool) -> &mut Self {
        self.u8(u8::from(v))
    }

    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// Raw bytes with no length prefix (fixed-size fields).
    pub fn raw(&mut self, v: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(v);
        self
    }

    /// A `u32` count of the items that follow.
    pub fn count(&mut self, n: usize, what: &'static str) -> &mut Self {
        match u32::try_from(n) {
            Ok(n) if self.overflow.is_none() => self.u32(n),
            Ok(_) => self,
            Err(_) => {
                self.overflow.get_or_insert(EncodeError {
                    what,
                    len: n,
                    max: u32::MAX as usize,
                });
                self
            }
        }
    }

    /// A length-prefixed byte string.
    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.count(v.len(), "byte string length");
        if self.overflow.is_none() {
            self.raw(v);
        }
        self
    }

    /// A length-prefixed UTF-8 string.
    pub fn str(&mut self, v: &str) -> &mut Self {
        self.bytes(v.as_bytes())
    }

    /// Bytes written so far; `usize::MAX` once a field did not fit, so
    /// that no size limit accepts what cannot be encoded.
    pub fn len(&self) -> usize {
        if self.overflow.is_some() {
            usize::MAX
        } else {
            self.buf.len()
        }
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty() && self.overflow.is_none()
    }

    /// The encoded bytes, or the first field that did not fit.
    pub fn finish(self) -> Result<Vec<u8>, EncodeError> {
        match self.overflow {
            None => Ok(self.buf),
            Some(e) => Err(e),
        }
    }
}

/// Reads fields from a byte slice, front to back.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated {
                what,
                needed: n,
                left: self.buf.len(),
            });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    pub fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    pub fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(what)?[0])
    }

    pub fn bool(&mut self, what: &'static str) -> Result<bool, DecodeError> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            tag => Err(DecodeError::UnknownTag { what, tag }),
        }
    }

    pub fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array(what)?))
    }

    pub fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }

    pub fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array(what)?))
    }

    /// A length-prefixed byte string of at most `max` bytes.
    pub fn bytes(&mut self, max: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let len = usize::try_from(self.u32(what)?).map_err(|_| DecodeError::TooLong {
            what,
            len: usize::MAX,
            max,
        })?;
        if len > max {
            return Err(DecodeError::TooLong { what, len, max });
        }
        self.take(len, what)
    }

    /// A length-prefixed UTF-8 string of at most `max` bytes.
    pub fn str(&mut self, max: usize, what: &'static str) -> Result<&'a str, DecodeError> {
        std::str::from_utf8(self.bytes(max, what)?).map_err(|_| DecodeError::Invalid {
            what,
            reason: "not UTF-8",
        })
    }

    /// A count of items that follow, each at least `min_item_bytes` long:
    /// a count the remaining input cannot hold is rejected before anything is
    /// allocated for it.
    pub fn count(
        &mut self,
        min_item_bytes: usize,
        what: &'static str,
    ) -> Result<usize, DecodeError> {
        let n = usize::try_from(self.u32(what)?).unwrap_or(usize::MAX);
        let need = n.saturating_mul(min_item_bytes.max(1));
        if need > self.buf.len() {
            return Err(DecodeError::TooLong {
                what,
                len: n,
                max: self.buf.len() / min_item_bytes.max(1),
            });
        }
        Ok(n)
    }

    /// Like [`count`](Self::count), and at most `max`.
    pub fn count_at_most(
        &mut self,
        min_item_bytes: usize,
        max: usize,
        what: &'static str,
    ) -> Result<usize, DecodeError> {
        let n = self.count(min_item_bytes, what)?;
        if n > max {
            return Err(DecodeError::TooLong { what, len: n, max });
        }
        Ok(n)
    }

    /// Reads a format version byte and fails unless it is `known`.
    pub fn version(&mut self, known: u8, what: &'static str) -> Result<(), DecodeError> {
        match self.u8(what)? {
            v if v == known => Ok(()),
            version => Err(DecodeError::UnknownVersion { what, version }),
        }
    }

    /// Fails unless every byte has been read.
    pub fn finish(self, what: &'static str) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes {
                what,
                count: self.buf.len(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_big_endian() {
        let mut w = Writer::default();
        w.u8(7)
            .u16(0x0102)
            .u32(0x0304_0506)
            .u64(1)
            .bytes(b"abc")
            .bool(true);
        let buf = w.finish().unwrap();
        assert_eq!(&buf[1..3], &[1, 2], "integers are big-endian");
        let mut r = Reader::new(&buf);
        assert_eq!(r.u8("a").ok(), Some(7));
        assert_eq!(r.u16("b").ok(), Some(0x0102));
        assert_eq!(r.u32("c").ok(), Some(0x0304_0506));
        assert_eq!(r.u64("d").ok(), Some(1));
        assert_eq!(r.bytes(3, "e").ok(), Some(&b"abc"[..]));
        assert_eq!(r.bool("f").ok(), Some(true));
        assert!(r.finish("x").is_ok());
    }

    #[test]
    fn hostile_lengths_are_rejected_without_allocation() {
        let mut w = Writer::default();
        w.u32(u32::MAX);
        let buf = w.finish().unwrap();
        assert!(matches!(
            Reader::new(&buf).bytes(1 << 20, "v"),
            Err(DecodeError::TooLong { .. })
        ));
        assert!(matches!(
            Reader::new(&buf).count(8, "n"),
            Err(DecodeError::TooLong { .. })
        ));
        assert!(matches!(
            Reader::new(&[0, 0, 0, 5, 1]).bytes(10, "v"),
            Err(DecodeError::Truncated { .. })
        ));
        assert!(matches!(
            Reader::new(&[2]).bool("b"),
            Err(DecodeError::UnknownTag { .. })
        ));
        assert!(matches!(
            Reader::new(&[1, 2]).finish("t"),
            Err(DecodeError::TrailingBytes { count: 2, .. })
        ));
    }

    /// Regression (issue 5, fault 3): a count or length past `u32` used to
    /// be written as `u32::MAX` or as an empty field, which decodes as
    /// something else; now the writer refuses to finish.
    #[test]
    fn a_length_past_u32_is_an_error_not_a_wrong_field() {
        let too_many = u32::MAX as usize + 1;
        let mut w = Writer::default();
        w.u8(1).count(too_many, "items").bytes(b"after");
        assert_eq!(w.len(), usize::MAX, "no size limit accepts it");
        let err = w.finish().unwrap_err();
        assert_eq!(err.what, "items");
        assert_eq!(err.len, too_many);
        let mut ok = Writer::default();
        ok.count(3, "items");
        assert_eq!(ok.finish().unwrap(), vec![0, 0, 0, 3]);
    }
}
