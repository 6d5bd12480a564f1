//! The `Kv` gRPC service: each handler parses the request, makes one call
//! into the store, and maps the answer (or the error, through
//! [`crate::status`]).

use std::pin::Pin;
use std::time::Duration;

use coffer_store::{
    Check, CmpOp, Compare, Consistency, DeleteOptions, Event, EventKind, KeyValue, Op, OpResult,
    PutOptions, Range, RangeResult, Store, Txn, Value, WatchFilter, WatchItem, WatchOptions,
};
use futures::{Stream, StreamExt};
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use coffer_vault::SYSTEM_PREFIX;

use tonic::metadata::MetadataMap;
use tonic::transport::Channel;

use crate::pb;
use crate::raft::{forwarded, was_forwarded, GrpcTransport};
use crate::server::MAX_MESSAGE_BYTES;
use crate::status::{from_store, invalid};

/// At most this many keys in one `Range` answer, whatever the request's
/// limit: the rest is reported through `more` and `next`.
pub const RANGE_PAGE_KEYS: usize = 1000;
/// A `Range` answer stops adding keys once their keys and values reach
/// this many bytes (it always holds at least one key).
pub const RANGE_PAGE_BYTES: usize = 4 << 20;

/// The `Kv` service over one store.
#[derive(Debug, Clone)]
pub struct KvService {
    store: Store,
    /// Becomes true when the server stops: open watch streams end then, so
    /// that their connections can close.
    stopping: watch::Receiver<bool>,
    /// How a member reaches the leader with what it cannot serve itself:
    /// writes and linearizable reads (none for a store a command opened).
    leader: Option<GrpcTransport>,
}

impl KvService {
    pub fn new(store: Store, stopping: watch::Receiver<bool>) -> KvService {
        KvService {
            store,
            stopping,
            leader: None,
        }
    }

    /// Forwards what only the leader serves through `transport`.
    pub fn forwarding(mut self, transport: GrpcTransport) -> KvService {
        self.leader = Some(transport);
        self
    }

    /// The leader's `Kv` client when `error` says another member leads and
    /// this request may go there; otherwise the error's status.
    fn to_leader(
        &self,
        metadata: &MetadataMap,
        error: coffer_store::Error,
    ) -> Result<pb::kv_client::KvClient<Channel>, Status> {
        match (&self.leader, &error) {
            (
                Some(transport),
                coffer_store::Error::NotLeader {
                    leader_addr: Some(addr),
                    ..
                },
            ) if !was_forwarded(metadata) => {
                let channel = transport.channel(addr).map_err(|e| {
                    Status::unavailable(format!("forwarding to the leader at {addr}: {e}"))
                })?;
                Ok(pb::kv_client::KvClient::new(channel)
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES))
            }
            _ => Err(from_store(error)),
        }
    }
}

/// The longest a forwarded request waits for the leader's answer.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);

