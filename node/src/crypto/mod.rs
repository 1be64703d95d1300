//! Cryptography of the wire: key formats (§0, §2.7), the author and witness signature layouts (§5.5,
//! §5.6) and transport encryption (§4.9). Nothing here needs a payload key: the node only ever handles
//! public keys of authors and readers, and its own identity.

pub mod keys;
pub mod payload;
pub mod signing;
pub mod transport;

/// Errors of key handling and transport encryption.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("invalid Ed25519 public key PEM: {0}")]
    SigningKey(String),
    #[error("invalid RSA public key PEM: {0}")]
    EncryptionKey(String),
    #[error("invalid private key: {0}")]
    PrivateKey(String),
    #[error("RSA-OAEP failed: {0}")]
    Rsa(String),
    #[error("AES-GCM failed")]
    Aes,
    #[error("malformed envelope: {0}")]
    Envelope(&'static str),
    #[error("I/O on key file {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}
