//! Several real nodes on loopback, each with its own generated identity, sharing one tenant
//! directory that lists the vector users and every node as a trusted server.

use std::net::TcpListener;
use std::path::PathBuf;

use serde_json::{json, Value};
use syncrelay_node::crypto::keys::Identity;
use syncrelay_node::crypto::transport::{aes_decrypt, SessionKey};
use syncrelay_node::directory::{DirectoryFile, ServerEntry};
use syncrelay_node::wire::{b64, Entry, EntryMetadata};

use super::{directory, identity, Client, Node, TENANT};

pub struct Member {
    pub name: String,
    pub identity: Identity,
    pub dir: tempfile::TempDir,
    pub port: u16,
}

pub struct Cluster {
    // Declared first so that it drops first: the nodes are stopped before their folders (in
    // `members`) are deleted, instead of serving for a moment without their files.
    nodes: Vec<Option<Node>>,
    pub members: Vec<Member>,
    /// `http`, or `https` for nodes configured with `tls` (their URLs and listening lines).
    pub scheme: &'static str,
}

/// A free loopback port (bound and released; only used before any node starts).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Fast settings so that tests converge quickly.
pub const FAST_SYNC: &str =
    "sync: {intervalMs: 300, backoffBaseMs: 50, maxAttempts: 2, forwardTimeoutMs: 3000, requestTimeoutMs: 5000}\n";

