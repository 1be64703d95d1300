//! Key formats: SPKI public keys and PKCS#8 private keys as PEM, written exactly like the reference
//! (64-character lines, `\n`, no trailing newline), and the node's own identity.

use std::path::Path;

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der, PublicKeyX509Der};
use aws_lc_rs::rsa::{
    KeySize, OaepPrivateDecryptingKey, OaepPublicEncryptingKey, PrivateDecryptingKey,
    PublicEncryptingKey, OAEP_SHA256_MGF1SHA256,
};
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{SigningKey, VerifyingKey};

use super::CryptoError;
use crate::wire::b64;

/// RSA modulus size of every MindooDB encryption key.
pub const RSA_BITS: usize = 3072;

/// A reader's RSA-OAEP (SHA-256, MGF1-SHA-256) public key: what transport encryption wraps to.
///
/// RSA is done by aws-lc-rs: measured on this machine kind it decrypts 6.5× and encrypts ~13× faster
/// than the `rsa` crate (one private-key operation per batch is on every sync hop's path), and it is
/// not affected by the `rsa` crate's timing advisory RUSTSEC-2023-0071.
pub struct EncryptionPublicKey(OaepPublicEncryptingKey);

impl std::fmt::Debug for EncryptionPublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EncryptionPublicKey(RSA-{})", self.0.key_size_bits())
    }
}

impl EncryptionPublicKey {
    fn new(key: PublicEncryptingKey) -> Result<Self, CryptoError> {
        OaepPublicEncryptingKey::new(key)
            .map(Self)
            .map_err(|e| CryptoError::EncryptionKey(e.to_string()))
    }

    /// RSA-OAEP-SHA-256 encryption of a short secret (a payload key).
    pub fn encrypt(&self, plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let mut out = vec![0; self.0.ciphertext_size()];
        let len = self
            .0
            .encrypt(&OAEP_SHA256_MGF1SHA256, plaintext, &mut out, None)
            .map_err(|e| CryptoError::Rsa(e.to_string()))?
            .len();
        out.truncate(len);
        Ok(out)
    }
}

/// The private half, held only by a device (or this node, for its own identity).
pub struct EncryptionPrivateKey {
    key: PrivateDecryptingKey,
    oaep: OaepPrivateDecryptingKey,
}

impl std::fmt::Debug for EncryptionPrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "EncryptionPrivateKey(RSA-{}, redacted)",
            self.key.key_size_bits()
        )
    }
}

impl EncryptionPrivateKey {
    fn new(key: PrivateDecryptingKey) -> Result<Self, CryptoError> {
        let oaep = OaepPrivateDecryptingKey::new(key.clone())
            .map_err(|e| CryptoError::PrivateKey(format!("RSA: {e}")))?;
        Ok(Self { key, oaep })
    }

    pub fn generate() -> Result<Self, CryptoError> {
        let key = PrivateDecryptingKey::generate(KeySize::Rsa3072)
            .map_err(|e| CryptoError::Rsa(e.to_string()))?;
        Self::new(key)
    }

    pub fn from_pkcs8_pem(pem: &str) -> Result<Self, CryptoError> {
        let der = pem_decode(pem, "PRIVATE KEY")
            .map_err(|e| CryptoError::PrivateKey(format!("RSA: {e}")))?;
        let key = PrivateDecryptingKey::from_pkcs8(&der)
            .map_err(|e| CryptoError::PrivateKey(format!("RSA: {e}")))?;
        Self::new(key)
    }

    pub fn public_key(&self) -> EncryptionPublicKey {
        EncryptionPublicKey::new(self.key.public_key()).expect("the public half of a valid key")
    }

    pub fn public_pem(&self) -> String {
        let der =
            AsDer::<PublicKeyX509Der>::as_der(&self.key.public_key()).expect("RSA SPKI encodes");
        pem_encode("PUBLIC KEY", der.as_ref())
    }

