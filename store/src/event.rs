//! Watch events and the encoding of their on-disk records.
//!
//! The state machine writes the events of each applied batch as one sealed
//! row of the `events` column family (at most about 1 MiB; a transaction's
//! events are never split across rows). This decoder reads those rows back,
//! so it is a fuzz target.

use crate::codec::{DecodeError, Reader, Writer};
use crate::command::KeyValue;
use crate::snapshot::KvLayout;

/// What happened to a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change seen by a watch. For a delete, `kv.value` is empty and
/// `kv.meta` is zero.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub revision: u64,
    pub kind: EventKind,
    pub kv: KeyValue,
    /// The key as it was before this change (`None`: it was absent), when
    /// the watch asked for it (`WatchOptions::prev_kv`); never stored.
    pub prev_kv: Option<KeyValue>,
}

/// Format of an `events` row (version 1 held one event per row; version 2
/// records had no lease, which version 3 added).
const EVENTS_VERSION: u8 = 3;

/// Encodes the events of one applied batch (one sealed `events` row).
pub fn encode_events(events: &[Event]) -> Result<Vec<u8>, crate::codec::EncodeError> {
    let size: usize = events
        .iter()
        .map(|e| 48 + e.kv.key.len() + e.kv.value.len())
        .sum();
    let mut w = Writer::with_capacity(8 + size);
    w.u8(EVENTS_VERSION).count(events.len(), "event count");
    for e in events {
        w.u64(e.revision).u8(match e.kind {
            EventKind::Put => 1,
            EventKind::Delete => 2,
        });
        crate::snapshot::encode_kv(&mut w, &e.kv);
    }
    w.finish()
}

/// Decodes what [`encode_events`] wrote.
pub fn decode_events(bytes: &[u8]) -> Result<Vec<Event>, DecodeError> {
    let mut r = Reader::new(bytes);
    let layout = KvLayout::read(&mut r, 2, EVENTS_VERSION, "events version")?;
    let n = r.count(42, "event count")?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(decode_event(&mut r, layout)?);
    }
    r.finish("events")?;
    Ok(out)
}

fn decode_event(r: &mut Reader<'_>, layout: KvLayout) -> Result<Event, DecodeError> {
    let revision = r.u64("event revision")?;
    let kind = match r.u8("event kind")? {
        1 => EventKind::Put,
        2 => EventKind::Delete,
        tag => {
            return Err(DecodeError::UnknownTag {
                what: "event kind",
                tag,
            })
        }
    };
    let kv = crate::snapshot::decode_kv(r, layout)?;
    Ok(Event {
        revision,
        kind,
        kv,
        prev_kv: None,
    })
}
