//! Runs the embedding example (`examples/embedded_vault.rs`) as a test: the
//! vault in-process on a `Store`, a task's files rendered into a
//! directory on a tmpfs and kept current through a rotation.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../examples/embedded_vault.rs"]
mod embedded_vault;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedding_example_renders_a_tasks_secrets() {
    let data = tempfile::tempdir().unwrap();
    let shm = tempfile::tempdir_in("/dev/shm").unwrap();
    let render = shm.path().join("web.1");
    let rendered = embedded_vault::run(data.path(), &render).await.unwrap();
    assert_eq!(
        rendered.reads,
        [b"password123yoyo".to_vec(), b"password456yoyo".to_vec()]
    );
    assert_eq!(rendered.mode, 0o400);
    // Wiped, and our tmpfs (when we could mount one) gone.
    assert_eq!(std::fs::read_dir(&render).unwrap().count(), 0);
    assert!(!coffer_vault::mount::is_mount_point(&render).unwrap());
    // Sealed on disk: neither the name nor the data in the clear.
    let mut todo = vec![data.path().to_path_buf()];
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
                continue;
            }
            let bytes = std::fs::read(&path).unwrap();
            for needle in [&b"password123yoyo"[..], b"password456yoyo", b"my_password"] {
                assert!(
                    !bytes.windows(needle.len()).any(|w| w == needle),
                    "{} holds {}",
                    path.display(),
                    String::from_utf8_lossy(needle)
                );
            }
        }
    }
}