    pub fn pkcs8_pem(&self) -> String {
        let der = AsDer::<Pkcs8V1Der>::as_der(&self.key).expect("RSA PKCS#8 encodes");
        pem_encode("PRIVATE KEY", der.as_ref())
    }

    /// RSA-OAEP-SHA-256 decryption.
    pub fn decrypt(&self, ciphertext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let mut out = vec![0; self.oaep.min_output_size()];
        let len = self
            .oaep
            .decrypt(&OAEP_SHA256_MGF1SHA256, ciphertext, &mut out, None)
            .map_err(|e| CryptoError::Rsa(e.to_string()))?
            .len();
        out.truncate(len);
        Ok(out)
    }
}

/// The DER inside a PEM block with the given label.
fn pem_decode(pem: &str, label: &str) -> Result<Vec<u8>, String> {
    let text = pem.trim();
    let body = text
        .strip_prefix(&format!("-----BEGIN {label}-----"))
        .and_then(|rest| rest.strip_suffix(&format!("-----END {label}-----")))
        .ok_or_else(|| format!("not a PEM block labelled {label}"))?;
    let body: String = body.chars().filter(|c| !c.is_whitespace()).collect();
    b64::decode(&body).map_err(|e| format!("bad base64 in PEM: {e}"))
}

/// Wraps DER bytes as PEM the way the reference writes it.
pub fn pem_encode(label: &str, der: &[u8]) -> String {
    let body = b64::encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for (i, chunk) in body.as_bytes().chunks(64).enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
    }
    out.push_str(&format!("\n-----END {label}-----"));
    out
}

/// Whitespace-free form of a PEM, used as a lookup key so that re-wrapped text finds the same key.
pub fn pem_lookup_key(pem: &str) -> String {
    pem.chars().filter(|c| !c.is_whitespace()).collect()
}

pub fn parse_signing_public_key(pem: &str) -> Result<VerifyingKey, CryptoError> {
    VerifyingKey::from_public_key_pem(pem.trim())
        .map_err(|e| CryptoError::SigningKey(e.to_string()))
}

pub fn parse_encryption_public_key(pem: &str) -> Result<EncryptionPublicKey, CryptoError> {
    let der = pem_decode(pem, "PUBLIC KEY").map_err(CryptoError::EncryptionKey)?;
    let key = PublicEncryptingKey::from_der(&der)
        .map_err(|e| CryptoError::EncryptionKey(e.to_string()))?;
    EncryptionPublicKey::new(key)
}

pub fn signing_public_pem(key: &VerifyingKey) -> String {
    let der = key.to_public_key_der().expect("Ed25519 SPKI encodes");
    pem_encode("PUBLIC KEY", der.as_bytes())
}

/// The same Ed25519 key on aws-lc-rs, for signatures on the hot path (a witness receipt per stored
/// entry): measured 7.7–10.0 µs per signature against ed25519-dalek's 13.8–14.2 µs (`cargo bench
/// -p syncrelay-node --bench crypto_bench`). Ed25519 is deterministic, so both sign identical bytes.
pub struct FastSigner(aws_lc_rs::signature::Ed25519KeyPair);

impl FastSigner {
    pub fn new(key: &SigningKey) -> Self {
        let pair = aws_lc_rs::signature::Ed25519KeyPair::from_seed_and_public_key(
            key.as_bytes(),
            key.verifying_key().as_bytes(),
        )
        .expect("a dalek key pair is a valid Ed25519 key pair");
        FastSigner(pair)
    }

    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.0
            .sign(message)
            .as_ref()
            .try_into()
            .expect("Ed25519 signatures are 64 bytes")
    }
}

/// A node's (or a user's) key pairs: Ed25519 for signing, RSA-OAEP-3072 for transport encryption.
pub struct Identity {
    pub signing: SigningKey,
    /// `signing` for witness receipts (see [`FastSigner`]).
    pub signer: FastSigner,
    pub encryption: EncryptionPrivateKey,
    /// Public keys as PEM text, exactly as published.
    pub signing_public_pem: String,
    pub encryption_public_pem: String,
}

