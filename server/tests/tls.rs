//! The node's TCP port: mTLS with certificates from the cluster's own CA,
//! checked per call. In-process (a CA this test can issue certificates
//! from) and against a real `coffer server` process.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use coffer_server::client::connect_tls;
use coffer_server::pb;
use coffer_server::pb::cluster_client::ClusterClient;
use coffer_server::pb::kv_client::KvClient;
use coffer_server::tls;
use coffer_store::{Config, Store};
use coffer_vault::ca::{NodeCert, NodeKey, Role, RootCa, NODE_CERT_VALIDITY};
use coffer_vault::cluster::Cluster;
use support::{Server, DEADLINE};
use tonic::transport::{Channel, Endpoint};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// A certificate and key for `node` in `role`, from `ca`.
fn identity(ca: &RootCa, node: u64, role: Role) -> (Vec<u8>, NodeKey) {
    let key = NodeKey::generate().unwrap();
    let cert = ca
        .issue(
            &key.public_key_der().unwrap(),
            node,
            role,
            NODE_CERT_VALIDITY,
        )
        .unwrap();
    (cert, key)
}

/// A CA certificate and key (PEM) of an operator's own.
fn operator_ca() -> (String, String) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "Example Corp CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn unix_now() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    i64::try_from(since.as_secs()).unwrap()
}

async fn channel(addr: &str, ca: &[u8], id: Option<&(Vec<u8>, NodeKey)>) -> Channel {
    let config =
        tls::client_config(&tls::Trust::of(ca), id.map(|(c, k)| (c.as_slice(), k))).unwrap();
    connect_tls(addr, config).await.unwrap()
}

async fn health(channel: Channel) -> ServingStatus {
    let answer = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: "coffer.v1.Kv".into(),
        })
        .await
        .unwrap();
    answer.into_inner().status()
}

