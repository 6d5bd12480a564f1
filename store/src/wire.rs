//! The wire encoding of the Raft RPCs a [`crate::Transport`] carries
//! between members: append-entries, vote and their answers, a snapshot's
//! vote and its answer. Each message is a version byte and the same
//! big-endian encoding the log uses (log entries travel exactly as
//! `types::encode_entry` stores them), so a transport needs no openraft
//! serde and every decoder here is fuzzed (`fuzz/fuzz_targets/wire_decode.rs`).
//!
//! Decoders bound every count by what the input can hold and refuse
//! trailing bytes; they never panic.

use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::Vote;

use crate::codec::{DecodeError, EncodeError, Reader, Writer};
use crate::types::{
    decode_entry, decode_opt_log_id, decode_vote, encode_entry, encode_opt_log_id, encode_vote,
    NodeId, TypeConfig,
};

const WIRE_VERSION: u8 = 1;
/// The smallest encoded entry: a length prefix, a version byte, a log id
/// and a payload tag.
const ENTRY_BYTES_MIN: usize = 4 + 1 + 24 + 1;

fn start(capacity: usize) -> Writer {
    let mut w = Writer::with_capacity(capacity);
    w.u8(WIRE_VERSION);
    w
}

pub fn encode_append_entries(
    rpc: &AppendEntriesRequest<TypeConfig>,
) -> Result<Vec<u8>, EncodeError> {
    let mut w = start(128);
    encode_vote(&mut w, &rpc.vote);
    encode_opt_log_id(&mut w, &rpc.prev_log_id);
    encode_opt_log_id(&mut w, &rpc.leader_commit);
    w.count(rpc.entries.len(), "entries");
    for entry in &rpc.entries {
        w.bytes(&encode_entry(entry)?);
    }
    w.finish()
}

pub fn decode_append_entries(
    bytes: &[u8],
) -> Result<AppendEntriesRequest<TypeConfig>, DecodeError> {
    let what = "append-entries request";
    let mut r = Reader::new(bytes);
    r.version(WIRE_VERSION, what)?;
    let vote = decode_vote(&mut r)?;
    let prev_log_id = decode_opt_log_id(&mut r)?;
    let leader_commit = decode_opt_log_id(&mut r)?;
    let n = r.count(ENTRY_BYTES_MIN, "entries")?;
    let mut entries = Vec::with_capacity(n);
    for _ in 0..n {
        entries.push(decode_entry(r.bytes(bytes.len(), "entry")?)?);
    }
    r.finish(what)?;
    Ok(AppendEntriesRequest {
        vote,
        prev_log_id,
        leader_commit,
        entries,
    })
}

pub fn encode_append_entries_response(
    resp: &AppendEntriesResponse<NodeId>,
) -> Result<Vec<u8>, EncodeError> {
    let mut w = start(32);
    match resp {
        AppendEntriesResponse::Success => {
            w.u8(0);
        }
        AppendEntriesResponse::PartialSuccess(upto) => {
            w.u8(1);
            encode_opt_log_id(&mut w, upto);
        }
        AppendEntriesResponse::Conflict => {
            w.u8(2);
        }
        AppendEntriesResponse::HigherVote(vote) => {
            w.u8(3);
            encode_vote(&mut w, vote);
        }
    }
    w.finish()
}

pub fn decode_append_entries_response(
    bytes: &[u8],
) -> Result<AppendEntriesResponse<NodeId>, DecodeError> {
    let what = "append-entries response";
    let mut r = Reader::new(bytes);
    r.version(WIRE_VERSION, what)?;
    let resp = match r.u8("append-entries outcome")? {
        0 => AppendEntriesResponse::Success,
        1 => AppendEntriesResponse::PartialSuccess(decode_opt_log_id(&mut r)?),
        2 => AppendEntriesResponse::Conflict,
        3 => AppendEntriesResponse::HigherVote(decode_vote(&mut r)?),
        tag => {
            return Err(DecodeError::UnknownTag {
                what: "append-entries outcome",
                tag,
            })
        }
    };
    r.finish(what)?;
    Ok(resp)
}

pub fn encode_vote_request(rpc: &VoteRequest<NodeId>) -> Result<Vec<u8>, EncodeError> {
    let mut w = start(64);
    encode_vote(&mut w, &rpc.vote);
    encode_opt_log_id(&mut w, &rpc.last_log_id);
    w.finish()
}

pub fn decode_vote_request(bytes: &[u8]) -> Result<VoteRequest<NodeId>, DecodeError> {
    let what = "vote request";
    let mut r = Reader::new(bytes);
    r.version(WIRE_VERSION, what)?;
    let vote = decode_vote(&mut r)?;
    let last_log_id = decode_opt_log_id(&mut r)?;
    r.finish(what)?;
    Ok(VoteRequest { vote, last_log_id })
}

