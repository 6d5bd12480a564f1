//! The encoding of vault objects: a version byte, then fields as byte
//! strings with a big-endian 32-bit length. The
//! reader checks every length against what is left, so a damaged record is
//! an error, never a panic or an oversized allocation.

use crate::VaultError;

#[derive(Debug, Default)]
pub struct Writer(Vec<u8>);

impl Writer {
    pub fn new(version: u8) -> Writer {
        Writer(vec![version])
    }

    /// A byte string of at most `u32::MAX` bytes (every caller's fields
    /// are far smaller).
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        let len = u32::try_from(b.len()).unwrap_or(u32::MAX);
        self.0.extend_from_slice(&len.to_be_bytes());
        self.0.extend_from_slice(&b[..len as usize]);
        self
    }

    /// A number, as an 8-byte big-endian field.
    pub fn u64(&mut self, n: u64) -> &mut Self {
        self.bytes(&n.to_be_bytes())
    }

    pub fn i64(&mut self, n: i64) -> &mut Self {
        self.bytes(&n.to_be_bytes())
    }

    pub fn finish(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.0)
    }
}

#[derive(Debug)]
pub struct Reader<'a> {
    what: &'static str,
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Starts reading a `what` record of version `version`.
    pub fn new(
        what: &'static str,
        version: u8,
        record: &'a [u8],
    ) -> Result<Reader<'a>, VaultError> {
        Reader::any_of(what, version..=version, record).map(|(r, _)| r)
    }

    /// Starts reading a `what` record of any version in `versions`;
    /// returns the version too.
    pub fn any_of(
        what: &'static str,
        versions: std::ops::RangeInclusive<u8>,
        record: &'a [u8],
    ) -> Result<(Reader<'a>, u8), VaultError> {
        match record.split_first() {
            Some((v, rest)) if versions.contains(v) => Ok((Reader { what, rest }, *v)),
            Some((v, _)) => Err(VaultError::Corrupt {
                what,
                detail: format!("unknown version {v}"),
            }),
            None => Err(VaultError::Corrupt {
                what,
                detail: "empty record".into(),
            }),
        }
    }

    fn take(&mut self, n: usize, field: &str) -> Result<&'a [u8], VaultError> {
        if self.rest.len() < n {
            return Err(VaultError::Corrupt {
                what: self.what,
                detail: format!("{field}: needs {n} bytes, {} left", self.rest.len()),
            });
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    pub fn bytes(&mut self, field: &str) -> Result<&'a [u8], VaultError> {
        let mut b = [0; 4];
        b.copy_from_slice(self.take(4, field)?);
        let len = u32::from_be_bytes(b) as usize;
        self.take(len, field)
    }

    pub fn string(&mut self, field: &str) -> Result<String, VaultError> {
        let bytes = self.bytes(field)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| VaultError::Corrupt {
            what: self.what,
            detail: format!("{field} is not UTF-8"),
        })
    }

    /// A number written by [`Writer::u64`].
    pub fn u64(&mut self, field: &str) -> Result<u64, VaultError> {
        let bytes = self.bytes(field)?;
        let eight: [u8; 8] = bytes.try_into().map_err(|_| VaultError::Corrupt {
            what: self.what,
            detail: format!("{field} is not 8 bytes"),
        })?;
        Ok(u64::from_be_bytes(eight))
    }

    /// A number written by [`Writer::i64`].
    pub fn i64(&mut self, field: &str) -> Result<i64, VaultError> {
        Ok(self.u64(field)? as i64)
    }

    /// Fails if bytes are left over.
    pub fn finish(self) -> Result<(), VaultError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(VaultError::Corrupt {
                what: self.what,
                detail: format!("{} bytes after the last field", self.rest.len()),
            })
        }
    }
}

/// Test support for every vault decoder: `decode` must answer (`Ok` or
/// `Err`, never a panic or a huge allocation) for `record` damaged in many
/// seeded random ways: bytes changed, runs overwritten with 0xff (lengths
/// and counts near their limits), cut short, extended, or spliced with
/// itself; and every strict prefix must be an error.
#[cfg(test)]
pub(crate) fn assert_decoder_survives_damage<T>(
    record: &[u8],
    decode: impl Fn(&[u8]) -> Result<T, VaultError>,
) {
    use rand::{Rng, SeedableRng};
    assert!(decode(record).is_ok(), "the undamaged record must decode");
    for cut in 0..record.len() {
        assert!(
            decode(&record[..cut]).is_err(),
            "a record cut at {cut} decoded"
        );
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x00c0_ffee);
    for _ in 0..20_000 {
        let mut damaged = record.to_vec();
        for _ in 0..rng.gen_range(1..4) {
            let at = rng.gen_range(0..damaged.len().max(1));
            match rng.gen_range(0..5) {
                0 if !damaged.is_empty() => damaged[at] = rng.gen(),
                1 if !damaged.is_empty() => {
                    let end = (at + 4).min(damaged.len());
                    damaged[at..end].fill(0xff);
                }
                2 => damaged.truncate(at),
                3 => damaged.extend((0..rng.gen_range(1..16)).map(|_| rng.gen::<u8>())),
                _ => {
                    let tail = damaged[at.min(damaged.len())..].to_vec();
                    damaged.extend_from_slice(&tail);
                }
            }
        }
        let _ = decode(&damaged);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_round_trip_and_damage_is_an_error() {
        let record = Writer::new(3).bytes(b"n").bytes(b"abc").finish();
        let mut r = Reader::new("thing", 3, &record).unwrap();
        assert_eq!(r.string("n").unwrap(), "n");
        assert_eq!(r.bytes("b").unwrap(), b"abc");
        r.finish().unwrap();
        assert!(Reader::new("thing", 4, &record).is_err());
        assert!(Reader::new("thing", 3, &[]).is_err());
        for cut in 1..record.len() {
            let mut r = Reader::new("thing", 3, &record[..cut]).unwrap();
            let whole = r.bytes("n").and_then(|_| r.bytes("b").map(|_| ()));
            assert!(whole.is_err(), "cut at {cut}");
        }
        let mut longer = record.clone();
        longer.push(0);
        let mut r = Reader::new("thing", 3, &longer).unwrap();
        r.bytes("n").unwrap();
        r.bytes("b").unwrap();
        assert!(r.finish().is_err());
    }
}
