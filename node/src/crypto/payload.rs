//! Payload encryption as a MindooDB *client* does it: `iv(12) ‖ AES-256-GCM(documentKey, iv,
//! plaintext)` under a key only the tenant's users share. No node calls this — a node never holds a
//! payload key; the demo and the tests use it to play Alice and Carol. It is the pure-Rust `aes-gcm`
//! crate, independent of transport's aws-lc-rs, so the two also check each other's AES-GCM.

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::Aes256Gcm;

use super::transport::{random_iv, AES_KEY_LEN, IV_LEN};
use super::CryptoError;

pub use super::transport::random_key;

/// Encrypts a payload under a fresh IV; returns `iv ‖ ciphertext ‖ tag`.
pub fn seal(key: &[u8; AES_KEY_LEN], plaintext: &[u8]) -> Vec<u8> {
    let iv = random_iv();
    let sealed = Aes256Gcm::new(key.into())
        .encrypt(&iv.into(), plaintext)
        .expect("AES-GCM encryption of an in-memory buffer cannot fail");
    let mut out = Vec::with_capacity(IV_LEN + sealed.len());
    out.extend_from_slice(&iv);
    out.extend_from_slice(&sealed);
    out
}

/// Opens `iv ‖ ciphertext ‖ tag`; fails on a wrong key or any changed byte.
pub fn open(key: &[u8; AES_KEY_LEN], sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
    if sealed.len() < IV_LEN {
        return Err(CryptoError::Envelope("payload shorter than its IV"));
    }
    let (iv, ciphertext) = sealed.split_at(IV_LEN);
    let iv: &[u8; IV_LEN] = iv.try_into().expect("split at IV_LEN");
    Aes256Gcm::new(key.into())
        .decrypt(iv.into(), ciphertext)
        .map_err(|_| CryptoError::Aes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::transport::aes_decrypt;

    #[test]
    fn round_trips_and_interoperates_with_the_transport_cipher() {
        let key = random_key();
        let sealed = seal(&key, b"meet at the harbour");
        assert_eq!(open(&key, &sealed).unwrap(), b"meet at the harbour");
        // The same bytes open with aws-lc-rs: both implement standard AES-256-GCM.
        assert_eq!(
            aes_decrypt(&key, &sealed[..IV_LEN], &sealed[IV_LEN..]).unwrap(),
            b"meet at the harbour"
        );
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(open(&key, &tampered).is_err());
        assert!(open(&random_key(), &sealed).is_err());
        assert!(open(&key, &sealed[..5]).is_err());
    }
}
