//! Base64 as the wire uses it (`wire::b64`: forgiving standard-alphabet decode, padded encode),
//! public keys as PEM (`crypto::keys::parse_signing_public_key` for Ed25519 SPKI,
//! `parse_encryption_public_key` for RSA SPKI) and signature fields (`crypto::signing::parse_signature`).
//!
//! The input is tried as text (base64, PEM) and as raw bytes (encoded, wrapped as the DER of a PEM
//! block, read as a signature). Invariants: decode(encode(x)) = x; what decodes re-encodes and decodes
//! to the same bytes, and contains no base64url characters; a parsed key writes back as a PEM that
//! parses to the same key; a signature parses iff it is 64 bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use syncrelay_node::crypto::keys::{
    parse_encryption_public_key, parse_signing_public_key, pem_encode, pem_lookup_key,
    signing_public_pem,
};
use syncrelay_node::crypto::signing::parse_signature;
use syncrelay_node::wire::b64::{self, B64};

fn keys(pem: &str) {
    if let Ok(key) = parse_signing_public_key(pem) {
        let written = signing_public_pem(&key);
        let again = parse_signing_public_key(&written).expect("our own PEM parses");
        assert_eq!(again, key);
        assert_eq!(
            pem_lookup_key(&written),
            pem_lookup_key(&pem_lookup_key(&written))
        );
    }
    if let Ok(key) = parse_encryption_public_key(pem) {
        let _ = key.encrypt(&[7u8; 32]);
    }
}

fuzz_target!(|data: &[u8]| {
    // Raw bytes: encoding round trip and signature parsing.
    let encoded = b64::encode(data);
    assert_eq!(b64::decode(&encoded).expect("own encoding decodes"), data);
    assert_eq!(parse_signature(data).is_some(), data.len() == 64);

    // Text: the forgiving decoder.
    let text = String::from_utf8_lossy(data);
    let decoded = b64::decode(&text);
    let as_field = serde_json::from_value::<B64>(serde_json::Value::String(text.to_string()));
    assert_eq!(decoded.is_ok(), as_field.is_ok());
    if let Ok(bytes) = &decoded {
        assert!(
            !text.contains(['-', '_']),
            "base64url characters must be refused"
        );
        let again = b64::encode(bytes);
        assert_eq!(&b64::decode(&again).unwrap(), bytes);
        assert_eq!(&as_field.unwrap().0, bytes);
        // Whitespace is ignored: the text without it decodes the same.
        let stripped: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        assert_eq!(&b64::decode(&stripped).unwrap(), bytes);
    }

    // PEM keys: the text as given, and the bytes as the DER inside a PEM block.
    keys(&text);
    keys(&pem_encode("PUBLIC KEY", data));
});