fn get(key: &[u8]) -> pb::GetRequest {
    pb::GetRequest {
        key: key.to_vec(),
        stale: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_this_clusters_managers_reach_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(Config::new(dir.path())).await.unwrap();
    // The operator's own CA (as `--ca-cert/--ca-key` give it), which may
    // sign for other clusters too.
    let (own_cert, own_key) = operator_ca();
    let cluster = Cluster::init_or_load_with(&store, |id| {
        RootCa::from_operator(id, own_cert.as_bytes(), own_key.as_bytes(), unix_now())
    })
    .await
    .unwrap();
    let ca = cluster.ca.clone();
    let me = coffer_server::identity::load_or_issue(
        dir.path(),
        &store.local_keys(),
        &ca,
        store.node_id(),
        coffer_vault::ca::NODE_CERT_VALIDITY,
    )
    .unwrap();
    let trust = tls::Trust::of(ca.cert_der());
    let resolver = tls::NodeCertResolver::new(&me.cert_der, &me.key, &trust).unwrap();
    let server_tls =
        tls::server_config(tls::ClientVerifier::new(&trust).unwrap(), resolver).unwrap();
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap().to_string();
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let served =
        coffer_server::server::serve_port(&store, ca.cluster_id(), server_tls, tcp, stopping, None)
            .await
            .unwrap();
    let served = tokio::spawn(served);

    // A manager of this cluster: the whole key/value API.
    let manager = identity(&ca, 2, Role::Manager);
    let mut kv = KvClient::new(channel(&addr, ca.cert_der(), Some(&manager)).await);
    let put = kv
        .put(pb::PutRequest {
            key: b"a".to_vec(),
            value: b"1".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(put.into_inner().revision > 0);
    let got = kv.get(get(b"a")).await.unwrap().into_inner().kv.unwrap();
    assert_eq!(got.value, b"1");
    // ... but never the vault's objects, which share the store.
    let reserved = kv.get(get(b"\0coffer/cluster")).await.unwrap_err();
    assert_eq!(reserved.code(), Code::InvalidArgument);
    let all = kv
        .range(pb::RangeRequest::default())
        .await
        .unwrap()
        .into_inner();
    let keys: Vec<_> = all.kvs.iter().map(|kv| kv.key.clone()).collect();
    assert_eq!(keys, vec![b"a".to_vec()], "the range showed a reserved key");

    // A worker of this cluster: health and the CA, not the store.
    let worker = identity(&ca, 3, Role::Worker);
    let as_worker = channel(&addr, ca.cert_der(), Some(&worker)).await;
    let denied = KvClient::new(as_worker.clone())
        .get(get(b"a"))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert!(denied.message().contains("for managers"), "{denied:?}");
    assert_eq!(health(as_worker.clone()).await, ServingStatus::Serving);

    // No certificate (a joiner): the CA and health only.
    let anonymous = channel(&addr, ca.cert_der(), None).await;
    let refused = KvClient::new(anonymous.clone())
        .get(get(b"a"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    let root = ClusterClient::new(anonymous.clone())
        .root_ca(pb::RootCaRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(root.digest, ca.digest());
    assert_eq!(root.certificate, ca.cert_der());
    assert_eq!(health(anonymous).await, ServingStatus::Serving);

    // A certificate from another CA: refused by TLS itself.
    let foreign_ca = RootCa::generate(ca.cluster_id()).unwrap();
    let foreign = identity(&foreign_ca, 2, Role::Manager);
    let config = tls::client_config(&trust, Some((&foreign.0, &foreign.1))).unwrap();
    let foreign_call = match connect_tls(&addr, config).await {
        Ok(channel) => KvClient::new(channel).get(get(b"a")).await.map(|_| ()),
        Err(e) => Err(tonic::Status::unavailable(e.to_string())),
    };
    let code = foreign_call.unwrap_err().code();
    assert!(
        code != Code::Ok && code != Code::PermissionDenied && code != Code::Unauthenticated,
        "a foreign certificate got as far as a handler: {code:?}"
    );

    // A certificate from this CA for another cluster (an operator's CA
    // may sign for several): refused like one without a certificate.
    let other_cluster = RootCa::from_operator(
        "another-cluster",
        own_cert.as_bytes(),
        own_key.as_bytes(),
        unix_now(),
    )
    .unwrap();
    let stranger_node = identity(&other_cluster, 2, Role::Manager);
    let as_stranger = channel(&addr, ca.cert_der(), Some(&stranger_node)).await;
    let refused = KvClient::new(as_stranger).get(get(b"a")).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    assert!(refused.message().contains("another cluster"), "{refused:?}");

    // A server that is not of this cluster is refused by the client.
    let stranger = tls::client_config(&tls::Trust::of(foreign_ca.cert_der()), None).unwrap();
    assert!(connect_tls(&addr, stranger).await.is_err());

    // Plain HTTP/2 without TLS gets nothing.
    let plain = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5))
        .connect()
        .await;
    if let Ok(plain) = plain {
        assert!(KvClient::new(plain).get(get(b"a")).await.is_err());
    }

    let _ = stop.send(true);
    tokio::time::timeout(DEADLINE, served)
        .await
        .expect("the port did not stop")
        .unwrap()
        .unwrap();
    store.shutdown().await.unwrap();
}

/// `coffer server` on an empty directory creates the CA and its own
/// certificate, serves mTLS on `--listen`, and keeps both across a restart;
/// the key on disk is sealed.
#[test]
fn a_server_keeps_its_ca_and_identity_across_restarts() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let log = tmp.path().join("server.log");
    let mut server = Server::start(&dir, &log, "127.0.0.1:0", &[]);
    let addr = server.addr.clone();
    let ca_pem = support::ok(server.coffer(&["ca"]));
    let ca_der = {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::CertificateDer::from_pem_slice(ca_pem.as_bytes())
            .unwrap()
            .to_vec()
    };
    let digest = coffer_vault::ca::cert_digest(&ca_der);
    assert!(
        std::fs::read_to_string(&log).unwrap().contains(&digest),
        "the log names another CA digest"
    );

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let anonymous = channel(&addr, &ca_der, None).await;
        assert_eq!(health(anonymous.clone()).await, ServingStatus::Serving);
        let refused = KvClient::new(anonymous).get(get(b"k")).await.unwrap_err();
        assert_eq!(refused.code(), Code::Unauthenticated);
    });

    let cert_file = dir.join("identity/node.crt");
    let key_file = dir.join("identity/node.key");
    let cert_pem = std::fs::read(&cert_file).unwrap();
    let sealed_key = std::fs::read(&key_file).unwrap();
    assert!(
        !String::from_utf8_lossy(&sealed_key).contains("PRIVATE KEY"),
        "the node key is on disk in the clear"
    );
    let cert_der = {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::CertificateDer::from_pem_slice(&cert_pem)
            .unwrap()
            .to_vec()
    };
    let ca = NodeCert::parse(&cert_der).unwrap();
    assert_eq!((ca.node, ca.role), (1, Role::Manager));
    assert!(server.stop("TERM").success());

    let mut again = Server::start(&dir, &log, "127.0.0.1:0", &[]);
    assert_eq!(
        std::fs::read(&cert_file).unwrap(),
        cert_pem,
        "a new certificate on restart"
    );
    assert_eq!(
        std::fs::read(&key_file).unwrap(),
        sealed_key,
        "a new key on restart"
    );
    assert!(std::fs::read_to_string(&log).unwrap().contains(&digest));
    assert!(again.stop("TERM").success());
}
