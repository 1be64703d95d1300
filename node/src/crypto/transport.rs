//! Transport encryption of `getEntries` payloads to the reader's RSA key (spec §4.9).
//!
//! Two formats: the classic per-entry hybrid envelope (one RSA operation per entry, for old clients)
//! and the session-key format (one RSA operation per response, AES-256-GCM per entry). The node only
//! encrypts; the decrypt side is here for clients of this crate (remote stores, tests, the CLI).
//!
//! AES-256-GCM is aws-lc-rs: it seals a 1 KiB payload in 0.15 µs with a prepared key against the
//! `aes-gcm` crate's 0.52 µs (`cargo bench -p syncrelay-node --bench crypto_bench`), and every
//! served entry is sealed once per hop and opened once by its reader.

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use rand::Rng;

use super::keys::{EncryptionPrivateKey, EncryptionPublicKey};
use super::CryptoError;

pub const AES_KEY_LEN: usize = 32;
pub const IV_LEN: usize = 12;
/// Length of the AES-GCM tag appended to every sealed payload.
pub const AES_TAG_LEN: usize = 16;

/// An AES-256-GCM key prepared once (key schedule done) for many payloads: 12-byte IV, tag
/// appended, no AAD.
pub struct AesKey(LessSafeKey);

impl AesKey {
    pub fn new(key: &[u8; AES_KEY_LEN]) -> Self {
        let key = UnboundKey::new(&AES_256_GCM, key).expect("a 32-byte key fits AES-256-GCM");
        AesKey(LessSafeKey::new(key))
    }

    pub fn seal(&self, iv: &[u8; IV_LEN], plaintext: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(plaintext.len() + AES_256_GCM.tag_len());
        out.extend_from_slice(plaintext);
        self.0
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(*iv), Aad::empty(), &mut out)
            .expect("AES-GCM sealing of an in-memory buffer cannot fail");
        out
    }

    /// Seals `buf[start..]` in place under `iv` and appends the tag: a payload written straight
    /// into a response buffer is encrypted there, with no copy of its own.
    pub fn seal_tail(&self, iv: &[u8; IV_LEN], buf: &mut Vec<u8>, start: usize) {
        let tag = self
            .0
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(*iv),
                Aad::empty(),
                &mut buf[start..],
            )
            .expect("AES-GCM sealing of an in-memory buffer cannot fail");
        buf.extend_from_slice(tag.as_ref());
    }

    pub fn open(&self, iv: &[u8], ciphertext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let iv: [u8; IV_LEN] = iv
            .try_into()
            .map_err(|_| CryptoError::Envelope("IV must be 12 bytes"))?;
        let mut buf = ciphertext.to_vec();
        let len = self
            .0
            .open_in_place(Nonce::assume_unique_for_key(iv), Aad::empty(), &mut buf)
            .map_err(|_| CryptoError::Aes)?
            .len();
        buf.truncate(len);
        Ok(buf)
    }
}

/// One-off AES-256-GCM sealing (see [`AesKey`]).
pub fn aes_encrypt(key: &[u8; AES_KEY_LEN], iv: &[u8; IV_LEN], plaintext: &[u8]) -> Vec<u8> {
    AesKey::new(key).seal(iv, plaintext)
}

/// One-off AES-256-GCM opening (see [`AesKey`]).
pub fn aes_decrypt(
    key: &[u8; AES_KEY_LEN],
    iv: &[u8],
    ciphertext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    AesKey::new(key).open(iv, ciphertext)
}

pub fn random_key() -> [u8; AES_KEY_LEN] {
    let mut key = [0u8; AES_KEY_LEN];
    rand::rng().fill_bytes(&mut key);
    key
}

pub fn random_iv() -> [u8; IV_LEN] {
    let mut iv = [0u8; IV_LEN];
    rand::rng().fill_bytes(&mut iv);
    iv
}

/// Classic envelope: `u16be L | RSA-OAEP(aesKey) | iv(12) | AES-GCM(aesKey, iv, payload)`.
pub fn hybrid_encrypt(
    reader: &EncryptionPublicKey,
    payload: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let key = random_key();
    let iv = random_iv();
    let wrapped = reader.encrypt(&key)?;
    let sealed = aes_encrypt(&key, &iv, payload);
    let mut out = Vec::with_capacity(2 + wrapped.len() + IV_LEN + sealed.len());
    out.extend_from_slice(&(wrapped.len() as u16).to_be_bytes());
    out.extend_from_slice(&wrapped);
    out.extend_from_slice(&iv);
    out.extend_from_slice(&sealed);
    Ok(out)
}

pub fn hybrid_decrypt(
    reader: &EncryptionPrivateKey,
    envelope: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    if envelope.len() < 2 {
        return Err(CryptoError::Envelope(
            "envelope shorter than its length prefix",
        ));
    }
    let rsa_len = u16::from_be_bytes([envelope[0], envelope[1]]) as usize;
    let rest = &envelope[2..];
    if rest.len() < rsa_len + IV_LEN {
        return Err(CryptoError::Envelope("envelope truncated"));
    }
    let key = reader.decrypt(&rest[..rsa_len])?;
    let key: [u8; AES_KEY_LEN] = key
        .try_into()
        .map_err(|_| CryptoError::Envelope("wrapped key is not 32 bytes"))?;
    aes_decrypt(
        &key,
        &rest[rsa_len..rsa_len + IV_LEN],
        &rest[rsa_len + IV_LEN..],
    )
}

/// One response's session key: generated once, wrapped once to the reader's RSA key.
pub struct SessionKey {
    key: AesKey,
    pub wrapped: Vec<u8>,
}

