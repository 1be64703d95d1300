//! Locates the recorded reference vectors (`../shared/spec/vectors` beside the checkout, or the folder
//! named by `SYNCRELAY_VECTORS`) for tests in this crate and in `tests/`.

use std::path::PathBuf;

pub fn vectors_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("SYNCRELAY_VECTORS") {
        return PathBuf::from(dir);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/spec/vectors")
}

/// Parses one vector file; panics with the path when it is missing (tests cannot run without it).
pub fn load(name: &str) -> serde_json::Value {
    let path = vectors_dir().join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read test vectors {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("bad JSON in {}: {e}", path.display()))
}

/// One of the vector identities (`alice`, `bob`, `server`, `outsider`) with its private keys.
pub fn identity(name: &str) -> crate::crypto::keys::Identity {
    let keys = load("keys.json");
    let id = &keys["identities"][name];
    crate::crypto::keys::Identity::from_pkcs8_pem(
        id["signingPrivateKeyPkcs8"].as_str().unwrap(),
        id["encryptionPrivateKeyPkcs8"].as_str().unwrap(),
    )
    .unwrap_or_else(|e| panic!("vector identity {name}: {e}"))
}
