//! Entry metadata as it travels (`wire::EntryMetadata`, spec §5.1), the full `putEntries` entry
//! (`WireEntry`), the borrowed `RecordKeys` a store files records by, and the signed byte layouts
//! built from them (`crypto::signing`).
//!
//! Invariants: a parsed record re-serialises and parses back to an equal record (and the same bytes
//! again); the same record read as a `WireEntry` or as `RecordKeys` agrees on its fields; the
//! signed layouts build without panicking and depend only on the parsed value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use syncrelay_node::crypto::keys::parse_signing_public_key;
use syncrelay_node::crypto::signing::{
    author_signed_message, metadata_signing_bytes, verify_author_signature, verify_witness,
    witness_signing_bytes, AuthorSignedMessage,
};
use syncrelay_node::wire::{EntryMetadata, RecordKeys, WireEntry};

/// alice's signing key from the reference vectors (keys.json, test-only).
const ALICE: &str = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA6fppAUsCvqoIRdQoWnG7+EeDQIsN1twY81pRezAJeNU=\n-----END PUBLIC KEY-----";

fuzz_target!(|data: &[u8]| {
    let meta = serde_json::from_slice::<EntryMetadata>(data);
    if let Ok(wire) = serde_json::from_slice::<WireEntry>(data) {
        // putEntries reads the same fields as the binary path does.
        let meta = meta.as_ref().expect("a WireEntry's metadata parses alone");
        assert_eq!(&wire.metadata, meta);
    }
    let Ok(m) = meta else { return };
    if let Ok(keys) = serde_json::from_slice::<RecordKeys>(data) {
        assert_eq!(keys.id, m.id);
        assert_eq!(keys.content_hash, m.content_hash);
    }

    // Round trip.
    let text = serde_json::to_vec(&m).expect("metadata serialises");
    let again: EntryMetadata = serde_json::from_slice(&text).unwrap_or_else(|e| {
        panic!(
            "own serialisation does not parse: {e}: {}",
            String::from_utf8_lossy(&text)
        )
    });
    assert_eq!(again, m, "round trip changed the record");
    assert_eq!(serde_json::to_vec(&again).unwrap(), text);
    let keys: RecordKeys = serde_json::from_slice(&text).expect("a serialised record has its keys");
    assert_eq!((&*keys.id, &*keys.content_hash), (&*m.id, &*m.content_hash));

    // Signed layouts.
    let layout = metadata_signing_bytes(&m);
    assert_eq!(layout, metadata_signing_bytes(&again));
    for require_v2 in [false, true] {
        match author_signed_message(&m, require_v2) {
            Ok(AuthorSignedMessage::Metadata(bytes)) => {
                assert!(m.metadata_signature.is_some());
                assert_eq!(Ok(bytes), layout);
            }
            Ok(AuthorSignedMessage::Legacy) => {
                assert!(m.metadata_signature.is_none() && !require_v2)
            }
            Err(_) => {}
        }
    }
    let witness = witness_signing_bytes(&m, "vectors-db", m.created_at, &m.created_by_public_key);
    assert_eq!(witness[0], 0x01);

    // Verification of the record's own claims (the witness key is read from the record).
    let _ = verify_witness(&m, "vectors-db");
    let alice = parse_signing_public_key(ALICE).expect("alice's key parses");
    for require_v2 in [false, true] {
        let _ = verify_author_signature(&m, data, &alice, require_v2);
    }
});