impl KvService {
    /// Sends what `error` says only the leader serves to the leader, once,
    /// with `call`. Gives up with `UNAVAILABLE` (the request may or may
    /// not have taken effect) when this member learns of another leader
    /// meanwhile (the one it forwarded to is gone or cut off: the client
    /// retries at once instead of waiting on a dead connection), or after
    /// [`FORWARD_TIMEOUT`].
    async fn forward<T, F, Fut>(
        &self,
        metadata: &MetadataMap,
        error: coffer_store::Error,
        call: F,
    ) -> Result<Response<T>, Status>
    where
        F: FnOnce(pb::kv_client::KvClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<Response<T>, Status>>,
    {
        let leader = match &error {
            coffer_store::Error::NotLeader { leader_id, .. } => *leader_id,
            _ => None,
        };
        let client = self.to_leader(metadata, error)?;
        let mut metrics = self.store.raft().metrics();
        tokio::select! {
            answer = tokio::time::timeout(FORWARD_TIMEOUT, call(client)) => answer.unwrap_or_else(|_| {
                Err(Status::unavailable(format!(
                    "the leader did not answer within {FORWARD_TIMEOUT:?}; the request may or may not have taken effect"
                )))
            }),
            _ = metrics.wait_for(|m| m.current_leader != leader) => Err(Status::unavailable(
                "the leader changed while the request was forwarded to it; it may or may not have taken effect: retry",
            )),
        }
    }
}

fn consistency(stale: bool) -> Consistency {
    if stale {
        Consistency::Stale
    } else {
        Consistency::Linearizable
    }
}

fn to_pb(kv: KeyValue) -> pb::KeyValue {
    pb::KeyValue {
        key: kv.key,
        value: kv.value.into_vec(),
        meta: Some(pb::KeyMeta {
            create_revision: kv.meta.create_revision,
            mod_revision: kv.meta.mod_revision,
            version: kv.meta.version,
            lease: kv.meta.lease,
        }),
    }
}

/// Refuses keys of the vault's reserved namespace: the `Kv` service never
/// reads or writes the CA key, a secret, or any other vault object.
fn user_key(key: &[u8]) -> Result<(), Status> {
    if key.first() == Some(&SYSTEM_PREFIX) {
        return Err(invalid(
            "keys starting with a 0x00 byte are reserved for Coffer's own objects",
        ));
    }
    Ok(())
}

/// The first key outside the reserved namespace.
const FIRST_USER_KEY: &[u8] = &[SYSTEM_PREFIX + 1];

/// The part of a requested range outside the reserved namespace; `None`
/// when nothing is left.
fn key_range(range: Option<pb::KeyRange>) -> Option<Range> {
    let range = range.unwrap_or_default();
    let start = if range.start.as_slice() < FIRST_USER_KEY {
        FIRST_USER_KEY.to_vec()
    } else {
        range.start
    };
    if range
        .end
        .as_deref()
        .is_some_and(|end| end <= start.as_slice())
    {
        return None;
    }
    Some(Range {
        start,
        end: range.end,
        ..Range::default()
    })
}

/// Whether a watch event may be delivered: not a vault object's.
fn user_event(item: &Result<WatchItem, coffer_store::Error>) -> bool {
    !matches!(item, Ok(WatchItem::Event(e)) if e.kv.key.first() == Some(&SYSTEM_PREFIX))
}

/// The page a `Range` request gets: its own limit, capped by
/// [`RANGE_PAGE_KEYS`].
fn page_limit(requested: u64) -> usize {
    match usize::try_from(requested) {
        Ok(0) | Err(_) => RANGE_PAGE_KEYS,
        Ok(n) => n.min(RANGE_PAGE_KEYS),
    }
}

/// Cuts a range answer down to [`RANGE_PAGE_BYTES`] (keeping at least one
/// key), pointing `next` at the first key cut.
fn cap_page_bytes(mut result: RangeResult) -> RangeResult {
    let mut bytes = 0;
    let keep = result
        .kvs
        .iter()
        .position(|kv| {
            bytes += kv.key.len() + kv.value.len();
            bytes > RANGE_PAGE_BYTES
        })
        .map_or(result.kvs.len(), |i| i.max(1));
    if keep < result.kvs.len() {
        result.next = Some(result.kvs[keep].key.clone());
        result.more = true;
        result.kvs.truncate(keep);
    }
    result
}

fn cmp_op(op: i32) -> Result<CmpOp, Status> {
    match pb::compare::Op::try_from(op) {
        Ok(pb::compare::Op::Equal) => Ok(CmpOp::Equal),
        Ok(pb::compare::Op::NotEqual) => Ok(CmpOp::NotEqual),
        Ok(pb::compare::Op::Less) => Ok(CmpOp::Less),
        Ok(pb::compare::Op::Greater) => Ok(CmpOp::Greater),
        Ok(pb::compare::Op::Unspecified) | Err(_) => Err(invalid(
            "a compare needs an op: EQUAL, NOT_EQUAL, LESS or GREATER",
        )),
    }
}

fn compare(c: pb::Compare) -> Result<Compare, Status> {
    use pb::compare::Check as C;
    user_key(&c.key)?;
    let check = match c.check {
        None => return Err(invalid("a compare needs something to check")),
        Some(C::Absent(true)) => Check::Absent,
        Some(C::Absent(false)) => Check::Exists,
        Some(C::Value(v)) => Check::Value(cmp_op(c.op)?, Value(v)),
        Some(C::Version(v)) => Check::Version(cmp_op(c.op)?, v),
        Some(C::CreateRevision(r)) => Check::CreateRevision(cmp_op(c.op)?, r),
        Some(C::ModRevision(r)) => Check::ModRevision(cmp_op(c.op)?, r),
    };
    Ok(Compare { key: c.key, check })
}

fn op(o: pb::Op) -> Result<Op, Status> {
    let key = match &o.op {
        Some(pb::op::Op::Put(p)) => &p.key,
        Some(pb::op::Op::Delete(d)) => &d.key,
        Some(pb::op::Op::Get(g)) => &g.key,
        None => return Err(invalid("a transaction operation is empty")),
    };
    user_key(key)?;
    match o.op {
        None => Err(invalid("a transaction operation is empty")),
        Some(pb::op::Op::Put(p)) if p.prev_kv => Err(invalid(
            "prev_kv is not available inside a transaction: put a Get of the key before the Put",
        )),
        Some(pb::op::Op::Delete(d)) if d.prev_kv => Err(invalid(
            "prev_kv is not available inside a transaction: put a Get of the key before the Delete",
        )),
        Some(pb::op::Op::Put(p)) => Ok(Op::Put {
            key: p.key,
            value: Value(p.value),
            lease: p.lease,
        }),
        Some(pb::op::Op::Delete(d)) => Ok(Op::Delete { key: d.key }),
        Some(pb::op::Op::Get(g)) => Ok(Op::Get { key: g.key }),
    }
}

fn op_result(result: OpResult, revision: u64) -> pb::OpResult {
    use pb::op_result::Result as R;
    let result = match result {
        OpResult::Put => R::Put(pb::PutResponse {
            revision,
            prev_kv: None,
        }),
        OpResult::Delete { deleted } => R::Delete(pb::DeleteResponse {
            deleted,
            revision,
            prev_kv: None,
        }),
        OpResult::Get(kv) => R::Get(pb::GetResponse { kv: kv.map(to_pb) }),
    };
    pb::OpResult {
        result: Some(result),
    }
}

fn watch_filter(filter: i32) -> Result<WatchFilter, Status> {
    match pb::watch_request::Filter::try_from(filter) {
        Ok(pb::watch_request::Filter::All) => Ok(WatchFilter::All),
        Ok(pb::watch_request::Filter::PutsOnly) => Ok(WatchFilter::PutsOnly),
        Ok(pb::watch_request::Filter::DeletesOnly) => Ok(WatchFilter::DeletesOnly),
        Err(_) => Err(invalid(format!("unknown watch filter {filter}"))),
    }
}

fn watch_response(item: WatchItem) -> pb::WatchResponse {
    use pb::watch_response::Item;
    let item = match item {
        WatchItem::Event(Event {
            revision,
            kind,
            kv,
            prev_kv,
        }) => {
            let kind = match kind {
                EventKind::Put => pb::watch_event::Kind::Put,
                EventKind::Delete => pb::watch_event::Kind::Delete,
            };
            let mut kv = to_pb(kv);
            if kind == pb::watch_event::Kind::Delete {
                kv.meta = None;
            }
            Item::Event(pb::WatchEvent {
                revision,
                kind: kind.into(),
                kv: Some(kv),
                prev_kv: prev_kv.map(to_pb),
            })
        }
        WatchItem::Progress { revision } => Item::ProgressRevision(revision),
    };
    pb::WatchResponse { item: Some(item) }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::kv_server::Kv for KvService {
    async fn put(&self, r: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        let (metadata, _, r) = r.into_parts();
        user_key(&r.key)?;
        let options = PutOptions {
            prev_kv: r.prev_kv,
            lease: r.lease,
        };
        match self.store.put_with(&r.key, &r.value, options).await {
            Ok(put) => Ok(Response::new(pb::PutResponse {
                revision: put.revision,
                prev_kv: put.prev_kv.map(to_pb),
            })),
            Err(e) => {
                self.forward(
                    &metadata,
                    e,
                    |mut c| async move { c.put(forwarded(r)).await },
                )
                .await
            }
        }
    }

    async fn get(&self, r: Request<pb::GetRequest>) -> Result<Response<pb::GetResponse>, Status> {
        let (metadata, _, r) = r.into_parts();
        user_key(&r.key)?;
        match self.store.get_kv(&r.key, consistency(r.stale)).await {
            Ok(kv) => Ok(Response::new(pb::GetResponse { kv: kv.map(to_pb) })),
            Err(e) => {
                self.forward(
                    &metadata,
                    e,
                    |mut c| async move { c.get(forwarded(r)).await },
                )
                .await
            }
        }
    }

    async fn delete(
        &self,
        r: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let (metadata, _, r) = r.into_parts();
        user_key(&r.key)?;
        let options = DeleteOptions { prev_kv: r.prev_kv };
        match self.store.delete_with(&r.key, options).await {
            Ok(deleted) => Ok(Response::new(pb::DeleteResponse {
                deleted: deleted.deleted,
                revision: deleted.revision,
                prev_kv: deleted.prev_kv.map(to_pb),
            })),
            Err(e) => {
                self.forward(
                    &metadata,
                    e,
                    |mut c| async move { c.delete(forwarded(r)).await },
                )
                .await
            }
        }
    }

    async fn delete_range(
        &self,
        r: Request<pb::DeleteRangeRequest>,
    ) -> Result<Response<pb::DeleteRangeResponse>, Status> {
        let (metadata, _, r) = r.into_parts();
        let options = DeleteOptions { prev_kv: r.prev_kv };
        let Some(range) = key_range(r.range.clone()) else {
            return Ok(Response::new(pb::DeleteRangeResponse {
                revision: self.store.revision().map_err(from_store)?,
                ..Default::default()
            }));
        };
        match self.store.delete_range(range, options).await {
            Ok(deleted) => Ok(Response::new(pb::DeleteRangeResponse {
                revision: deleted.revision,
                deleted: deleted.deleted,
                prev_kvs: deleted.prev_kvs.into_iter().map(to_pb).collect(),
            })),
            Err(e) => {
                self.forward(&metadata, e, |mut c| async move {
                    c.delete_range(forwarded(r)).await
                })
                .await
            }
        }
    }

    async fn range(
        &self,
        r: Request<pb::RangeRequest>,
    ) -> Result<Response<pb::RangeResponse>, Status> {
        let (metadata, _, r) = r.into_parts();
        let Some(range) = key_range(r.range.clone()) else {
            return Ok(Response::new(pb::RangeResponse {
                revision: self.store.revision().map_err(from_store)?,
                ..Default::default()
            }));
        };
        let range = Range {
            limit: page_limit(r.limit),
            keys_only: r.keys_only,
            count_only: r.count_only,
            revision: r.revision,
            ..range
        };
        match self.store.range(range, consistency(r.stale)).await {
            Ok(result) => {
                let result = cap_page_bytes(result);
                Ok(Response::new(pb::RangeResponse {
                    kvs: result.kvs.into_iter().map(to_pb).collect(),
                    count: result.count,
                    more: result.more,
                    next: result.next,
                    revision: result.revision,
                }))
            }
            Err(e) => {
                self.forward(
                    &metadata,
                    e,
                    |mut c| async move { c.range(forwarded(r)).await },
                )
                .await
            }
        }
    }

    async fn txn(&self, r: Request<pb::TxnRequest>) -> Result<Response<pb::TxnResponse>, Status> {
        let (metadata, _, r) = r.into_parts();
        let txn = Txn {
            compares: r
                .compares
                .iter()
                .cloned()
                .map(compare)
                .collect::<Result<_, _>>()?,
            success: r
                .success
                .iter()
                .cloned()
                .map(op)
                .collect::<Result<_, _>>()?,
            failure: r
                .failure
                .iter()
                .cloned()
                .map(op)
                .collect::<Result<_, _>>()?,
        };
        match self.store.txn(txn).await {
            Ok(done) => Ok(Response::new(pb::TxnResponse {
                succeeded: done.succeeded,
                revision: done.revision,
                results: done
                    .results
                    .into_iter()
                    .map(|result| op_result(result, done.revision))
                    .collect(),
            })),
            Err(e) => {
                self.forward(
                    &metadata,
                    e,
                    |mut c| async move { c.txn(forwarded(r)).await },
                )
                .await
            }
        }
    }

    async fn compact(
        &self,
        r: Request<pb::CompactRequest>,
    ) -> Result<Response<pb::CompactResponse>, Status> {
        let (metadata, _, r) = r.into_parts();
        match self.store.compact(r.revision).await {
            Ok(()) => Ok(Response::new(pb::CompactResponse {
                revision: r.revision,
            })),
            Err(e) => {
                self.forward(&metadata, e, |mut c| async move {
                    c.compact(forwarded(r)).await
                })
                .await
            }
        }
    }

    type WatchStream = WatchStream;

    async fn watch(&self, r: Request<pb::WatchRequest>) -> Result<Response<WatchStream>, Status> {
        let r = r.into_inner();
        user_key(&r.prefix)?;
        let options = WatchOptions {
            from: r.from_revision,
            filter: watch_filter(r.filter)?,
            progress_interval: (r.progress_interval_ms > 0)
                .then(|| Duration::from_millis(r.progress_interval_ms)),
            prev_kv: r.prev_kv,
        };
        let watch = self
            .store
            .watch_with(&r.prefix, options)
            .map_err(from_store)?;
        let mut stopping = self.stopping.clone();
        let stream = watch
            .filter(|item| std::future::ready(user_event(item)))
            .map(|item| item.map(watch_response).map_err(from_store))
            .take_until(async move {
                // An error means the server is gone: stop as well.
                let _ = stopping.wait_for(|stop| *stop).await;
            });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn lease_grant(
        &self,
        r: Request<pb::LeaseGrantRequest>,
    ) -> Result<Response<pb::LeaseGrantResponse>, Status> {
        let (metadata, _, r) = r.into_parts();
        let ttl = Duration::from_secs(r.ttl_seconds);
        let granted = match r.id {
            0 => self.store.lease_grant(ttl).await,
            id => self.store.lease_grant_with_id(id, ttl).await,
        };
        match granted {
            Ok(lease) => Ok(Response::new(pb::LeaseGrantResponse {
                id: lease.id,
                ttl_seconds: lease.ttl.as_secs(),
            })),
            Err(e) => {
                self.forward(&metadata, e, |mut c| async move {
                    c.lease_grant(forwarded(r)).await
                })
                .await
            }
        }
    }

    async fn lease_revoke(
        &self,
        r: Request<pb::LeaseRevokeRequest>,
    ) -> Result<Response<pb::LeaseRevokeResponse>, Status> {
        let (metadata, _, r) = r.into_parts();
        match self.store.lease_revoke(r.id).await {
            Ok(revoked) => Ok(Response::new(pb::LeaseRevokeResponse {
                revision: revoked.revision,
                deleted: revoked.deleted,
            })),
            Err(e) => {
                self.forward(&metadata, e, |mut c| async move {
                    c.lease_revoke(forwarded(r)).await
                })
                .await
            }
        }
    }

    async fn lease_keep_alive(
        &self,
        r: Request<pb::LeaseKeepAliveRequest>,
    ) -> Result<Response<pb::LeaseKeepAliveResponse>, Status> {
        let (metadata, _, r) = r.into_parts();
        match self.store.lease_keep_alive(r.id).await {
            Ok(ttl) => Ok(Response::new(pb::LeaseKeepAliveResponse {
                ttl_seconds: ttl.as_secs(),
            })),
            Err(e) => {
                self.forward(&metadata, e, |mut c| async move {
                    c.lease_keep_alive(forwarded(r)).await
                })
                .await
            }
        }
    }

    async fn lease_list(
        &self,
        r: Request<pb::LeaseListRequest>,
    ) -> Result<Response<pb::LeaseListResponse>, Status> {
        let (metadata, _, r) = r.into_parts();
        match self.store.leases(consistency(r.stale)).await {
            Ok(leases) => Ok(Response::new(pb::LeaseListResponse {
                leases: leases
                    .into_iter()
                    .map(|l| pb::lease_list_response::Lease {
                        id: l.id,
                        ttl_seconds: l.ttl.as_secs(),
                        remaining_seconds: l.remaining.as_secs(),
                        keys: l.keys,
                    })
                    .collect(),
            })),
            Err(e) => {
                self.forward(&metadata, e, |mut c| async move {
                    c.lease_list(forwarded(r)).await
                })
                .await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use coffer_store::KeyMeta;

    fn kv(key: &str, value_bytes: usize) -> KeyValue {
        KeyValue {
            key: key.as_bytes().to_vec(),
            value: Value(vec![7; value_bytes]),
            meta: KeyMeta::default(),
        }
    }

    fn page(kvs: Vec<KeyValue>) -> RangeResult {
        RangeResult {
            count: kvs.len() as u64,
            kvs,
            ..RangeResult::default()
        }
    }

    #[test]
    fn pages_are_capped_by_keys() {
        assert_eq!(page_limit(0), RANGE_PAGE_KEYS);
        assert_eq!(page_limit(5), 5);
        assert_eq!(page_limit(u64::MAX), RANGE_PAGE_KEYS);
    }

    #[test]
    fn pages_are_capped_by_bytes_and_point_at_the_rest() {
        let big = RANGE_PAGE_BYTES / 3;
        let capped = cap_page_bytes(page(vec![
            kv("a", big),
            kv("b", big),
            kv("c", big),
            kv("d", 1),
        ]));
        assert_eq!(capped.kvs.len(), 2, "a third value would pass the cap");
        assert!(capped.more);
        assert_eq!(capped.next.as_deref(), Some(&b"c"[..]));
        assert_eq!(capped.count, 4);

        let small = cap_page_bytes(page(vec![kv("a", 10), kv("b", 10)]));
        assert_eq!(small.kvs.len(), 2);
        assert!(!small.more);
        assert_eq!(small.next, None);
    }

    #[test]
    fn a_page_holds_at_least_one_key() {
        let capped = cap_page_bytes(page(vec![kv("a", RANGE_PAGE_BYTES + 1), kv("b", 1)]));
        assert_eq!(capped.kvs.len(), 1);
        assert_eq!(capped.next.as_deref(), Some(&b"b"[..]));
    }

    #[test]
    fn the_reserved_namespace_is_out_of_reach() {
        assert!(user_key(b"\0coffer/cluster").is_err());
        assert!(user_key(b"app/a").is_ok());
        let all = key_range(None).unwrap();
        assert_eq!(all.start, vec![1]);
        assert_eq!(all.end, None);
        let reserved = pb::KeyRange {
            start: vec![],
            end: Some(vec![0, 0xff]),
        };
        assert!(key_range(Some(reserved)).is_none());
        let straddling = pb::KeyRange {
            start: vec![0],
            end: Some(b"b".to_vec()),
        };
        assert_eq!(key_range(Some(straddling)).unwrap().start, vec![1]);
        let op = pb::Op {
            op: Some(pb::op::Op::Get(pb::GetRequest {
                key: b"\0coffer/cluster".to_vec(),
                stale: false,
            })),
        };
        assert!(super::op(op).is_err());
    }

    #[test]
    fn compares_need_an_op_and_a_check() {
        let missing_op = pb::Compare {
            key: b"k".to_vec(),
            op: 0,
            check: Some(pb::compare::Check::Version(1)),
        };
        assert_eq!(
            compare(missing_op).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        let absent = pb::Compare {
            key: b"k".to_vec(),
            op: 0,
            check: Some(pb::compare::Check::Absent(true)),
        };
        assert_eq!(compare(absent).unwrap().check, Check::Absent);
        let empty = pb::Compare {
            key: b"k".to_vec(),
            op: pb::compare::Op::Equal.into(),
            check: None,
        };
        assert!(compare(empty).is_err());
    }
}