impl Identity {
    pub fn generate() -> Result<Self, CryptoError> {
        let signing = SigningKey::generate(&mut rand::rng());
        Ok(Self::from_keys(signing, EncryptionPrivateKey::generate()?))
    }

    pub fn from_keys(signing: SigningKey, encryption: EncryptionPrivateKey) -> Self {
        let signing_public_pem = signing_public_pem(&signing.verifying_key());
        let encryption_public_pem = encryption.public_pem();
        Identity {
            signer: FastSigner::new(&signing),
            signing,
            encryption,
            signing_public_pem,
            encryption_public_pem,
        }
    }

    /// Parses PKCS#8 PEM private keys.
    pub fn from_pkcs8_pem(signing_pem: &str, encryption_pem: &str) -> Result<Self, CryptoError> {
        let signing = SigningKey::from_pkcs8_pem(signing_pem.trim())
            .map_err(|e| CryptoError::PrivateKey(format!("Ed25519: {e}")))?;
        let encryption = EncryptionPrivateKey::from_pkcs8_pem(encryption_pem)?;
        Ok(Self::from_keys(signing, encryption))
    }

    pub fn load(signing_path: &Path, encryption_path: &Path) -> Result<Self, CryptoError> {
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|source| CryptoError::Io {
                path: p.to_path_buf(),
                source,
            })
        };
        Self::from_pkcs8_pem(&read(signing_path)?, &read(encryption_path)?)
    }

    pub fn signing_private_pem(&self) -> String {
        let der = self.signing.to_pkcs8_der().expect("Ed25519 PKCS#8 encodes");
        pem_encode("PRIVATE KEY", der.as_bytes())
    }

    pub fn encryption_private_pem(&self) -> String {
        self.encryption.pkcs8_pem()
    }

    /// Writes both private keys (mode 0600) into `dir` as `signing.pem` and `encryption.pem`.
    pub fn save(&self, dir: &Path) -> Result<(), CryptoError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CryptoError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        for (name, pem) in [
            ("signing.pem", self.signing_private_pem()),
            ("encryption.pem", self.encryption_private_pem()),
        ] {
            let path = dir.join(name);
            write_private(&path, &(pem + "\n")).map_err(io(&path))?;
        }
        Ok(())
    }
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata;

    #[test]
    fn reference_keys_round_trip_to_identical_pem() {
        let keys = testdata::load("keys.json");
        for name in ["alice", "bob", "server", "outsider"] {
            let id = &keys["identities"][name];
            let identity = Identity::from_pkcs8_pem(
                id["signingPrivateKeyPkcs8"].as_str().unwrap(),
                id["encryptionPrivateKeyPkcs8"].as_str().unwrap(),
            )
            .unwrap();
            assert_eq!(
                identity.signing_public_pem,
                id["signingPublicKey"].as_str().unwrap()
            );
            assert_eq!(
                identity.encryption_public_pem,
                id["encryptionPublicKey"].as_str().unwrap()
            );
            assert_eq!(
                hex::encode(identity.signing.verifying_key().as_bytes()),
                id["ed25519RawPublicKeyHex"].as_str().unwrap()
            );
            let reparsed =
                parse_signing_public_key(id["signingPublicKey"].as_str().unwrap()).unwrap();
            assert_eq!(reparsed, identity.signing.verifying_key());
            parse_encryption_public_key(id["encryptionPublicKey"].as_str().unwrap()).unwrap();
        }
    }

    #[test]
    fn ed25519_pem_is_one_body_line() {
        let keys = testdata::load("keys.json");
        let pem = keys["identities"]["alice"]["signingPublicKey"]
            .as_str()
            .unwrap();
        assert_eq!(pem.lines().count(), 3);
        assert!(!pem.ends_with('\n'));
        assert_eq!(
            pem_lookup_key(&format!("{pem}\n")),
            pem_lookup_key(&pem.replace('\n', "\r\n"))
        );
    }
}
