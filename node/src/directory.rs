//! The tenant directory: who may authenticate, whose entries are trusted, and which RSA key a reader's
//! payloads are wrapped to (spec §2.6, the config-directory model).
//!
//! File format (YAML):
//!
//! ```yaml
//! tenants:
//!   acme:
//!     admin: {username: CN=admin/O=acme, signingPublicKey: "...", encryptionPublicKey: "..."}
//!     requireMetadataSignatureSince: 1767225600000   # optional v2 floor (ms)
//!     users:
//!       - {username: CN=alice/O=acme, signingPublicKey: "...", encryptionPublicKey: "...", revoked: false}
//!     trustedServers:
//!       - {name: CN=relay-eu, signingPublicKey: "...", encryptionPublicKey: "..."}
//! ```
//!
//! A user may appear once per device (same username, other keys). [`DirectoryHandle::current`] checks
//! the file's identity (inode, size, mtime) on every call and reloads on change, so a revoked user or a
//! removed key is refused on the very next request. A file that fails to parse is reported and the
//! last good directory stays in force.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};

use crate::crypto::keys::{parse_encryption_public_key, parse_signing_public_key, pem_lookup_key};

#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    #[error("cannot read directory {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid directory {path}: {source}")]
    Parse {
        path: PathBuf,
        source: serde_yaml::Error,
    },
    #[error("tenant {tenant}: {detail}")]
    Invalid { tenant: String, detail: String },
}