pub fn encode_vote_response(resp: &VoteResponse<NodeId>) -> Result<Vec<u8>, EncodeError> {
    let mut w = start(64);
    encode_vote(&mut w, &resp.vote);
    w.bool(resp.vote_granted);
    encode_opt_log_id(&mut w, &resp.last_log_id);
    w.finish()
}

pub fn decode_vote_response(bytes: &[u8]) -> Result<VoteResponse<NodeId>, DecodeError> {
    let what = "vote response";
    let mut r = Reader::new(bytes);
    r.version(WIRE_VERSION, what)?;
    let vote = decode_vote(&mut r)?;
    let vote_granted = r.bool("vote granted")?;
    let last_log_id = decode_opt_log_id(&mut r)?;
    r.finish(what)?;
    Ok(VoteResponse {
        vote,
        vote_granted,
        last_log_id,
    })
}

/// The vote a snapshot stream is sent under (its first message).
pub fn encode_snapshot_vote(vote: &Vote<NodeId>) -> Result<Vec<u8>, EncodeError> {
    let mut w = start(32);
    encode_vote(&mut w, vote);
    w.finish()
}

pub fn decode_snapshot_vote(bytes: &[u8]) -> Result<Vote<NodeId>, DecodeError> {
    let what = "snapshot vote";
    let mut r = Reader::new(bytes);
    r.version(WIRE_VERSION, what)?;
    let vote = decode_vote(&mut r)?;
    r.finish(what)?;
    Ok(vote)
}

pub fn encode_snapshot_response(resp: &SnapshotResponse<NodeId>) -> Result<Vec<u8>, EncodeError> {
    encode_snapshot_vote(&resp.vote)
}

pub fn decode_snapshot_response(bytes: &[u8]) -> Result<SnapshotResponse<NodeId>, DecodeError> {
    Ok(SnapshotResponse {
        vote: decode_snapshot_vote(bytes)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{Command, Request, Value};
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};

    fn log_id(term: u64, index: u64) -> LogId<NodeId> {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    #[test]
    fn every_message_round_trips_and_damage_is_an_error() {
        let mut vote = Vote::new(3, 1);
        vote.committed = true;
        let rpc = AppendEntriesRequest::<TypeConfig> {
            vote,
            prev_log_id: Some(log_id(2, 9)),
            leader_commit: Some(log_id(3, 10)),
            entries: vec![
                Entry {
                    log_id: log_id(3, 10),
                    payload: EntryPayload::Blank,
                },
                Entry {
                    log_id: log_id(3, 11),
                    payload: EntryPayload::Normal(Command {
                        quota_bytes: 1 << 20,
                        requests: vec![Request::Put {
                            key: b"k".to_vec(),
                            value: Value(b"v".to_vec()),
                            prev_kv: false,
                            lease: 0,
                        }],
                    }),
                },
            ],
        };
        let bytes = encode_append_entries(&rpc).unwrap();
        let back = decode_append_entries(&bytes).unwrap();
        assert_eq!(encode_append_entries(&back).unwrap(), bytes);
        for cut in 0..bytes.len() {
            assert!(
                decode_append_entries(&bytes[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode_append_entries(&longer).is_err());

        for resp in [
            AppendEntriesResponse::Success,
            AppendEntriesResponse::PartialSuccess(Some(log_id(3, 4))),
            AppendEntriesResponse::PartialSuccess(None),
            AppendEntriesResponse::Conflict,
            AppendEntriesResponse::HigherVote(Vote::new(9, 2)),
        ] {
            let bytes = encode_append_entries_response(&resp).unwrap();
            assert_eq!(decode_append_entries_response(&bytes).unwrap(), resp);
        }
        let request = VoteRequest {
            vote: Vote::new(4, 2),
            last_log_id: Some(log_id(3, 11)),
        };
        let bytes = encode_vote_request(&request).unwrap();
        assert_eq!(decode_vote_request(&bytes).unwrap(), request);
        let answer = VoteResponse {
            vote: Vote::new(4, 2),
            vote_granted: true,
            last_log_id: None,
        };
        let bytes = encode_vote_response(&answer).unwrap();
        assert_eq!(decode_vote_response(&bytes).unwrap(), answer);
        let bytes = encode_snapshot_vote(&vote).unwrap();
        assert_eq!(decode_snapshot_vote(&bytes).unwrap(), vote);
        assert!(decode_snapshot_vote(&[2]).is_err());
    }
}
