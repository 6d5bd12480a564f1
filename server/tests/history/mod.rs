//! Histories of concurrent clients on key/value registers, and a
//! linearizability check of them (Wing & Gong's search with Lowe's cache
//! of visited states, as porcupine does), one key at a time: a history is
//! linearizable iff each key's is (P-compositionality).
//!
//! An operation that got no answer (a timeout, a connection error, an
//! `UNAVAILABLE` that may have come after the write was proposed) may have
//! taken effect at any point after its call, or never: it has no return.
//! A write without an answer whose value no read saw is dropped from the
//! check, which changes nothing (a linearization with it stays one without
//! it, since no read sits between it and the next write), and keeps the
//! search from trying every subset of such writes. Reads without an answer
//! have no effect and are dropped too.

use std::collections::{BTreeMap, HashSet};
use std::time::Instant;

/// What a client did to one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Wrote this value (values are unique per history).
    Put(String),
    /// Read the key: `Some(None)` found it absent; `None` got no answer.
    Get(Option<Option<String>>),
}

/// One operation: when it was called and when (if ever) it answered.
#[derive(Debug, Clone)]
pub struct Event {
    pub key: String,
    pub op: Op,
    pub call: Instant,
    /// `None`: no answer (indeterminate).
    pub ret: Option<Instant>,
}

/// What the check found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub keys: usize,
    /// Operations checked (answered ones, and unanswered writes a read saw).
    pub checked: usize,
    /// Unanswered writes dropped (no read saw their value).
    pub dropped: usize,
    /// Keys whose history is not linearizable.
    pub violations: Vec<String>,
}

/// An operation in the search, with its times as ranks.
struct Entry {
    op: Op,
    call: u64,
    ret: u64,
}

/// Checks every key's history.
pub fn check(events: &[Event]) -> Verdict {
    let mut by_key: BTreeMap<&str, Vec<&Event>> = BTreeMap::new();
    for e in events {
        by_key.entry(&e.key).or_default().push(e);
    }
    let mut verdict = Verdict {
        keys: by_key.len(),
        ..Verdict::default()
    };
    let start = events.iter().map(|e| e.call).min();
    for (key, events) in by_key {
        let read: HashSet<&str> = events
            .iter()
            .filter_map(|e| match &e.op {
                Op::Get(Some(Some(v))) => Some(v.as_str()),
                _ => None,
            })
            .collect();
        let mut entries = Vec::new();
        for e in events {
            let answered = e.ret.is_some();
            match &e.op {
                Op::Get(None) => continue,
                Op::Put(v) if !answered && !read.contains(v.as_str()) => {
                    verdict.dropped += 1;
                    continue;
                }
                _ => {}
            }
            let at = |t: Instant| {
                u64::try_from(t.duration_since(start.unwrap_or(t)).as_nanos())
                    .unwrap_or(u64::MAX - 1)
            };
            entries.push(Entry {
                op: e.op.clone(),
                call: at(e.call),
                ret: e.ret.map_or(u64::MAX, at),
            });
        }
        verdict.checked += entries.len();
        if !linearizable(&entries) {
            verdict.violations.push(key.to_string());
        }
    }
    verdict
}

/// Applies `op` to a register holding `state`: the new state, or `None`
/// if the op cannot happen now (a read of another value).
fn step(state: &Option<String>, op: &Op) -> Option<Option<String>> {
    match op {
        Op::Put(v) => Some(Some(v.clone())),
        Op::Get(Some(seen)) if seen == state => Some(state.clone()),
        Op::Get(_) => None,
    }
}

/// Wing & Gong's search with a cache of (linearized set, state): take the
/// earliest pending call that can go next; when a return comes first,
/// undo the last choice.
fn linearizable(entries: &[Entry]) -> bool {
    // The events in time order: (time, is_return, op index). A call sorts
    // before a return at the same time: operations that touch may overlap.
    let mut timeline: Vec<(u64, bool, usize)> = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        timeline.push((e.call, false, i));
        timeline.push((e.ret, true, i));
    }
    timeline.sort_unstable();
    // A doubly linked list over the timeline, so that linearized ops can
    // be lifted out and put back.
    let n = timeline.len();
    let mut next: Vec<usize> = (1..=n).collect();
    let mut prev: Vec<usize> = (0..n).map(|i| i.wrapping_sub(1)).collect();
    let head = n; // sentinel index: next[head] is the first live event.
    next.push(0);
    prev.push(usize::MAX);
    if n > 0 {
        prev[0] = head;
    }
    let mut slot_of_return = vec![0; entries.len()];
    let mut slot_of_call = vec![0; entries.len()];
    for (slot, (_, is_return, i)) in timeline.iter().enumerate() {
        if *is_return {
            slot_of_return[*i] = slot;
        } else {
            slot_of_call[*i] = slot;
        }
    }
    let lift = |next: &mut Vec<usize>, prev: &mut Vec<usize>, slot: usize| {
        let (p, nx) = (prev[slot], next[slot]);
        next[p] = nx;
        if nx < n {
            prev[nx] = p;
        }
    };
    let unlift = |next: &mut Vec<usize>, prev: &mut Vec<usize>, slot: usize| {
        let (p, nx) = (prev[slot], next[slot]);
        next[p] = slot;
        if nx < n {
            prev[nx] = slot;
        }
    };

    let words = entries.len().div_ceil(64).max(1);
    let mut linearized = vec![0u64; words];
    let mut state: Option<String> = None;
    let mut seen: HashSet<(Vec<u64>, Option<String>)> = HashSet::new();
    let mut stack: Vec<(usize, Option<String>)> = Vec::new();
    let mut cursor = next[head];
    loop {
        if next[head] >= n {
            return true;
        }
        if cursor >= n {
            // Past the end with calls left that cannot go: back up.
            let Some((i, old)) = stack.pop() else {
                return false;
            };
            linearized[i / 64] &= !(1 << (i % 64));
            state = old;
            unlift(&mut next, &mut prev, slot_of_return[i]);
            unlift(&mut next, &mut prev, slot_of_call[i]);
            cursor = next[slot_of_call[i]];
            continue;
        }
        let (_, is_return, i) = timeline[cursor];
        if !is_return {
            if let Some(after) = step(&state, &entries[i].op) {
                let mut bits = linearized.clone();
                bits[i / 64] |= 1 << (i % 64);
                if seen.insert((bits.clone(), after.clone())) {
                    stack.push((i, std::mem::replace(&mut state, after)));
                    linearized = bits;
                    lift(&mut next, &mut prev, slot_of_call[i]);
                    lift(&mut next, &mut prev, slot_of_return[i]);
                    cursor = next[head];
                    continue;
                }
            }
            cursor = next[cursor];
        } else {
            // An operation returned before it could be linearized: undo.
            let Some((j, old)) = stack.pop() else {
                return false;
            };
            linearized[j / 64] &= !(1 << (j % 64));
            state = old;
            unlift(&mut next, &mut prev, slot_of_return[j]);
            unlift(&mut next, &mut prev, slot_of_call[j]);
            cursor = next[slot_of_call[j]];
        }
    }
}

