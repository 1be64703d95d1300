//! Test harness: real `syncrelay-node` processes on loopback ports, stopped when dropped (also when a
//! test fails), and a small client that authenticates as a vector identity.

#![allow(dead_code)]

pub mod cluster;
pub mod proxy;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ed25519_dalek::pkcs8::DecodePrivateKey;
use ed25519_dalek::{Signer, SigningKey};
use serde_json::{json, Value};
use syncrelay_node::crypto::keys::Identity;
use syncrelay_node::crypto::signing::metadata_signing_bytes;
use syncrelay_node::directory::{DirectoryFile, TenantFile, UserEntry};
use syncrelay_node::testdata;
use syncrelay_node::wire::{b64, b64::B64, content_hash, Entry, EntryMetadata};

pub const TENANT: &str = "vectors";
pub const DB: &str = "vectors-db";

pub fn keys() -> Value {
    testdata::load("keys.json")
}

pub fn identity(name: &str) -> Identity {
    let k = keys();
    let id = &k["identities"][name];
    Identity::from_pkcs8_pem(
        id["signingPrivateKeyPkcs8"].as_str().unwrap(),
        id["encryptionPrivateKeyPkcs8"].as_str().unwrap(),
    )
    .unwrap()
}

pub fn username(name: &str) -> String {
    keys()["identities"][name]["username"]
        .as_str()
        .unwrap()
        .to_string()
}

pub fn user_entry(name: &str, revoked: bool) -> UserEntry {
    let id = identity(name);
    UserEntry {
        username: username(name),
        signing_public_key: id.signing_public_pem,
        encryption_public_key: id.encryption_public_pem,
        revoked,
    }
}

/// The vector tenant: alice and bob as users, bob also admin.
pub fn directory(alice_revoked: bool) -> DirectoryFile {
    let mut file = DirectoryFile::default();
    file.tenants.insert(
        TENANT.into(),
        TenantFile {
            admin: Some(user_entry("bob", false)),
            users: vec![user_entry("alice", alice_revoked), user_entry("bob", false)],
            ..Default::default()
        },
    );
    file
}

pub struct Node {
    child: Child,
    pub url: String,
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes the config, directory and the `server` vector identity into `dir`.
pub fn prepare(dir: &Path, extra_config: &str) {
    let server = identity("server");
    std::fs::create_dir_all(dir.join("keys")).unwrap();
    std::fs::write(dir.join("keys/signing.pem"), server.signing_private_pem()).unwrap();
    std::fs::write(
        dir.join("keys/encryption.pem"),
        server.encryption_private_pem(),
    )
    .unwrap();
    std::fs::write(
        dir.join("directory.yaml"),
        serde_yaml::to_string(&directory(false)).unwrap(),
    )
    .unwrap();
    let config = format!(
        "name: CN=server1\nlisten: 127.0.0.1:0\ndataDir: {d}/data\ndirectoryFile: {d}/directory.yaml\n\
         identity:\n  signingKeyFile: {d}/keys/signing.pem\n  encryptionKeyFile: {d}/keys/encryption.pem\n{extra_config}",
        d = dir.display()
    );
    std::fs::write(dir.join("node.yaml"), config).unwrap();
}

impl Node {
    pub fn start(extra_config: &str) -> Node {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        prepare(&dir, extra_config);
        let mut node = Node::start_in(&dir);
        node._tmp = Some(tmp);
        node
    }

    /// Starts the binary on the config in `dir` and waits for its listening line.
    pub fn start_in(dir: &Path) -> Node {
        let mut child = Command::new(env!("CARGO_BIN_EXE_syncrelay-node"))
            .args(["serve", "--config"])
            .arg(dir.join("node.yaml"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start syncrelay-node");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("listening on ") {
                    let _ = tx.send(url.to_string());
                }
            }
        });
        let url = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("node did not report its address");
        Node {
            child,
            url,
            dir: dir.to_path_buf(),
            _tmp: None,
        }
    }

    /// SIGTERM, and waits for the graceful shutdown (stores flushed, engine closed).
    pub fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }

    /// SIGKILL in place (the folder is kept by its owner).
    pub fn stop_hard(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGKILL, no chance to flush.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self._tmp.take().map(|t| t.keep());
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn client(&self) -> Client {
        Client {
            http: reqwest::Client::new(),
            base: self.url.clone(),
            token: None,
        }
    }
}

#[derive(Clone)]
pub struct Client {
    pub http: reqwest::Client,
    pub base: String,
    pub token: Option<String>,
}

pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl Client {
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        content_type: &str,
    ) -> Reply {
        let url = format!("{}{}", self.base, path);
        let mut req = self.http.request(method.parse().unwrap(), url);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.header("content-type", content_type).body(b);
        }
        let resp = req.send().await.expect("request");
        Reply {
            status: resp.status().as_u16(),
            headers: resp.headers().clone(),
            body: resp.bytes().await.unwrap().to_vec(),
        }
    }

    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.send(
            "POST",
            path,
            Some(serde_json::to_vec(&body).unwrap()),
            "application/json",
        )
        .await
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send("GET", path, None, "").await
    }

    pub async fn sync(&self, op: &str, body: Value) -> Reply {
        self.post(&format!("/{TENANT}/sync/docs/{op}"), body).await
    }

    /// Challenge/authenticate as a vector identity; keeps the token.
    pub async fn login(&mut self, name: &str) -> String {
        let id = identity(name);
        let c = self
            .post(
                &format!("/{TENANT}/auth/challenge"),
                json!({"username": username(name), "signingPublicKey": id.signing_public_pem}),
            )
            .await;
        assert_eq!(c.status, 200, "{}", c.text());
        let challenge = c.json()["challenge"].as_str().unwrap().to_string();
        let sig = b64::encode(&id.signing.sign(challenge.as_bytes()).to_bytes());
        let a = self
            .post(
                &format!("/{TENANT}/auth/authenticate"),
                json!({"challenge": challenge, "signature": sig}),
            )
            .await;
        assert_eq!(a.status, 200, "{}", a.text());
        let token = a.json()["token"].as_str().unwrap().to_string();
        self.token = Some(token.clone());
        token
    }
}

/// A signed (v2 + legacy) doc entry by `author`, like the reference client writes.
pub fn signed_entry(author: &str, doc: &str, n: usize, payload_len: usize) -> Entry {
    // Distinct per (doc, n), as real ciphertexts are (each has a random IV): stores keep one copy
    // per distinct payload, so repeating payloads would make reads hit a few hot ones.
    let mut state = doc.bytes().fold(n as u64 ^ 0x9E37_79B9_7F4A_7C15, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01B3)
    });
    let payload: Vec<u8> = (0..payload_len)
        .map(|_| {
            // splitmix64
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            (z ^ (z >> 31)) as u8
        })
        .collect();
    signed_payload_entry(author, doc, n, payload)
}

/// A vector identity's Ed25519 signing key.
pub fn signing_key(author: &str) -> SigningKey {
    SigningKey::from_pkcs8_pem(
        keys()["identities"][author]["signingPrivateKeyPkcs8"]
            .as_str()
            .unwrap(),
    )
    .unwrap()
}

/// A signed entry whose stored payload is `payload` (e.g. an AES-GCM ciphertext).
pub fn signed_payload_entry(author: &str, doc: &str, n: usize, payload: Vec<u8>) -> Entry {
    let payload_len = payload.len();
    let k = keys();
    let key = signing_key(author);
    let pem = k["identities"][author]["signingPublicKey"]
        .as_str()
        .unwrap()
        .to_string();
    let mut metadata = EntryMetadata {
        entry_type: if n == 0 { "doc_create" } else { "doc_change" }.into(),
        id: format!("{doc}_d_{n:08x}_{}", &content_hash(&payload)[..16]),
        content_hash: content_hash(&payload),
        doc_id: doc.into(),
        dependency_ids: vec![],
        created_at: 1_767_225_600_000 + n as i64,
        receipt_order: None,
        created_by_public_key: pem,
        decryption_key_id: "default".into(),
        snapshot_head_hashes: None,
        snapshot_head_entry_ids: None,
        signature: B64(key.sign(&payload).to_bytes().to_vec()),
        metadata_signature: None,
        original_size: payload_len as u64,
        encrypted_size: payload_len as u64,
        received_at: None,
        received_by_public_key: None,
        received_date_signature: None,
        attachment_refs: None,
        provenance: None,
        recipients: None,
        entry_version: Some(2),
    };
    metadata.metadata_signature = Some(B64(key
        .sign(&metadata_signing_bytes(&metadata).unwrap())
        .to_bytes()
        .to_vec()));
    Entry {
        metadata,
        encrypted_data: payload,
    }
}

pub fn wire_entries(entries: &[Entry]) -> Value {
    Value::Array(
        entries
            .iter()
            .map(|e| {
                serde_json::to_value(syncrelay_node::wire::WireEntry::from(e.clone())).unwrap()
            })
            .collect(),
    )
}

/// Polls `check` until it is true or the deadline passes.
/// A client's subscription to a node's SSE change feed (spec §4.17), read message by message.
pub struct EventStream {
    body: std::pin::Pin<Box<dyn futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    text: String,
}

impl EventStream {
    /// Opens `GET /{TENANT}/sync/docs/events` at `base` with `token`; asserts the SSE answer.
    pub async fn open(base: &str, token: &str) -> EventStream {
        let resp = reqwest::Client::new()
            .get(format!("{base}/{TENANT}/sync/docs/events?dbId={DB}"))
            .bearer_auth(token)
            .header("accept", "text/event-stream")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        EventStream {
            body: Box::pin(resp.bytes_stream()),
            text: String::new(),
        }
    }

    /// The next message (an event or a comment), without its blank-line terminator; fails after
    /// 20 s without one.
    pub async fn next_message(&mut self) -> String {
        use futures::StreamExt;
        loop {
            if let Some(end) = self.text.find("\n\n") {
                let msg = self.text[..end].to_string();
                self.text.drain(..end + 2);
                return msg;
            }
            let chunk = tokio::time::timeout(Duration::from_secs(20), self.body.next())
                .await
                .expect("an SSE message within 20 s")
                .expect("the feed stays open")
                .unwrap();
            self.text.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    /// The data of the next `change` event, skipping other messages.
    pub async fn next_change(&mut self) -> Value {
        loop {
            let msg = self.next_message().await;
            if let Some(data) = msg.strip_prefix("event: change\ndata: ") {
                return serde_json::from_str(data).unwrap();
            }
        }
    }
}

pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for: {what}");
}