impl SessionKey {
    pub fn new(reader: &EncryptionPublicKey) -> Result<Self, CryptoError> {
        let key = random_key();
        let wrapped = reader.encrypt(&key)?;
        Ok(SessionKey {
            key: AesKey::new(&key),
            wrapped,
        })
    }

    /// Seals `buf[start..]` in place under `iv` (a fresh [`random_iv`]) and appends the tag.
    pub fn seal_tail(&self, iv: &[u8; IV_LEN], buf: &mut Vec<u8>, start: usize) {
        self.key.seal_tail(iv, buf, start)
    }

    /// Encrypts one payload under a fresh IV; returns `(iv, ciphertext‖tag)`.
    pub fn seal(&self, payload: &[u8]) -> ([u8; IV_LEN], Vec<u8>) {
        let iv = random_iv();
        (iv, self.key.seal(&iv, payload))
    }

    /// Client side: unwraps the session key with the reader's private key (one RSA operation).
    pub fn unwrap(
        reader: &EncryptionPrivateKey,
        wrapped: &[u8],
    ) -> Result<[u8; AES_KEY_LEN], CryptoError> {
        reader
            .decrypt(wrapped)?
            .try_into()
            .map_err(|_| CryptoError::Envelope("session key is not 32 bytes"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::keys::Identity;
    use crate::testdata;
    use crate::wire::b64;

    fn reader(name: &str) -> Identity {
        testdata::identity(name)
    }

    #[test]
    fn reference_classic_and_session_responses_decrypt() {
        let alice = reader("alice");
        let doc = testdata::load("transport.json");
        for e in doc["classic"]["entries"].as_array().unwrap() {
            let env = b64::decode(e["rsaEncryptedPayloadBase64"].as_str().unwrap()).unwrap();
            let plain = hybrid_decrypt(&alice.encryption, &env).unwrap();
            assert_eq!(
                b64::encode(&plain),
                e["decryptsToEncryptedDataBase64"].as_str().unwrap()
            );
        }
        let sk = &doc["sessionKey"];
        let wrapped = b64::decode(
            sk["responseBodyJson"]["wrappedSessionKey"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        let key = SessionKey::unwrap(&alice.encryption, &wrapped).unwrap();
        assert_eq!(
            hex::encode(key),
            sk["intermediateSessionKeyHex"].as_str().unwrap()
        );
        for e in sk["entries"].as_array().unwrap() {
            let iv = b64::decode(e["ivBase64"].as_str().unwrap()).unwrap();
            let ct = b64::decode(e["sessionEncryptedPayloadBase64"].as_str().unwrap()).unwrap();
            let plain = aes_decrypt(&key, &iv, &ct).unwrap();
            assert_eq!(
                b64::encode(&plain),
                e["decryptsToEncryptedDataBase64"].as_str().unwrap()
            );
        }
        let bin = &doc["getEntriesBinary"];
        let body = b64::decode(bin["responseBodyBase64"].as_str().unwrap()).unwrap();
        let framed = crate::wire::framing::decode(&body).unwrap();
        let header: crate::wire::BinaryGetHeader = serde_json::from_slice(framed.header).unwrap();
        assert_eq!(header.format, "mdb-entries-v2");
        let key = SessionKey::unwrap(&alice.encryption, &header.wrapped_session_key.0).unwrap();
        for ((meta, payload), expected) in
            framed.frames.iter().zip(bin["frames"].as_array().unwrap())
        {
            let (iv, _) = crate::wire::framing::split_iv(meta).unwrap();
            let plain = aes_decrypt(&key, &iv, payload).unwrap();
            assert_eq!(
                b64::encode(&plain),
                expected["decryptsToEncryptedDataBase64"].as_str().unwrap()
            );
        }
        // Wrapped for bob: alice's key must not open it.
        let other = &doc["sessionKeyForOtherReader"]["responseBodyJson"]["wrappedSessionKey"];
        let wrapped = b64::decode(other.as_str().unwrap()).unwrap();
        assert!(SessionKey::unwrap(&alice.encryption, &wrapped).is_err());
        assert!(SessionKey::unwrap(&reader("bob").encryption, &wrapped).is_ok());
    }

    #[test]
    fn sealing_in_place_is_sealing() {
        let key = AesKey::new(&random_key());
        let iv = random_iv();
        let payload = b"a payload sealed where it lies".to_vec();
        let mut buf = b"prefix".to_vec();
        buf.extend_from_slice(&payload);
        key.seal_tail(&iv, &mut buf, 6);
        assert_eq!(&buf[..6], b"prefix");
        assert_eq!(&buf[6..], key.seal(&iv, &payload).as_slice());
        assert_eq!(buf.len() - 6, payload.len() + AES_TAG_LEN);
        assert_eq!(key.open(&iv, &buf[6..]).unwrap(), payload);
    }

    #[test]
    fn own_envelopes_round_trip() {
        let alice = reader("alice");
        let public = alice.encryption.public_key();
        let env = hybrid_encrypt(&public, b"payload").unwrap();
        assert_eq!(u16::from_be_bytes([env[0], env[1]]), 384);
        assert_eq!(hybrid_decrypt(&alice.encryption, &env).unwrap(), b"payload");
        let session = SessionKey::new(&public).unwrap();
        let (iv, ct) = session.seal(b"abc");
        let key = SessionKey::unwrap(&alice.encryption, &session.wrapped).unwrap();
        assert_eq!(aes_decrypt(&key, &iv, &ct).unwrap(), b"abc");
        assert!(hybrid_decrypt(&alice.encryption, &env[..100]).is_err());
    }
}
