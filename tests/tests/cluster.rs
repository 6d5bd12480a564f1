//! Three-member clusters on the in-process network of `coffer_tests`:
//! replication, leader failover (an abrupt kill) with restart, catch-up by
//! snapshot, a leader cut off in a minority, and stale versus linearizable
//! reads on every member.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, ensure, Context};
use coffer_store::{Consistency, Error, NodeId, Store};
use coffer_tests::{Cluster, WAIT_TIMEOUT};
use tokio::sync::mpsc;

fn key(prefix: &str, i: usize) -> Vec<u8> {
    format!("{prefix}/{i:05}").into_bytes()
}

/// A value of `len` bytes that differs from every other key's value.
fn value(i: usize, len: usize) -> Vec<u8> {
    let seed = format!("value-{i}-");
    seed.bytes().cycle().take(len.max(seed.len())).collect()
}

/// Asserts that `store` holds exactly `want` under `prefix`, reading its
/// local applied state.
async fn assert_holds(
    store: &Store,
    prefix: &[u8],
    want: &BTreeMap<Vec<u8>, Vec<u8>>,
) -> anyhow::Result<()> {
    let node = store.node_id();
    for (k, v) in want {
        let got = store
            .get_kv(k, Consistency::Stale)
            .await?
            .with_context(|| format!("node {node} lacks {}", String::from_utf8_lossy(k)))?;
        ensure!(
            &got.value == v,
            "node {node}: wrong value under {}",
            String::from_utf8_lossy(k)
        );
    }
    let listed = store.list(prefix, Consistency::Stale).await?;
    ensure!(
        listed.len() == want.len(),
        "node {node} lists {} keys under {}, want {}",
        listed.len(),
        String::from_utf8_lossy(prefix),
        want.len()
    );
    Ok(())
}

/// Grants lease `id` through the leader; a retry whose first attempt
/// committed finds it granted.
async fn grant(cluster: &Cluster, id: u64, ttl: std::time::Duration) -> anyhow::Result<()> {
    cluster
        .on_leader(|store| async move {
            match store.lease_grant_with_id(id, ttl).await {
                Err(Error::LeaseExists { .. }) => Ok(()),
                other => other.map(|_| ()),
            }
        })
        .await?;
    Ok(())
}

/// Puts `key` on lease `lease` through the leader.
async fn put_on_lease(cluster: &Cluster, key: &[u8], lease: u64) -> anyhow::Result<()> {
    cluster
        .on_leader(|store| async move {
            let options = coffer_store::PutOptions {
                lease,
                ..Default::default()
            };
            store.put_with(key, b"v", options).await
        })
        .await?;
    Ok(())
}

