//! The public gRPC contract in `proto/` compiles (with protox: no system
//! `protoc`) and the `Kv` service offers the store's calls.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

#[test]
fn the_kv_contract_compiles_and_mirrors_the_store() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto");
    let files = protox::compile(["coffer/v1/kv.proto"], [&root]).unwrap();
    let kv = files
        .file
        .iter()
        .find(|f| f.name() == "coffer/v1/kv.proto")
        .and_then(|f| f.service.iter().find(|s| s.name() == "Kv"))
        .expect("service Kv");
    let methods: Vec<&str> = kv.method.iter().map(|m| m.name()).collect();
    assert_eq!(
        methods,
        [
            "Put",
            "Get",
            "Delete",
            "DeleteRange",
            "Range",
            "Txn",
            "Compact",
            "Watch",
            "LeaseGrant",
            "LeaseRevoke",
            "LeaseKeepAlive",
            "LeaseList",
        ]
    );
    let watch = kv.method.iter().find(|m| m.name() == "Watch").unwrap();
    assert!(watch.server_streaming(), "Watch streams its events");
}