impl Cluster {
    /// Generates one identity per node (in parallel: RSA-3072 key generation is slow).
    pub fn new(names: &[&str]) -> Cluster {
        let identities: Vec<Identity> = std::thread::scope(|s| {
            let handles: Vec<_> = names
                .iter()
                .map(|_| s.spawn(|| Identity::generate().unwrap()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let members: Vec<Member> = names
            .iter()
            .zip(identities)
            .map(|(name, identity)| Member {
                name: format!("CN={name}"),
                identity,
                dir: tempfile::tempdir().unwrap(),
                port: free_port(),
            })
            .collect();
        let cluster = Cluster {
            nodes: members.iter().map(|_| None).collect(),
            members,
            scheme: "http",
        };
        cluster.write_directory(false);
        cluster
    }

    pub fn index(&self, name: &str) -> usize {
        self.members
            .iter()
            .position(|m| m.name == format!("CN={name}"))
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    pub fn url(&self, i: usize) -> String {
        format!("{}://127.0.0.1:{}", self.scheme, self.members[i].port)
    }

    pub fn dir(&self, i: usize) -> PathBuf {
        self.members[i].dir.path().to_path_buf()
    }

    /// The shared directory (alice possibly revoked), written into every node's folder.
    pub fn write_directory(&self, alice_revoked: bool) {
        let mut file: DirectoryFile = directory(alice_revoked);
        let tenant = file.tenants.get_mut(TENANT).unwrap();
        tenant.trusted_servers = self
            .members
            .iter()
            .map(|m| ServerEntry {
                name: m.name.clone(),
                signing_public_key: m.identity.signing_public_pem.clone(),
                encryption_public_key: m.identity.encryption_public_pem.clone(),
            })
            .collect();
        let text = serde_yaml::to_string(&file).unwrap();
        for m in &self.members {
            // Write-then-rename so that a reloading node never reads half a file.
            let tmp = m.dir.path().join("directory.yaml.tmp");
            std::fs::write(&tmp, &text).unwrap();
            std::fs::rename(&tmp, m.dir.path().join("directory.yaml")).unwrap();
        }
    }

    /// Writes node `i`'s config: its identity, port, the shared directory, and `extra` YAML.
    pub fn configure(&self, i: usize, extra: &str) {
        self.configure_sync(i, FAST_SYNC, extra)
    }

    /// Like [`configure`](Self::configure) with `sync` (a whole `sync: {...}` line) in place of
    /// [`FAST_SYNC`].
    pub fn configure_sync(&self, i: usize, sync: &str, extra: &str) {
        let m = &self.members[i];
        let d = m.dir.path();
        std::fs::create_dir_all(d.join("keys")).unwrap();
        std::fs::write(d.join("keys/signing.pem"), m.identity.signing_private_pem()).unwrap();
        std::fs::write(
            d.join("keys/encryption.pem"),
            m.identity.encryption_private_pem(),
        )
        .unwrap();
        let config = format!(
            "name: {name}\nlisten: 127.0.0.1:{port}\ndataDir: {d}/data\ndirectoryFile: {d}/directory.yaml\n\
             identity:\n  signingKeyFile: {d}/keys/signing.pem\n  encryptionKeyFile: {d}/keys/encryption.pem\n{sync}{extra}",
            name = m.name,
            port = m.port,
            d = d.display()
        );
        std::fs::write(d.join("node.yaml"), config).unwrap();
    }

    /// `upstreams:` / `peers:` YAML for the given nodes.
    pub fn remotes(&self, key: &str, of: &[usize]) -> String {
        let list: Vec<String> = of
            .iter()
            .map(|&j| format!("{{name: n{j}, url: '{}'}}", self.url(j)))
            .collect();
        format!("{key}: [{}]\n", list.join(", "))
    }

    pub fn start(&mut self, i: usize) {
        let node = Node::start_in(&self.dir(i));
        assert_eq!(node.url, self.url(i));
        self.nodes[i] = Some(node);
    }

    /// SIGKILL node `i` (its folder stays).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut node) = self.nodes[i].take() {
            node.stop_hard();
        }
    }

    pub fn pid(&self, i: usize) -> u32 {
        self.nodes[i].as_ref().expect("node running").pid()
    }

    pub fn client(&self, i: usize) -> Client {
        self.nodes[i].as_ref().expect("node running").client()
    }

    pub async fn status(&self, i: usize) -> Value {
        let r = self.client(i).get("/status").await;
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()
    }
}

impl Client {
    /// Pushes entries as JSON; returns the response body.
    pub async fn push(&self, db: &str, entries: &[Entry]) -> Value {
        let r = self
            .sync(
                "putEntries",
                json!({"dbId": db, "entries": super::wire_entries(entries)}),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()
    }

    /// All ids of a database, by cursor scan.
    pub async fn ids(&self, db: &str) -> Vec<String> {
        let mut ids = Vec::new();
        let mut cursor = Value::Null;
        loop {
            let r = self
                .sync(
                    "scanEntriesSince",
                    json!({"dbId": db, "cursor": cursor, "limit": 1000}),
                )
                .await;
            assert_eq!(r.status, 200, "{}", r.text());
            let page = r.json();
            for e in page["entries"].as_array().unwrap() {
                ids.push(e["id"].as_str().unwrap().to_string());
            }
            cursor = page["nextCursor"].clone();
            if !page["hasMore"].as_bool().unwrap() {
                return ids;
            }
        }
    }

    /// Fetches entries with the session-key wrap and removes it with `reader`'s private key.
    pub async fn fetch(&self, db: &str, ids: &[String], reader: &str) -> Vec<Entry> {
        let r = self
            .sync(
                "getEntries",
                json!({"dbId": db, "ids": ids, "sessionKeyWrap": true}),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        let body = r.json();
        let key = identity(reader);
        let wrapped = b64::decode(body["wrappedSessionKey"].as_str().unwrap()).unwrap();
        let session = SessionKey::unwrap(&key.encryption, &wrapped).unwrap();
        body["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let iv = b64::decode(e["iv"].as_str().unwrap()).unwrap();
                let sealed = b64::decode(e["sessionEncryptedPayload"].as_str().unwrap()).unwrap();
                let metadata: EntryMetadata = serde_json::from_value(e.clone()).unwrap();
                Entry {
                    metadata,
                    encrypted_data: aes_decrypt(&session, &iv, &sealed).unwrap(),
                }
            })
            .collect()
    }
}
