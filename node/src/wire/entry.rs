//! The entry model exactly as it travels (spec §5.1).
//!
//! [`EntryMetadata`] serialises its keys in the reference's emission order and omits absent optional
//! fields, so a record re-served by this node is byte-for-byte the record the author produced (plus this
//! node's own `receiptOrder`). Fields bound into signatures are kept verbatim: `createdByPublicKey` as
//! text, `recipients` and `provenance` as order-preserving JSON values, `attachmentRefs` as given.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::b64::{deserialize_optional_nonempty, B64};

/// The two fields a node needs to file a serialised record, read without copying the rest.
#[derive(Debug, Deserialize)]
pub struct RecordKeys<'a> {
    #[serde(borrow)]
    pub id: std::borrow::Cow<'a, str>,
    #[serde(rename = "contentHash", borrow)]
    pub content_hash: std::borrow::Cow<'a, str>,
}

/// One element of `attachmentRefs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttachmentRef {
    pub attachment_id: String,
    pub last_chunk_id: String,
    pub size: i64,
}

/// Serialized entry metadata: every field of spec §5.1, in its emission order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EntryMetadata {
    pub entry_type: String,
    pub id: String,
    pub content_hash: String,
    pub doc_id: String,
    pub dependency_ids: Vec<String>,
    pub created_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt_order: Option<u64>,
    pub created_by_public_key: String,
    pub decryption_key_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_head_hashes: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_head_entry_ids: Option<Vec<String>>,
    pub signature: B64,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "deserialize_optional_nonempty"
    )]
    pub metadata_signature: Option<B64>,
    pub original_size: u64,
    pub encrypted_size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received_by_public_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received_date_signature: Option<B64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attachment_refs: Option<Vec<AttachmentRef>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provenance: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipients: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry_version: Option<i64>,
}

/// A complete entry: metadata plus the application ciphertext (`encryptedData`).
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub metadata: EntryMetadata,
    pub encrypted_data: Vec<u8>,
}

/// A full entry as pushed with JSON `putEntries`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WireEntry {
    #[serde(flatten)]
    pub metadata: EntryMetadata,
    pub encrypted_data: B64,
}

impl From<WireEntry> for Entry {
    fn from(wire: WireEntry) -> Self {
        Entry {
            metadata: wire.metadata,
            encrypted_data: wire.encrypted_data.0,
        }
    }
}

impl From<Entry> for WireEntry {
    fn from(entry: Entry) -> Self {
        WireEntry {
            metadata: entry.metadata,
            encrypted_data: B64(entry.encrypted_data),
        }
    }
}

/// `contentHash` of a payload: lowercase hex SHA-256 (spec §5.4).
pub fn content_hash(payload: &[u8]) -> String {
    hex::encode(Sha256::digest(payload))
}

/// Whether `declared` is the payload's `contentHash`, compared exactly as the strings would be
/// but without building one: this runs for every entry every node takes in.
pub fn has_content_hash(payload: &[u8], declared: &str) -> bool {
    let mut hex = [0u8; 64];
    hex::encode_to_slice(Sha256::digest(payload), &mut hex).expect("64 hex digits for 32 bytes");
    hex == declared.as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata;

    #[test]
    fn has_content_hash_is_the_string_comparison() {
        let payload = b"some payload";
        let hash = content_hash(payload);
        assert!(has_content_hash(payload, &hash));
        assert!(
            !has_content_hash(payload, &hash.to_uppercase()),
            "lowercase only"
        );
        assert!(!has_content_hash(payload, &hash[..63]));
        assert!(!has_content_hash(b"other payload", &hash));
        assert!(!has_content_hash(payload, ""));
    }

    #[test]
    fn content_hash_vectors() {
        let doc = testdata::load("content-hash.json");
        for case in doc["cases"].as_array().unwrap() {
            let payload =
                crate::wire::b64::decode(case["payloadBase64"].as_str().unwrap()).unwrap();
            assert_eq!(
                content_hash(&payload),
                case["contentHash"].as_str().unwrap(),
                "{}",
                case["name"]
            );
        }
    }

    #[test]
    fn metadata_reserializes_byte_for_byte() {
        let doc = testdata::load("entry-signatures.json");
        for case in doc["valid"].as_array().unwrap() {
            let wire_json = case["wireJson"].as_str().unwrap();
            let parsed: EntryMetadata = serde_json::from_str(wire_json).unwrap();
            assert_eq!(
                serde_json::to_string(&parsed).unwrap(),
                wire_json,
                "{}",
                case["name"]
            );
        }
    }

    #[test]
    fn empty_metadata_signature_is_absent() {
        let doc = testdata::load("entry-signatures.json");
        let mut entry = doc["valid"][0]["entry"].clone();
        entry["metadataSignature"] = Value::String(String::new());
        let parsed: EntryMetadata = serde_json::from_value(entry).unwrap();
        assert!(parsed.metadata_signature.is_none());
    }

    #[test]
    fn wrong_field_types_are_refused() {
        let doc = testdata::load("entry-signatures.json");
        let mut entry = doc["valid"][0]["entry"].clone();
        entry["createdAt"] = Value::from(1.5);
        assert!(serde_json::from_value::<EntryMetadata>(entry).is_err());
        let mut entry = doc["valid"][0]["entry"].clone();
        entry["signature"] = Value::from("not_base64-");
        assert!(serde_json::from_value::<EntryMetadata>(entry).is_err());
    }
}
