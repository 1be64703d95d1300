//! The people's commands against real nodes: `sync pull` into a local store, incremental re-run,
//! `sync push` of that store to a second node, and `status`.

mod common;

use std::process::Command;

use common::{identity, signed_entry, username, Node, DB, TENANT};

fn run(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_syncrelay-node"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run syncrelay-node");
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn pull_push_and_status_from_the_command_line() {
    let first = Node::start("");
    let second = Node::start("");
    let mut alice = first.client();
    alice.login("alice").await;
    let entries: Vec<_> = (0..30)
        .map(|n| signed_entry("alice", "cli-doc", n, 512))
        .collect();
    alice.push(DB, &entries).await;

    let work = tempfile::tempdir().unwrap();
    let keys = work.path().join("keys");
    let alice_id = identity("alice");
    std::fs::create_dir_all(&keys).unwrap();
    std::fs::write(keys.join("signing.pem"), alice_id.signing_private_pem()).unwrap();
    std::fs::write(
        keys.join("encryption.pem"),
        alice_id.encryption_private_pem(),
    )
    .unwrap();
    let local = work.path().join("local");
    let name = username("alice");
    let common_args = |url: &str| -> Vec<String> {
        [
            "--url",
            url,
            "--tenant",
            TENANT,
            "--db",
            DB,
            "--local",
            local.to_str().unwrap(),
            "--keys",
            keys.to_str().unwrap(),
            "--username",
            &name,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let with = |verb: &str, url: &str| -> String {
        let mut args = vec!["sync".to_string(), verb.to_string()];
        args.extend(common_args(url));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        run(&refs)
    };

    let pulled = with("pull", &first.url);
    assert!(pulled.contains("30 transferred"), "{pulled}");
    let again = with("pull", &first.url);
    assert!(again.contains("already up to date"), "{again}");

    let pushed = with("push", &second.url);
    assert!(pushed.contains("30 transferred"), "{pushed}");
    let mut bob = second.client();
    bob.login("bob").await;
    assert_eq!(bob.ids(DB).await.len(), 30);

    let table = run(&["status", &second.url]);
    assert!(table.contains("role=origin"), "{table}");
    assert!(table.contains(&format!("{TENANT}/{DB}/docs")), "{table}");
}
