//! Range reads: which keys a read covers and how much of them it returns,
//! as etcd's `Range` does (`[start, end)` or a prefix, a limit with a
//! continuation, keys-only and count-only modes, and the revision the read
//! was served at).

use crate::command::{KeyValue, MAX_KEY_BYTES};

/// Which keys a read covers, and what it returns of them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Range {
    /// The first key (inclusive). Empty: from the first key there is.
    pub start: Vec<u8>,
    /// The end (exclusive). `None`: every key from `start` on.
    pub end: Option<Vec<u8>>,
    /// At most this many keys are returned; 0 means no limit. `count`,
    /// `more` and `next` tell what was left out.
    pub limit: usize,
    /// Keys and metadata without values: served from the in-memory index,
    /// with no disk read.
    pub keys_only: bool,
    /// Only the count (and revision): no keys at all.
    pub count_only: bool,
    /// Read as of this past revision (0: the current one), while the
    /// history still holds it: an older revision is `Compacted`, a future
    /// one `InvalidArgument`. Keys-only reads at a past revision read the
    /// rows (the index holds only the current metadata).
    pub revision: u64,
}

impl Range {
    /// Every key.
    pub fn all() -> Range {
        Range::default()
    }

    /// Every key that starts with `prefix`.
    pub fn prefix(prefix: &[u8]) -> Range {
        Range {
            start: prefix.to_vec(),
            end: prefix_end(prefix),
            ..Range::default()
        }
    }

    /// The keys in `[start, end)`.
    pub fn between(start: &[u8], end: &[u8]) -> Range {
        Range {
            start: start.to_vec(),
            end: Some(end.to_vec()),
            ..Range::default()
        }
    }

    /// At most `n` keys (0: no limit).
    pub fn limit(mut self, n: usize) -> Range {
        self.limit = n;
        self
    }

    /// Keys and metadata only.
    pub fn keys_only(mut self) -> Range {
        self.keys_only = true;
        self
    }

    /// As of past revision `revision` (0: now).
    pub fn at_revision(mut self, revision: u64) -> Range {
        self.revision = revision;
        self
    }

    /// The count only.
    pub fn count_only(mut self) -> Range {
        self.count_only = true;
        self
    }

    /// The same range from `key` on: how a caller asks for the page after
    /// one whose [`RangeResult::next`] was `key`.
    pub fn from_key(mut self, key: &[u8]) -> Range {
        self.start = key.to_vec();
        self
    }

    /// Whether `key` is in the range.
    pub fn contains(&self, key: &[u8]) -> bool {
        key >= self.start.as_slice() && self.end.as_deref().is_none_or(|end| key < end)
    }

    /// Checks the bounds: each at most one byte longer than a key can be
    /// (a prefix's end may be), and an end after the start.
    pub fn validate(&self) -> Result<(), &'static str> {
        if self.start.len() > MAX_KEY_BYTES + 1 {
            return Err("range start is longer than a key can be");
        }
        if let Some(end) = &self.end {
            if end.len() > MAX_KEY_BYTES + 1 {
                return Err("range end is longer than a key can be");
            }
            if end.as_slice() <= self.start.as_slice() {
                return Err("range end must come after its start");
            }
        }
        Ok(())
    }
}

/// The first key after every key that starts with `prefix` (etcd's
/// `GetPrefixRangeEnd`): the prefix with its last byte below 0xff
/// incremented and what follows dropped. `None` when no such key exists
/// (an empty prefix, or one of only 0xff bytes): the range is unbounded.
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let last = prefix.iter().rposition(|b| *b < 0xff)?;
    let mut end = prefix[..=last].to_vec();
    end[last] += 1;
    Some(end)
}

/// What a range read returned.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RangeResult {
    /// The keys returned, in key order (none for a count-only read; empty
    /// values for a keys-only read).
    pub kvs: Vec<KeyValue>,
    /// How many keys the whole range holds, limit or not.
    pub count: u64,
    /// Whether keys were left out by the limit.
    pub more: bool,
    /// The first key left out: pass it to [`Range::from_key`] for the next
    /// page. `None` when nothing was left out.
    pub next: Option<Vec<u8>>,
    /// The revision the read was served at: every change up to it is
    /// reflected, none after. A watch from `revision + 1` continues exactly
    /// where the read ends.
    pub revision: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends_as_etcd_computes_them() {
        assert_eq!(prefix_end(b"abc"), Some(b"abd".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"a\xff\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
        assert_eq!(prefix_end(b""), None);
        let r = Range::prefix(b"a\xff");
        assert!(r.contains(b"a\xff") && r.contains(b"a\xff\xff\x01"));
        assert!(!r.contains(b"b") && !r.contains(b"a"));
    }

    #[test]
    fn bounds_are_validated() {
        assert!(Range::between(b"b", b"a").validate().is_err());
        assert!(Range::between(b"a", b"a").validate().is_err());
        assert!(Range::between(b"a", b"b").validate().is_ok());
        assert!(Range::all().validate().is_ok());
        let long = vec![b'k'; MAX_KEY_BYTES + 2];
        assert!(Range::prefix(&long).validate().is_err());
        let r = Range::between(b"a", b"c");
        assert!(r.contains(b"a") && r.contains(b"bzzz") && !r.contains(b"c"));
    }
}