#[cfg(test)]
mod checks {
    use super::*;
    use std::time::Duration;

    fn at(base: Instant, ms: u64) -> Instant {
        base + Duration::from_millis(ms)
    }

    fn ev(base: Instant, op: Op, call: u64, ret: Option<u64>) -> Event {
        Event {
            key: "k".into(),
            op,
            call: at(base, call),
            ret: ret.map(|r| at(base, r)),
        }
    }

    fn put(v: &str) -> Op {
        Op::Put(v.into())
    }

    fn got(v: Option<&str>) -> Op {
        Op::Get(Some(v.map(str::to_string)))
    }

    #[test]
    fn the_checker_accepts_linearizable_histories_and_rejects_others() {
        let b = Instant::now();
        // Sequential and overlapping histories that have an order.
        let fine = [
            ev(b, got(None), 0, Some(1)),
            ev(b, put("a"), 2, Some(5)),
            ev(b, got(Some("a")), 3, Some(4)), // overlaps the put
            ev(b, put("b"), 6, Some(9)),
            ev(b, got(Some("a")), 7, Some(8)), // before b takes effect
            ev(b, got(Some("b")), 10, Some(11)),
        ];
        assert!(check(&fine).violations.is_empty());

        // A stale read: after b was acknowledged, a reads a.
        let stale = [
            ev(b, put("a"), 0, Some(1)),
            ev(b, put("b"), 2, Some(3)),
            ev(b, got(Some("a")), 4, Some(5)),
        ];
        assert_eq!(check(&stale).violations, vec!["k".to_string()]);

        // A lost write: acknowledged, then never seen again.
        let lost = [ev(b, put("a"), 0, Some(1)), ev(b, got(None), 2, Some(3))];
        assert_eq!(check(&lost).violations.len(), 1);

        // Reads that go back and forth between two writes.
        let flapping = [
            ev(b, put("a"), 0, Some(1)),
            ev(b, put("b"), 2, Some(20)),
            ev(b, got(Some("b")), 3, Some(4)),
            ev(b, got(Some("a")), 5, Some(6)),
        ];
        assert_eq!(check(&flapping).violations.len(), 1);
    }

    #[test]
    fn unanswered_writes_may_take_effect_late_or_never() {
        let b = Instant::now();
        // Timed out, then seen much later: it took effect late.
        let late = [
            ev(b, put("a"), 0, None),
            ev(b, got(None), 5, Some(6)),
            ev(b, got(Some("a")), 10, Some(11)),
        ];
        let verdict = check(&late);
        assert!(verdict.violations.is_empty());
        assert_eq!(verdict.checked, 3);
        // Timed out and never seen: dropped, and nothing else changes.
        let never = [
            ev(b, put("x"), 0, None),
            ev(b, put("a"), 1, Some(2)),
            ev(b, got(Some("a")), 3, Some(4)),
        ];
        let verdict = check(&never);
        assert!(verdict.violations.is_empty());
        assert_eq!(verdict.dropped, 1);
        // But not before it was called.
        let early = [ev(b, got(Some("a")), 0, Some(1)), ev(b, put("a"), 2, None)];
        assert_eq!(check(&early).violations.len(), 1);
    }

    #[test]
    fn many_unanswered_writes_stay_cheap() {
        let b = Instant::now();
        let mut events = Vec::new();
        for i in 0..2000u64 {
            events.push(ev(b, put(&format!("lost{i}")), i * 10, None));
            events.push(ev(b, put(&format!("v{i}")), i * 10 + 1, Some(i * 10 + 3)));
            events.push(ev(
                b,
                got(Some(&format!("v{i}"))),
                i * 10 + 4,
                Some(i * 10 + 5),
            ));
        }
        let verdict = check(&events);
        assert!(verdict.violations.is_empty());
        assert_eq!(verdict.dropped, 2000);
    }
}