/// A member's leases as (id, keys attached), from its applied state.
async fn lease_counts(store: &Store) -> anyhow::Result<Vec<(u64, u64)>> {
    Ok(store
        .leases(Consistency::Stale)
        .await?
        .iter()
        .map(|l| (l.id, l.keys))
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_replicate() -> anyhow::Result<()> {
    let started = Instant::now();
    let cluster = Cluster::start(3).await?;
    let mut want = BTreeMap::new();
    let mut last_revision = 0;
    for i in 0..30 {
        let revision = cluster.put(&key("r", i), &value(i, 200)).await?;
        ensure!(revision > last_revision, "revisions must grow");
        last_revision = revision;
        want.insert(key("r", i), value(i, 200));
    }
    // An overwrite: the last write wins everywhere, and bumps the version.
    last_revision = cluster.put(&key("r", 0), b"second").await?;
    want.insert(key("r", 0), b"second".to_vec());

    let applied = cluster.wait_converged().await?;
    let leader = cluster.leader().await?;
    for id in cluster.ids() {
        let store = cluster.store(id)?;
        ensure!(
            store.metrics().last_applied.map(|l| l.index) >= Some(applied),
            "node {id} has not applied {applied}"
        );
        assert_holds(&store, b"r/", &want).await?;
        ensure!(
            store.revision()? == last_revision,
            "node {id} is at revision {}, the leader at {last_revision}",
            store.revision()?
        );
        let first = store
            .get_kv(&key("r", 0), Consistency::Stale)
            .await?
            .context("overwritten key missing")?;
        ensure!(
            first.meta.version == 2,
            "node {id}: overwrite not versioned"
        );
        if id == leader {
            for (k, v) in &want {
                ensure!(
                    store.get(k).await?.as_deref() == Some(v.as_slice()),
                    "leader read"
                );
            }
        } else {
            // A follower serves linearizable reads too: with the leader's
            // read index, from its own state once applied up to it.
            for (k, v) in &want {
                ensure!(
                    store.get(k).await?.as_deref() == Some(v.as_slice()),
                    "node {id}: linearizable read on a follower"
                );
            }
        }
    }
    cluster.shutdown().await?;
    eprintln!("three_nodes_replicate: {:?}", started.elapsed());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_new_leader_keeps_acknowledged_writes() -> anyhow::Result<()> {
    let started = Instant::now();
    let cluster = Arc::new(Cluster::start(3).await?);
    let old = cluster.leader().await?;
    let old_term = cluster.metrics(old)?.current_term;
    let mut acked = BTreeMap::new();
    for i in 0..20 {
        cluster.put(&key("k", i), &value(i, 100)).await?;
        acked.insert(key("k", i), value(i, 100));
    }

    // A client keeps writing while the leader dies; it reports each
    // acknowledged write.
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let writer = tokio::spawn({
        let (cluster, stop) = (cluster.clone(), stop.clone());
        async move {
            let mut i = 1000;
            while !stop.load(Ordering::Relaxed) {
                cluster.put(&key("k", i), &value(i, 100)).await?;
                if tx.send(i).is_err() {
                    break;
                }
                i += 1;
            }
            anyhow::Ok(())
        }
    });
    let mut recv_acked = async |n: usize| -> anyhow::Result<()> {
        for _ in 0..n {
            let i = tokio::time::timeout(WAIT_TIMEOUT, rx.recv())
                .await
                .context("the writer stalled")?
                .context("the writer stopped")?;
            acked.insert(key("k", i), value(i, 100));
        }
        Ok(())
    };
    recv_acked(10).await?;
    cluster.kill(old)?;
    // Writes acknowledged after the kill went to the new leader.
    recv_acked(20).await?;
    stop.store(true, Ordering::Relaxed);
    while let Some(i) = rx.recv().await {
        acked.insert(key("k", i), value(i, 100));
    }
    writer.await??;

    let survivors: Vec<NodeId> = cluster.ids().into_iter().filter(|&id| id != old).collect();
    let new = cluster.leader_among(&survivors).await?;
    ensure!(new != old, "the killed node cannot lead");
    let new_store = cluster.store(new)?;
    ensure!(
        new_store.metrics().current_term > old_term,
        "a new leader needs a new term"
    );
    for (k, v) in &acked {
        ensure!(
            new_store.get(k).await?.as_deref() == Some(v.as_slice()),
            "acknowledged write {} lost on the new leader",
            String::from_utf8_lossy(k)
        );
    }
    let revision = new_store.put(b"after/kill", b"yes").await?;
    ensure!(revision > 0);
    acked.insert(b"after/kill".to_vec(), b"yes".to_vec());
    drop(new_store);

    cluster.restart(old).await?;
    cluster.wait_converged().await?;
    let back = cluster.store(old)?;
    for (k, v) in &acked {
        let got = back.get_kv(k, Consistency::Stale).await?;
        ensure!(
            got.map(|kv| kv.value).as_deref() == Some(v.as_slice()),
            "restarted node {old} lacks {}",
            String::from_utf8_lossy(k)
        );
    }
    ensure!(back.revision()? == cluster.store(new)?.revision()?);
    drop(back);
    Arc::into_inner(cluster)
        .context("cluster still shared")?
        .shutdown()
        .await?;
    eprintln!(
        "leader_killed ({} acknowledged writes): {:?}",
        acked.len(),
        started.elapsed()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_far_behind_installs_a_multi_frame_snapshot() -> anyhow::Result<()> {
    const SNAPSHOT_AFTER_LOGS: u64 = 50;
    /// Enough writes to pass a snapshot interval, and about 3.4 MiB of
    /// values: the snapshot taken at index 50 (some 40 of them, ~2.8 MiB)
    /// spans several ~1 MiB frames.
    const BIG_KEYS: usize = 48;
    const VALUE_BYTES: usize = 72 * 1024;
    let started = Instant::now();
    let cluster = Cluster::start_with(3, |c| {
        c.snapshot_after_logs = SNAPSHOT_AFTER_LOGS;
        c.logs_kept_after_snapshot = 0;
    })
    .await?;
    let mut want = BTreeMap::new();
    for i in 0..5 {
        cluster.put(&key("s", i), b"early").await?;
        want.insert(key("s", i), b"early".to_vec());
    }
    cluster.wait_converged().await?;
    let leader = cluster.leader().await?;
    let victim = cluster
        .ids()
        .into_iter()
        .find(|&id| id != leader)
        .context("no follower")?;
    let victim_last = cluster.metrics(victim)?.last_log_index.unwrap_or(0);
    cluster.kill(victim)?;
    // A lease with a key: the snapshot carries both.
    grant(&cluster, 0x5a, std::time::Duration::from_secs(3600)).await?;
    put_on_lease(&cluster, b"s/leased", 0x5a).await?;
    want.insert(b"s/leased".to_vec(), b"v".to_vec());

    for i in 0..BIG_KEYS {
        cluster.put(&key("s", i), &value(i, VALUE_BYTES)).await?;
        want.insert(key("s", i), value(i, VALUE_BYTES));
    }
    // Every survivor (whichever leads) must have purged the log the victim
    // needs: from here it can only catch up by snapshot.
    for id in cluster.reachable() {
        cluster
            .store(id)?
            .raft()
            .wait(Some(WAIT_TIMEOUT))
            .metrics(
                |m| m.purged.map_or(0, |p| p.index) > victim_last,
                format!("node {id} purges past {victim_last}"),
            )
            .await
            .with_context(|| format!("node {id} did not purge its log"))?;
    }
    ensure!(cluster.snapshot_deliveries(victim).is_empty());

    // A slow link: the stream (5 frames or more) outlasts the longest time a
    // follower waits for its leader (lease + election timeout = 1.2 s).
    // Openraft sends no heartbeat while a snapshot is in flight, so the
    // receiver must keep the leader's lease alive; otherwise the victim
    // campaigns mid-stream and refuses the snapshot when it completes.
    cluster.set_snapshot_frame_delay(std::time::Duration::from_millis(300));
    cluster.restart(victim).await?;
    cluster.wait_converged().await?;
    // The metrics are published as the install completes, a moment before
    // the transport records the delivery.
    let deadline = Instant::now() + WAIT_TIMEOUT;
    let delivery = loop {
        let deliveries = cluster.snapshot_deliveries(victim);
        let installed = deliveries
            .iter()
            .find(|d| d.installed && d.last_log_index > Some(victim_last));
        match installed {
            Some(d) => break d.clone(),
            None if Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            None => bail!("node {victim} caught up without installing a snapshot: {deliveries:?}"),
        }
    };
    ensure!(
        delivery.frames >= 4 && delivery.bytes > 2 << 20,
        "the snapshot should span several frames: {delivery:?}"
    );
    let refused: Vec<_> = cluster
        .snapshot_deliveries(victim)
        .into_iter()
        .filter(|d| !d.installed)
        .collect();
    ensure!(
        refused.is_empty(),
        "node {victim} refused snapshots (it campaigned mid-stream): {refused:?}"
    );
    let m = cluster.metrics(victim)?;
    ensure!(
        m.snapshot.map(|s| s.index) >= delivery.last_log_index,
        "node {victim} reports no installed snapshot: {:?}",
        m.snapshot
    );
    let back = cluster.store(victim)?;
    assert_holds(&back, b"s/", &want).await?;
    let leases = lease_counts(&back).await?;
    ensure!(
        leases == vec![(0x5a, 1)],
        "the snapshot lost the lease: {leases:?}"
    );

    // It keeps up by log afterwards.
    cluster.put(b"s/after", b"log").await?;
    want.insert(b"s/after".to_vec(), b"log".to_vec());
    cluster.wait_converged().await?;
    assert_holds(&back, b"s/", &want).await?;
    ensure!(back.revision()? == cluster.store(cluster.leader().await?)?.revision()?);
    drop(back);
    cluster.shutdown().await?;
    eprintln!(
        "snapshot ({} frames, {} bytes): {:?}",
        delivery.frames,
        delivery.bytes,
        started.elapsed()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_in_minority_cannot_commit() -> anyhow::Result<()> {
    let started = Instant::now();
    let cluster = Cluster::start(3).await?;
    let mut want = BTreeMap::new();
    for i in 0..10 {
        cluster.put(&key("m", i), &value(i, 64)).await?;
        want.insert(key("m", i), value(i, 64));
    }
    cluster.wait_converged().await?;
    let old = cluster.leader().await?;
    let old_term = cluster.metrics(old)?.current_term;

    cluster.isolate(old);
    let cut_off = cluster.store(old)?;
    let attempts = futures::future::join_all((0..3).map(|i| {
        let store = cut_off.clone();
        async move { store.put(&key("lost", i), b"minority").await }
    }))
    .await;
    for attempt in attempts {
        match attempt {
            Err(Error::Timeout(_) | Error::NotLeader { .. } | Error::Unavailable(_)) => {}
            other => bail!("a write to a leader without quorum gave {other:?}"),
        }
    }
    match cut_off.get(&key("m", 0)).await {
        Err(Error::Timeout(_) | Error::NotLeader { .. } | Error::Unavailable(_)) => {}
        other => bail!("a linearizable read without quorum gave {other:?}"),
    }
    drop(cut_off);

    let majority: Vec<NodeId> = cluster.ids().into_iter().filter(|&id| id != old).collect();
    let new = cluster.leader_among(&majority).await?;
    ensure!(new != old);
    ensure!(cluster.metrics(new)?.current_term > old_term);
    for i in 10..20 {
        let (by, _) = cluster
            .on_leader(|store| {
                let (k, v) = (key("m", i), value(i, 64));
                async move { store.put(&k, &v).await }
            })
            .await?;
        ensure!(by != old, "the isolated node acknowledged a write");
        want.insert(key("m", i), value(i, 64));
    }

    cluster.heal(old);
    cluster.wait_converged().await?;
    let leader = cluster.leader().await?;
    ensure!(leader != old || cluster.metrics(old)?.current_term > old_term);
    let revision = cluster.store(leader)?.revision()?;
    for id in cluster.ids() {
        let store = cluster.store(id)?;
        assert_holds(&store, b"m/", &want).await?;
        ensure!(
            store.list(b"lost/", Consistency::Stale).await?.is_empty(),
            "node {id} holds a write the minority never committed"
        );
        ensure!(store.revision()? == revision, "node {id} diverged");
    }
    ensure!(cluster.store(leader)?.get(&key("lost", 0)).await?.is_none());
    cluster.shutdown().await?;
    eprintln!("leader_in_minority: {:?}", started.elapsed());
    Ok(())
}

/// Stale versus linearizable reads on three members (issue 5, fault 6: this
/// was claimed from a single node only). A follower cut off from the others
/// answers a stale read from its own, older state, but a linearizable read
/// there fails rather than return that old value. A linearizable read on a
/// connected follower takes the leader's read index and answers once its
/// state is applied up to it: the latest value, never an older one. Once
/// healed, the cut-off follower's stale read catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_reads_are_local_and_linearizable_reads_are_never_stale_on_three_members(
) -> anyhow::Result<()> {
    let cluster = Cluster::start(3).await?;
    cluster.put(b"cfg", b"v1").await?;
    cluster.wait_converged().await?;
    let leader = cluster.leader().await?;
    let followers: Vec<NodeId> = cluster
        .ids()
        .into_iter()
        .filter(|&id| id != leader)
        .collect();
    let (cut, connected) = (followers[0], followers[1]);

    cluster.isolate(cut);
    let (by, _) = cluster
        .on_leader(|store| async move { store.put(b"cfg", b"v2").await })
        .await?;
    ensure!(by != cut, "the isolated follower acknowledged a write");
    let leader = cluster.leader_among(&[by, connected]).await?;

    let cut_store = cluster.store(cut)?;
    let stale = cut_store.get_kv(b"cfg", Consistency::Stale).await?;
    ensure!(
        stale.as_ref().map(|kv| kv.value.as_slice()) == Some(&b"v1"[..]),
        "a stale read on the cut-off follower should see its own state (v1)"
    );
    match cut_store.get_kv(b"cfg", Consistency::Linearizable).await {
        Err(Error::Timeout(_) | Error::NotLeader { .. } | Error::Unavailable(_)) => {}
        Ok(kv) => bail!(
            "a linearizable read on a follower cut off from the leader answered {:?}",
            kv.map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
        ),
        Err(e) => bail!("a linearizable read on the cut-off follower failed with {e:?}"),
    }

    let on_leader = cluster
        .store(leader)?
        .get_kv(b"cfg", Consistency::Linearizable)
        .await?;
    ensure!(
        on_leader.as_ref().map(|kv| kv.value.as_slice()) == Some(&b"v2"[..]),
        "a linearizable read on the leader missed the latest write"
    );
    if connected != leader {
        let read = cluster
            .store(connected)?
            .get_kv(b"cfg", Consistency::Linearizable)
            .await?;
        ensure!(
            read.as_ref().map(|kv| kv.value.as_slice()) == Some(&b"v2"[..]),
            "a linearizable read on a connected follower returned an old value"
        );
    }

    cluster.heal(cut);
    // Every reachable member, the healed one included, applies the log.
    cluster.wait_converged().await?;
    let caught_up = cut_store.get_kv(b"cfg", Consistency::Stale).await?;
    ensure!(
        caught_up.as_ref().map(|kv| kv.value.as_slice()) == Some(&b"v2"[..]),
        "the healed follower did not catch up"
    );
    match cut_store.get_kv(b"cfg", Consistency::Linearizable).await {
        Ok(kv) => ensure!(kv.as_ref().map(|kv| kv.value.as_slice()) == Some(&b"v2"[..])),
        Err(e) => ensure!(e.is_retryable(), "after healing: {e:?}"),
    }
    drop(cut_store);
    cluster.shutdown().await?;
    Ok(())
}

/// An explicit compaction goes through Raft: once applied everywhere, a
/// watch from a compacted revision fails on every member, and one from
/// just after it works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_reaches_every_member() -> anyhow::Result<()> {
    let cluster = Cluster::start(3).await?;
    let mut last = 0;
    for i in 0..5 {
        last = cluster.put(&key("c", i), b"v").await?;
    }
    let target = last - 2;
    cluster
        .on_leader(|store| async move { store.compact(target).await })
        .await?;
    cluster.wait_converged().await?;
    for id in cluster.ids() {
        let store = cluster.store(id)?;
        match store.watch(b"c/", target) {
            Err(Error::Compacted { oldest, .. }) => ensure!(oldest == target + 1),
            Err(e) => bail!("node {id}: {e:?}"),
            Ok(_) => bail!("node {id} still serves history from the compacted revision {target}"),
        }
        let mut watch = store.watch(b"c/", target + 1)?;
        let e = tokio::time::timeout(WAIT_TIMEOUT, watch.next()).await??;
        ensure!(
            e.revision == target + 1,
            "node {id}: first event at {}",
            e.revision
        );
    }
    cluster.shutdown().await?;
    Ok(())
}

/// Leases are replicated state: every member holds them and their keys,
/// a lease outlives the leader that granted it, and the next leader
/// revokes it through Raft once it runs out (not before), so every member,
/// the restarted old leader included, agrees that its keys are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_expires_the_old_leaders_leases() -> anyhow::Result<()> {
    use coffer_store::EventKind;
    use std::time::Duration;
    const SHORT: u64 = 0x5407;
    const LONG: u64 = 0x1096;
    let cluster = Cluster::start(3).await?;
    let granted = Instant::now();
    grant(&cluster, SHORT, Duration::from_secs(3)).await?;
    grant(&cluster, LONG, Duration::from_secs(3600)).await?;
    put_on_lease(&cluster, b"lease/short", SHORT).await?;
    put_on_lease(&cluster, b"lease/long", LONG).await?;
    cluster.wait_converged().await?;
    for id in cluster.ids() {
        let leases = lease_counts(&cluster.store(id)?).await?;
        ensure!(
            leases == vec![(LONG, 1), (SHORT, 1)],
            "node {id} holds {leases:?}"
        );
    }
    let old = cluster.leader().await?;
    cluster.kill(old)?;
    let survivors: Vec<NodeId> = cluster.ids().into_iter().filter(|&id| id != old).collect();
    let new = cluster.leader_among(&survivors).await?;
    let store = cluster.store(new)?;
    let mut watch = store.watch(b"lease/short", 0)?;
    if store
        .get_kv(b"lease/short", Consistency::Stale)
        .await?
        .is_some()
    {
        let deadline = tokio::time::Instant::now() + WAIT_TIMEOUT;
        loop {
            let e = tokio::time::timeout_at(deadline, watch.next())
                .await
                .context("the new leader never expired the lease")??;
            if e.kind == EventKind::Delete {
                break;
            }
        }
    }
    ensure!(
        granted.elapsed() >= Duration::from_secs(3),
        "the lease ended early: {:?}",
        granted.elapsed()
    );
    drop(watch);
    drop(store);
    cluster.restart(old).await?;
    cluster.wait_converged().await?;
    for id in cluster.ids() {
        let store = cluster.store(id)?;
        let leases: Vec<u64> = store
            .leases(Consistency::Stale)
            .await?
            .iter()
            .map(|l| l.id)
            .collect();
        ensure!(leases == vec![LONG], "node {id} holds leases {leases:?}");
        ensure!(store
            .get_kv(b"lease/short", Consistency::Stale)
            .await?
            .is_none());
        ensure!(store
            .get_kv(b"lease/long", Consistency::Stale)
            .await?
            .is_some());
    }
    cluster.shutdown().await?;
    Ok(())
}

/// Versions for past reads are replicated state: every member answers a
/// read at a past revision, and a watch with previous versions, exactly
/// as the leader does, from its own applied state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_member_reads_past_revisions_alike() -> anyhow::Result<()> {
    use coffer_store::{Range, WatchOptions};
    let cluster = Cluster::start(3).await?;
    cluster.put(b"p/a", b"1").await?; // 1
    cluster.put(b"p/b", b"1").await?; // 2
    cluster.put(b"p/a", b"2").await?; // 3
    cluster
        .on_leader(|store| async move { store.delete(b"p/b").await })
        .await?; // 4
    cluster.put(b"p/c", b"1").await?; // 5
    cluster.wait_converged().await?;
    let want: [&[(&str, &str)]; 5] = [
        &[("p/a", "1")],
        &[("p/a", "1"), ("p/b", "1")],
        &[("p/a", "2"), ("p/b", "1")],
        &[("p/a", "2")],
        &[("p/a", "2"), ("p/c", "1")],
    ];
    for id in cluster.ids() {
        let store = cluster.store(id)?;
        for (i, expected) in want.iter().enumerate() {
            let revision = i as u64 + 1;
            let got = store
                .range(
                    Range::prefix(b"p/").at_revision(revision),
                    Consistency::Stale,
                )
                .await?;
            let got: Vec<(String, String)> = got
                .kvs
                .iter()
                .map(|kv| {
                    (
                        String::from_utf8_lossy(&kv.key).into_owned(),
                        String::from_utf8_lossy(&kv.value).into_owned(),
                    )
                })
                .collect();
            let expected: Vec<(String, String)> = expected
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            ensure!(got == expected, "node {id} at revision {revision}: {got:?}");
        }
        let mut watch = store.watch_with(
            b"p/a",
            WatchOptions {
                from: 3,
                prev_kv: true,
                ..WatchOptions::default()
            },
        )?;
        let e = tokio::time::timeout(WAIT_TIMEOUT, watch.next()).await??;
        let prev = e.prev_kv.map(|kv| kv.value.into_vec());
        ensure!(
            (e.revision, prev.as_deref()) == (3, Some(&b"1"[..])),
            "node {id}: revision {} replaced {prev:?}",
            e.revision
        );
    }
    cluster.shutdown().await?;
    Ok(())
}

/// Recovery from a lone survivor (`force_new_cluster`): two of three
/// members are lost for good; the third, reopened forced, is the only
/// voter, holds every acknowledged write and commits again. Forced once
/// more, it is left as it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_survivor_forced_into_a_new_cluster_keeps_its_data() -> anyhow::Result<()> {
    let cluster = Cluster::start(3).await?;
    let mut want = BTreeMap::new();
    for i in 0..20 {
        cluster.put(&key("f", i), &value(i, 100)).await?;
        want.insert(key("f", i), value(i, 100));
    }
    cluster.wait_converged().await?;
    cluster.kill(2)?;
    cluster.kill(3)?;
    cluster.stop(1).await?;

    cluster.restart_forced(1).await?;
    let store = cluster.store(1)?;
    let metrics = store.metrics();
    let voters: Vec<_> = metrics.membership_config.membership().voter_ids().collect();
    ensure!(voters == vec![1], "voters after forcing: {voters:?}");
    ensure!(
        metrics.membership_config.membership().nodes().count() == 1,
        "other members are left: {:?}",
        metrics.membership_config
    );
    ensure!(store.leader() == Some(1), "the survivor does not lead");
    assert_holds(&store, b"f/", &want).await?;
    store.put(b"f/after", b"recovered").await?;
    want.insert(b"f/after".to_vec(), b"recovered".to_vec());
    let forced_at = metrics
        .membership_config
        .log_id()
        .context("no membership log id")?;

    // Forced again with nothing to do: the membership entry stays the one
    // the first recovery wrote.
    drop(store);
    cluster.stop(1).await?;
    cluster.restart_forced(1).await?;
    let store = cluster.store(1)?;
    ensure!(
        store.metrics().membership_config.log_id() == &Some(forced_at),
        "a second forcing wrote another membership"
    );
    assert_holds(&store, b"f/", &want).await?;
    store.put(b"f/again", b"yes").await?;
    cluster.stop(1).await?;
    Ok(())
}