// ------------------------------------------------------------------ file format

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectoryFile {
    #[serde(default)]
    pub tenants: BTreeMap<String, TenantFile>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TenantFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<UserEntry>,
    #[serde(default)]
    pub users: Vec<UserEntry>,
    #[serde(default)]
    pub trusted_servers: Vec<ServerEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_metadata_signature_since: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UserEntry {
    pub username: String,
    pub signing_public_key: String,
    pub encryption_public_key: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub revoked: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerEntry {
    pub name: String,
    pub signing_public_key: String,
    pub encryption_public_key: String,
}

// ------------------------------------------------------------------ resolved form

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrincipalKind {
    User,
    Admin,
    TrustedServer,
}

/// One device key of a user, admin or trusted server, with parsed keys.
#[derive(Debug)]
pub struct Principal {
    pub username: String,
    /// The signing key PEM as written in the directory (trailing whitespace trimmed).
    pub signing_pem: String,
    pub signing_key: VerifyingKey,
    pub encryption_key: crate::crypto::keys::EncryptionPublicKey,
    pub kind: PrincipalKind,
    pub revoked: bool,
}

impl Principal {
    /// Admin and trusted servers are always active; users unless revoked.
    pub fn is_active(&self) -> bool {
        self.kind != PrincipalKind::User || !self.revoked
    }
}

/// One tenant's resolved directory.
#[derive(Debug, Default)]
pub struct TenantDirectory {
    by_key: HashMap<String, Arc<Principal>>,
    by_name: HashMap<String, Vec<Arc<Principal>>>,
    pub require_metadata_signature_since: Option<i64>,
}

impl TenantDirectory {
    /// The principal owning a signing key (whitespace-insensitive PEM match), active or not.
    pub fn by_signing_key(&self, pem: &str) -> Option<&Arc<Principal>> {
        self.by_key.get(&pem_lookup_key(pem))
    }

    /// Active principal for a signing key: the trust check for authors and tokens.
    pub fn active_by_signing_key(&self, pem: &str) -> Option<&Arc<Principal>> {
        self.by_signing_key(pem).filter(|p| p.is_active())
    }

    /// All device keys registered under a username (case-insensitive).
    pub fn by_username(&self, username: &str) -> &[Arc<Principal>] {
        self.by_name
            .get(&username.to_lowercase())
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// Identifies the set of known signing keys: changes exactly when an author check could
    /// come out differently (a key added, removed, revoked or reinstated).
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut keys: Vec<(&String, bool)> = self
            .by_key
            .iter()
            .map(|(k, p)| (k, p.is_active()))
            .collect();
        keys.sort();
        let mut hash = Sha256::new();
        for (key, active) in keys {
            hash.update(key.as_bytes());
            hash.update([0, u8::from(active)]);
        }
        hex::encode(&hash.finalize()[..16])
    }

    /// Whether the v2 metadata-signature floor applies to an entry received at `now_ms`.
    pub fn requires_v2(&self, now_ms: i64) -> bool {
        self.require_metadata_signature_since
            .is_some_and(|since| now_ms >= since)
    }

    fn build(tenant: &str, file: &TenantFile) -> Result<Self, DirectoryError> {
        let invalid = |detail: String| DirectoryError::Invalid {
            tenant: tenant.to_string(),
            detail,
        };
        let mut dir = TenantDirectory {
            require_metadata_signature_since: file.require_metadata_signature_since,
            ..Default::default()
        };
        let entries = file
            .admin
            .iter()
            .map(|u| (u.username.as_str(), u, PrincipalKind::Admin, false))
            .chain(
                file.users
                    .iter()
                    .map(|u| (u.username.as_str(), u, PrincipalKind::User, u.revoked)),
            );
        let servers: Vec<UserEntry> = file
            .trusted_servers
            .iter()
            .map(|s| UserEntry {
                username: s.name.clone(),
                signing_public_key: s.signing_public_key.clone(),
                encryption_public_key: s.encryption_public_key.clone(),
                revoked: false,
            })
            .collect();
        let entries = entries.chain(
            servers
                .iter()
                .map(|u| (u.username.as_str(), u, PrincipalKind::TrustedServer, false)),
        );
        for (name, user, kind, revoked) in entries {
            if name.trim().is_empty() {
                return Err(invalid("a user or server has an empty name".into()));
            }
            let signing_key = parse_signing_public_key(&user.signing_public_key)
                .map_err(|e| invalid(format!("{name}: {e}")))?;
            let encryption_key = parse_encryption_public_key(&user.encryption_public_key)
                .map_err(|e| invalid(format!("{name}: {e}")))?;
            let principal = Arc::new(Principal {
                username: name.to_string(),
                signing_pem: user.signing_public_key.trim_end().to_string(),
                signing_key,
                encryption_key,
                kind,
                revoked,
            });
            let key = pem_lookup_key(&user.signing_public_key);
            if let Some(existing) = dir.by_key.get(&key) {
                if !existing.username.eq_ignore_ascii_case(name) {
                    return Err(invalid(format!(
                        "signing key of {name} is already registered for {}",
                        existing.username
                    )));
                }
            }
            dir.by_key.insert(key, principal.clone());
            dir.by_name
                .entry(name.to_lowercase())
                .or_default()
                .push(principal);
        }
        Ok(dir)
    }
}

/// All tenants of a node.
#[derive(Debug, Default)]
pub struct Directory {
    tenants: HashMap<String, TenantDirectory>,
}

impl Directory {
    pub fn from_file(file: &DirectoryFile) -> Result<Self, DirectoryError> {
        let mut tenants = HashMap::new();
        for (name, tenant) in &file.tenants {
            let id = crate::wire::ids::normalize_tenant_id(name).map_err(|e| {
                DirectoryError::Invalid {
                    tenant: name.clone(),
                    detail: e.to_string(),
                }
            })?;
            tenants.insert(id, TenantDirectory::build(name, tenant)?);
        }
        Ok(Directory { tenants })
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self, DirectoryError> {
        let file: DirectoryFile =
            serde_yaml::from_str(text).map_err(|source| DirectoryError::Parse {
                path: path.to_path_buf(),
                source,
            })?;
        Self::from_file(&file)
    }

    pub fn tenant(&self, tenant_id: &str) -> Option<&TenantDirectory> {
        self.tenants.get(tenant_id)
    }

    pub fn tenant_ids(&self) -> impl Iterator<Item = &str> {
        self.tenants.keys().map(String::as_str)
    }
}

/// Identity of a file version: changes whenever the file is replaced or rewritten.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    len: u64,
    modified: Option<SystemTime>,
    #[cfg(unix)]
    inode: u64,
    #[cfg(unix)]
    ctime_ns: i64,
}

fn stamp(path: &Path) -> Option<FileStamp> {
    let meta = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    use std::os::unix::fs::MetadataExt;
    Some(FileStamp {
        len: meta.len(),
        modified: meta.modified().ok(),
        #[cfg(unix)]
        inode: meta.ino(),
        #[cfg(unix)]
        ctime_ns: meta.ctime() * 1_000_000_000 + meta.ctime_nsec(),
    })
}

/// Called after each reload attempt (for logs and metrics).
pub type ReloadHook = Box<dyn Fn(Result<(), &DirectoryError>) + Send + Sync>;

/// The live directory of a node, reloaded from its file when the file changes.
pub struct DirectoryHandle {
    path: Option<PathBuf>,
    state: RwLock<(Option<FileStamp>, Arc<Directory>)>,
    on_reload: ReloadHook,
}

impl DirectoryHandle {
    /// Loads `path` (must be valid at startup).
    pub fn open(path: Option<PathBuf>, on_reload: ReloadHook) -> Result<Self, DirectoryError> {
        let (stamp_now, dir) = match &path {
            Some(p) => {
                let s = stamp(p);
                (s, Arc::new(load(p)?))
            }
            None => (None, Arc::new(Directory::default())),
        };
        Ok(DirectoryHandle {
            path,
            state: RwLock::new((stamp_now, dir)),
            on_reload,
        })
    }

    /// A fixed directory (tests, embedded use).
    pub fn fixed(directory: Directory) -> Self {
        DirectoryHandle {
            path: None,
            state: RwLock::new((None, Arc::new(directory))),
            on_reload: Box::new(|_| {}),
        }
    }

    /// The directory as of now: one `stat` per call, a reload when the file changed.
    pub fn current(&self) -> Arc<Directory> {
        let Some(path) = &self.path else {
            return self.state.read().expect("directory lock").1.clone();
        };
        let now = stamp(path);
        {
            let state = self.state.read().expect("directory lock");
            if state.0 == now {
                return state.1.clone();
            }
        }
        let mut state = self.state.write().expect("directory lock");
        if state.0 != now {
            match load(path) {
                Ok(dir) => {
                    *state = (now, Arc::new(dir));
                    (self.on_reload)(Ok(()));
                }
                Err(e) => {
                    // Keep the last good directory; remember the stamp so a broken file is
                    // reported once, not on every request.
                    state.0 = now;
                    (self.on_reload)(Err(&e));
                }
            }
        }
        state.1.clone()
    }
}

fn load(path: &Path) -> Result<Directory, DirectoryError> {
    let text = std::fs::read_to_string(path).map_err(|source| DirectoryError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    Directory::parse(&text, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata;

    pub(crate) fn vector_user(name: &str, username: &str) -> UserEntry {
        let keys = testdata::load("keys.json");
        let id = &keys["identities"][name];
        UserEntry {
            username: username.to_string(),
            signing_public_key: id["signingPublicKey"].as_str().unwrap().to_string(),
            encryption_public_key: id["encryptionPublicKey"].as_str().unwrap().to_string(),
            revoked: false,
        }
    }

    #[test]
    fn lookups_by_key_and_name_and_revocation() {
        let alice = vector_user("alice", "CN=alice/O=acme");
        let mut bob = vector_user("bob", "CN=bob/O=acme");
        bob.revoked = true;
        let file = DirectoryFile {
            tenants: BTreeMap::from([(
                "Acme".to_string(),
                TenantFile {
                    users: vec![alice.clone(), bob.clone()],
                    ..Default::default()
                },
            )]),
        };
        let dir = Directory::from_file(&file).unwrap();
        let t = dir.tenant("acme").unwrap();
        let rewrapped = format!("{}\n", alice.signing_public_key.replace('\n', "\r\n"));
        assert_eq!(
            t.active_by_signing_key(&rewrapped).unwrap().username,
            "CN=alice/O=acme"
        );
        assert!(t.active_by_signing_key(&bob.signing_public_key).is_none());
        assert!(t.by_signing_key(&bob.signing_public_key).unwrap().revoked);
        assert_eq!(t.by_username("cn=ALICE/o=acme").len(), 1);
    }

    #[test]
    fn reloads_when_the_file_changes_and_keeps_the_last_good_one() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("dir.yaml");
        let mut file = DirectoryFile::default();
        file.tenants.insert(
            "acme".into(),
            TenantFile {
                users: vec![vector_user("alice", "alice")],
                ..Default::default()
            },
        );
        std::fs::write(&path, serde_yaml::to_string(&file).unwrap()).unwrap();
        let handle = DirectoryHandle::open(Some(path.clone()), Box::new(|_| {})).unwrap();
        let alice_key = vector_user("alice", "alice").signing_public_key;
        assert!(handle
            .current()
            .tenant("acme")
            .unwrap()
            .active_by_signing_key(&alice_key)
            .is_some());

        file.tenants.get_mut("acme").unwrap().users[0].revoked = true;
        std::fs::write(&path, serde_yaml::to_string(&file).unwrap()).unwrap();
        assert!(handle
            .current()
            .tenant("acme")
            .unwrap()
            .active_by_signing_key(&alice_key)
            .is_none());

        std::fs::write(&path, "tenants: [broken").unwrap();
        assert!(
            handle.current().tenant("acme").is_some(),
            "last good directory stays"
        );
    }
}
