//! Signed byte layouts and their verification (spec §5.5 author signatures, §5.6 witness receipts).
//!
//! Layout helpers are pure: they turn metadata into the exact bytes the reference signs, so they are
//! tested byte-for-byte against the recorded vectors.

use ed25519_dalek::{Signature, Signer, Verifier, VerifyingKey};
use serde::Deserialize;
use serde_json::Value;

use super::keys::{FastSigner, Identity};
use crate::wire::b64::B64;
use crate::wire::{b64, content_hash, AttachmentRef, Entry, EntryMetadata};

/// Why a layout could not be built from a (malformed) record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error("provenance is malformed: {0}")]
    Provenance(String),
    #[error("provenance nesting is deeper than {0}")]
    TooDeep(usize),
}

/// Bound on nested provenance (each level is a copy of a copy); stops stack abuse by crafted input.
const MAX_PROVENANCE_DEPTH: usize = 16;

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_bytes(out, s.as_bytes());
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_be_bytes());
    out.extend_from_slice(b);
}

/// The fields the author signs; shared by the entry itself and `provenance.source`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SignedFields<'a> {
    entry_type: std::borrow::Cow<'a, str>,
    id: std::borrow::Cow<'a, str>,
    doc_id: std::borrow::Cow<'a, str>,
    decryption_key_id: std::borrow::Cow<'a, str>,
    created_at: i64,
    dependency_ids: Vec<String>,
    content_hash: std::borrow::Cow<'a, str>,
    created_by_public_key: std::borrow::Cow<'a, str>,
    #[serde(default)]
    attachment_refs: Option<Vec<AttachmentRef>>,
    #[serde(default)]
    provenance: Option<Value>,
    #[serde(default)]
    recipients: Option<Value>,
}

struct LayoutInput<'a> {
    entry_type: &'a str,
    id: &'a str,
    doc_id: &'a str,
    decryption_key_id: &'a str,
    created_at: i64,
    dependency_ids: &'a [String],
    content_hash: &'a str,
    created_by_public_key: &'a str,
    attachment_refs: Option<&'a [AttachmentRef]>,
    provenance: Option<&'a Value>,
    recipients: Option<&'a Value>,
}

fn write_layout(out: &mut Vec<u8>, f: &LayoutInput<'_>, depth: usize) -> Result<(), LayoutError> {
    out.push(0x01);
    put_str(out, f.entry_type);
    put_str(out, f.id);
    put_str(out, f.doc_id);
    put_str(out, f.decryption_key_id);
    out.extend_from_slice(&f.created_at.to_be_bytes());
    out.extend_from_slice(&(f.dependency_ids.len() as u32).to_be_bytes());
    for dep in f.dependency_ids {
        put_str(out, dep);
    }
    put_str(out, f.content_hash);
    put_str(out, f.created_by_public_key);
    if let Some(refs) = f.attachment_refs.filter(|r| !r.is_empty()) {
        out.extend_from_slice(&(refs.len() as u32).to_be_bytes());
        for r in refs {
            put_str(out, &r.attachment_id);
            put_str(out, &r.last_chunk_id);
            out.extend_from_slice(&r.size.to_be_bytes());
        }
    }
    if let Some(provenance) = f.provenance {
        write_provenance(out, provenance, depth)?;
    }
    if let Some(recipients) = f.recipients {
        let has_wraps = recipients
            .get("wraps")
            .and_then(Value::as_array)
            .is_some_and(|w| !w.is_empty());
        if has_wraps {
            out.push(0x03);
            // JSON.stringify of the object as received: serde_json keeps key order (preserve_order)
            // and escapes strings the way JavaScript does.
            let json = serde_json::to_string(recipients).expect("a JSON value serialises");
            put_str(out, &json);
        }
    }
    Ok(())
}

fn write_provenance(out: &mut Vec<u8>, p: &Value, depth: usize) -> Result<(), LayoutError> {
    if depth >= MAX_PROVENANCE_DEPTH {
        return Err(LayoutError::TooDeep(MAX_PROVENANCE_DEPTH));
    }
    let text = |key: &str| {
        p.get(key)
            .and_then(Value::as_str)
            .ok_or_else(|| LayoutError::Provenance(format!("{key} missing")))
    };
    let source_tenant = text("sourceTenantId")?;
    let source_db = text("sourceDbId")?;
    let source = p
        .get("source")
        .ok_or_else(|| LayoutError::Provenance("source missing".into()))?;
    let source =
        SignedFields::deserialize(source).map_err(|e| LayoutError::Provenance(e.to_string()))?;
    let mut nested = Vec::new();
    write_layout(
        &mut nested,
        &LayoutInput {
            entry_type: &source.entry_type,
            id: &source.id,
            doc_id: &source.doc_id,
            decryption_key_id: &source.decryption_key_id,
            created_at: source.created_at,
            dependency_ids: &source.dependency_ids,
            content_hash: &source.content_hash,
            created_by_public_key: &source.created_by_public_key,
            attachment_refs: source.attachment_refs.as_deref(),
            provenance: source.provenance.as_ref(),
            recipients: source.recipients.as_ref(),
        },
        depth + 1,
    )?;
    let signature = match p.get("sourceMetadataSignature").and_then(Value::as_str) {
        Some(s) => b64::decode(s).map_err(|e| LayoutError::Provenance(e.to_string()))?,
        None => Vec::new(),
    };
    out.push(0x02);
    put_str(out, source_tenant);
    put_str(out, source_db);
    put_bytes(out, &nested);
    put_bytes(out, &signature);
    Ok(())
}

/// The bytes covered by `metadataSignature` (spec §5.5).
pub fn metadata_signing_bytes(m: &EntryMetadata) -> Result<Vec<u8>, LayoutError> {
    let mut out = Vec::with_capacity(256 + m.created_by_public_key.len());
    write_layout(
        &mut out,
        &LayoutInput {
            entry_type: &m.entry_type,
            id: &m.id,
            doc_id: &m.doc_id,
            decryption_key_id: &m.decryption_key_id,
            created_at: m.created_at,
            dependency_ids: &m.dependency_ids,
            content_hash: &m.content_hash,
            created_by_public_key: &m.created_by_public_key,
            attachment_refs: m.attachment_refs.as_deref(),
            provenance: m.provenance.as_ref(),
            recipients: m.recipients.as_ref(),
        },
        0,
    )?;
    Ok(out)
}

/// The bytes covered by `receivedDateSignature` (spec §5.6).
pub fn witness_signing_bytes(
    m: &EntryMetadata,
    db_id: &str,
    received_at: i64,
    received_by_public_key: &str,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(320 + m.created_by_public_key.len());
    out.push(0x01);
    put_str(&mut out, &m.entry_type);
    put_str(&mut out, db_id);
    put_str(&mut out, &m.content_hash);
    put_str(&mut out, &m.id);
    put_str(&mut out, &m.doc_id);
    put_str(&mut out, &m.decryption_key_id);
    out.extend_from_slice(&m.created_at.to_be_bytes());
    put_str(&mut out, &m.created_by_public_key);
    out.extend_from_slice(&received_at.to_be_bytes());
    put_str(&mut out, received_by_public_key);
    out
}

/// Which message the author signature of an entry covers, per the verification rule of §5.5.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthorSignedMessage {
    /// v2: `metadataSignature` over the canonical layout.
    Metadata(Vec<u8>),
    /// Legacy: `signature` over the raw `encryptedData`.
    Legacy,
}

/// Outcome of author signature checks that can fail before any curve arithmetic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthorSignatureError {
    #[error("must carry a v2 metadata signature")]
    V2Required,
    #[error("invalid author signature")]
    Invalid,
    #[error("{0}")]
    Layout(#[from] LayoutError),
}

/// Chooses the signed message for an entry; `require_v2` is the tenant's metadata-signature floor.
pub fn author_signed_message(
    m: &EntryMetadata,
    require_v2: bool,
) -> Result<AuthorSignedMessage, AuthorSignatureError> {
    match &m.metadata_signature {
        Some(_) => Ok(AuthorSignedMessage::Metadata(metadata_signing_bytes(m)?)),
        None if require_v2 => Err(AuthorSignatureError::V2Required),
        None => Ok(AuthorSignedMessage::Legacy),
    }
}

/// Parses a 64-byte signature field.
pub fn parse_signature(bytes: &[u8]) -> Option<Signature> {
    <[u8; 64]>::try_from(bytes)
        .ok()
        .map(|b| Signature::from_bytes(&b))
}

/// Verifies the author signature of one entry (spec §5.5) with the author's key.
pub fn verify_author_signature(
    m: &EntryMetadata,
    encrypted_data: &[u8],
    author: &VerifyingKey,
    require_v2: bool,
) -> Result<(), AuthorSignatureError> {
    let (message, sig): (std::borrow::Cow<'_, [u8]>, &[u8]) =
        match author_signed_message(m, require_v2)? {
            AuthorSignedMessage::Metadata(bytes) => (
                bytes.into(),
                &m.metadata_signature
                    .as_ref()
                    .expect("chosen because present")
                    .0,
            ),
            AuthorSignedMessage::Legacy => (encrypted_data.into(), &m.signature.0),
        };
    let signature = parse_signature(sig).ok_or(AuthorSignatureError::Invalid)?;
    author
        .verify(&message, &signature)
        .map_err(|_| AuthorSignatureError::Invalid)
}

/// Verifies many signatures made by *one* key at once (a push batch usually comes from one author):
/// the batch equation `[-Σ zᵢsᵢ]B + Σ zᵢRᵢ + [Σ zᵢkᵢ]A = 0` (cofactored, random 128-bit `zᵢ`, as
/// ed25519-dalek's `verify_batch`), with the key's term folded into one point instead of one per
/// signature, which saves a third of the multiscalar multiplication. `false` means at least one
/// signature is invalid (or a point or scalar is malformed); the caller then checks one by one.
pub fn verify_batch_one_key(
    key: &VerifyingKey,
    messages: &[&[u8]],
    signatures: &[Signature],
) -> bool {
    use curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
    use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
    use curve25519_dalek::scalar::Scalar;
    use curve25519_dalek::traits::{IsIdentity, VartimeMultiscalarMul};
    use rand::Rng;
    use sha2::{Digest, Sha512};

    if messages.len() != signatures.len() {
        return false;
    }
    let Some(a) = CompressedEdwardsY(key.to_bytes()).decompress() else {
        return false;
    };
    let mut rng = rand::rng();
    let mut b_coefficient = Scalar::ZERO;
    let mut a_coefficient = Scalar::ZERO;
    let mut scalars = Vec::with_capacity(signatures.len() + 2);
    let mut points = Vec::with_capacity(signatures.len() + 2);
    for (message, signature) in messages.iter().zip(signatures) {
        let Some(s) = Option::<Scalar>::from(Scalar::from_canonical_bytes(*signature.s_bytes()))
        else {
            return false;
        };
        let Some(r) = CompressedEdwardsY(*signature.r_bytes()).decompress() else {
            return false;
        };
        let hram: [u8; 64] = Sha512::new()
            .chain_update(signature.r_bytes())
            .chain_update(key.as_bytes())
            .chain_update(message)
            .finalize()
            .into();
        let k = Scalar::from_bytes_mod_order_wide(&hram);
        let mut z = [0u8; 32];
        rng.fill_bytes(&mut z[..16]);
        let z = Scalar::from_bytes_mod_order(z);
        b_coefficient -= z * s;
        a_coefficient += z * k;
        scalars.push(z);
        points.push(r);
    }
    scalars.extend([b_coefficient, a_coefficient]);
    points.extend([ED25519_BASEPOINT_POINT, a]);
    EdwardsPoint::vartime_multiscalar_mul(scalars, points)
        .mul_by_cofactor()
        .is_identity()
}

/// Stamps a witness receipt onto `m` (spec §5.6).
pub fn stamp_witness(
    m: &mut EntryMetadata,
    db_id: &str,
    received_at: i64,
    witness: &FastSigner,
    witness_pem: &str,
) {
    let bytes = witness_signing_bytes(m, db_id, received_at, witness_pem);
    let signature = witness.sign(&bytes);
    m.received_at = Some(received_at);
    m.received_by_public_key = Some(witness_pem.to_string());
    m.received_date_signature = Some(b64::B64(signature.to_vec()));
}

/// Verifies a witness receipt carried by `m` against the witness key named in it.
pub fn verify_witness(m: &EntryMetadata, db_id: &str) -> bool {
    let (Some(at), Some(pem), Some(sig)) = (
        m.received_at,
        m.received_by_public_key.as_deref(),
        m.received_date_signature.as_ref(),
    ) else {
        return false;
    };
    let Ok(key) = super::keys::parse_signing_public_key(pem) else {
        return false;
    };
    let Some(signature) = parse_signature(&sig.0) else {
        return false;
    };
    key.verify(&witness_signing_bytes(m, db_id, at, pem), &signature)
        .is_ok()
}

/// A signed (v2 metadata + legacy) entry, written the way a MindooDB client writes one.
pub fn author_entry(author: &Identity, doc: &str, n: usize, payload: Vec<u8>) -> Entry {
    let hash = content_hash(&payload);
    let mut metadata = EntryMetadata {
        entry_type: if n == 0 { "doc_create" } else { "doc_change" }.into(),
        id: format!("{doc}_d_{n:08x}_{}", &hash[..16]),
        content_hash: hash,
        doc_id: doc.into(),
        dependency_ids: vec![],
        created_at: crate::clock::now_ms(),
        receipt_order: None,
        created_by_public_key: author.signing_public_pem.clone(),
        decryption_key_id: "default".into(),
        snapshot_head_hashes: None,
        snapshot_head_entry_ids: None,
        signature: B64(author.signing.sign(&payload).to_bytes().to_vec()),
        metadata_signature: None,
        original_size: payload.len() as u64,
        encrypted_size: payload.len() as u64,
        received_at: None,
        received_by_public_key: None,
        received_date_signature: None,
        attachment_refs: None,
        provenance: None,
        recipients: None,
        entry_version: Some(2),
    };
    let layout = metadata_signing_bytes(&metadata).expect("fresh metadata has a layout");
    metadata.metadata_signature = Some(B64(author.signing.sign(&layout).to_bytes().to_vec()));
    Entry {
        metadata,
        encrypted_data: payload,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::keys::parse_signing_public_key;
    use crate::testdata;

    fn meta(v: &Value) -> EntryMetadata {
        serde_json::from_value(v.clone()).unwrap()
    }

    #[test]
    fn spec_worked_example_metadata_layout() {
        let m: EntryMetadata = serde_json::from_value(serde_json::json!({
            "entryType":"doc_change","id":"d1_d_0a1b2c3d_h2","contentHash":"ab","docId":"d1",
            "dependencyIds":["d1_d_0_h1"],"createdAt":1700000000000i64,"createdByPublicKey":"K",
            "decryptionKeyId":"default","signature":"","originalSize":0,"encryptedSize":0
        }))
        .unwrap();
        assert_eq!(
            hex::encode(metadata_signing_bytes(&m).unwrap()),
            "010000000a646f635f6368616e67650000001064315f645f30613162326333645f68320000000264310000000764656661756c74\
             0000018bcfe56800000000010000000964315f645f305f6831000000026162000000014b"
        );
        assert_eq!(
            hex::encode(witness_signing_bytes(&m, "contacts", 1700000002000, "W")),
            "010000000a646f635f6368616e676500000008636f6e74616374730000000261620000001064315f645f30613162326333645f6832\
             0000000264310000000764656661756c740000018bcfe56800000000014b0000018bcfe56fd00000000157"
        );
    }

    #[test]
    fn valid_vectors_rebuild_signed_bytes_and_verify() {
        let doc = testdata::load("entry-signatures.json");
        for case in doc["valid"].as_array().unwrap() {
            let name = case["name"].as_str().unwrap();
            let m = meta(&case["entry"]);
            let payload = b64::decode(case["encryptedDataBase64"].as_str().unwrap()).unwrap();
            if let Some(expected) = case["metadataSigningBytesHex"].as_str() {
                assert_eq!(
                    hex::encode(metadata_signing_bytes(&m).unwrap()),
                    expected,
                    "{name}"
                );
            }
            let author = parse_signing_public_key(&m.created_by_public_key).unwrap();
            let exp = &case["expected"];
            assert_eq!(
                verify_author_signature(&m, &payload, &author, false).is_ok(),
                exp["authorSignatureVerdict"].as_bool().unwrap(),
                "{name}"
            );
            assert_eq!(
                verify_author_signature(&m, &payload, &author, true).is_ok(),
                exp["authorSignatureVerdictWithV2Floor"].as_bool().unwrap(),
                "{name} with v2 floor"
            );
        }
    }

    #[test]
    fn tampered_vectors_fail_and_traps_behave_as_recorded() {
        let doc = testdata::load("entry-signatures.json");
        for group in ["tampered", "acceptedTraps"] {
            for case in doc[group].as_array().unwrap() {
                let name = case["name"].as_str().unwrap();
                let m = meta(&case["entry"]);
                let payload = b64::decode(case["encryptedDataBase64"].as_str().unwrap()).unwrap();
                let exp = &case["expected"];
                assert_eq!(
                    crate::wire::content_hash(&payload) == m.content_hash,
                    exp["contentHashMatches"].as_bool().unwrap(),
                    "{name}"
                );
                // A re-wrapped PEM is still the same key; the signed bytes differ, so v2 fails.
                let author = parse_signing_public_key(&m.created_by_public_key).unwrap();
                assert_eq!(
                    verify_author_signature(&m, &payload, &author, false).is_ok(),
                    exp["authorSignatureVerdict"].as_bool().unwrap(),
                    "{name}"
                );
                if let Some(floor) = exp["authorSignatureVerdictWithV2Floor"].as_bool() {
                    assert_eq!(
                        verify_author_signature(&m, &payload, &author, true).is_ok(),
                        floor,
                        "{name} with v2 floor"
                    );
                }
            }
        }
    }

    #[test]
    fn one_key_batches_accept_only_all_valid_signatures() {
        use ed25519_dalek::Signer;
        let key = ed25519_dalek::SigningKey::from_bytes(&[3u8; 32]);
        let other = ed25519_dalek::SigningKey::from_bytes(&[4u8; 32]);
        let messages: Vec<Vec<u8>> = (0..70).map(|i| format!("entry {i}").into_bytes()).collect();
        let refs: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
        let sigs: Vec<Signature> = messages.iter().map(|m| key.sign(m)).collect();
        let public = key.verifying_key();
        assert!(verify_batch_one_key(&public, &refs, &sigs));
        assert!(verify_batch_one_key(&public, &[], &[]));
        assert!(
            !verify_batch_one_key(&other.verifying_key(), &refs, &sigs),
            "wrong key"
        );
        assert!(
            !verify_batch_one_key(
                &public,
                &refs[1..],
                &sigs[1..70].iter().rev().cloned().collect::<Vec<_>>()
            ),
            "swapped"
        );
        let mut changed = refs.clone();
        changed[33] = b"entry 34";
        assert!(
            !verify_batch_one_key(&public, &changed, &sigs),
            "one message changed"
        );
        let mut forged = sigs.clone();
        forged[69] = other.sign(&messages[69]);
        assert!(
            !verify_batch_one_key(&public, &refs, &forged),
            "one signature by another key"
        );
        // s + l: the same value mod l, but not canonical (verification must refuse malleated s).
        let mut bytes = sigs[5].to_bytes();
        let l: [u8; 32] = [
            0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9,
            0xde, 0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
        ];
        let mut carry = 0u16;
        for i in 0..32 {
            let sum = bytes[32 + i] as u16 + l[i] as u16 + carry;
            bytes[32 + i] = sum as u8;
            carry = sum >> 8;
        }
        let mut malleated = sigs.clone();
        malleated[5] = Signature::from_bytes(&bytes);
        assert!(
            !verify_batch_one_key(&public, &refs, &malleated),
            "non-canonical s"
        );
        assert!(
            !verify_batch_one_key(&public, &refs[..3], &sigs[..2]),
            "length mismatch"
        );
    }

    #[test]
    fn witness_vector_and_negatives() {
        let doc = testdata::load("witness-receipt.json");
        let keys = testdata::load("keys.json");
        let server = &keys["identities"]["server"];
        let seed: [u8; 32] = hex::decode(server["ed25519PrivateSeedHex"].as_str().unwrap())
            .unwrap()
            .try_into()
            .unwrap();
        let witness = FastSigner::new(&ed25519_dalek::SigningKey::from_bytes(&seed));
        let pem = server["signingPublicKey"].as_str().unwrap();
        let db = doc["dbid"].as_str().unwrap();
        let mut m = meta(&doc["entryBeforeStamping"]);
        let at = doc["receivedAt"].as_i64().unwrap();
        assert_eq!(
            hex::encode(witness_signing_bytes(&m, db, at, pem)),
            doc["signedBytesHex"].as_str().unwrap()
        );
        stamp_witness(&mut m, db, at, &witness, pem);
        assert_eq!(
            serde_json::to_value(&m).unwrap(),
            doc["stampedEntry"],
            "stamped record equals the reference's"
        );
        assert!(verify_witness(&m, db));
        for negative in doc["negative"].as_array().unwrap() {
            let mut changed = serde_json::to_value(&m).unwrap();
            let mut db_used = db.to_string();
            for (k, v) in negative["fields"].as_object().unwrap() {
                if k == "dbid" {
                    db_used = v.as_str().unwrap().to_string();
                } else {
                    changed[k] = v.clone();
                }
            }
            assert!(
                !verify_witness(&meta(&changed), &db_used),
                "{}",
                negative["name"]
            );
        }
        for live in doc["liveReceiptsFromReferenceServer"]["receipts"]
            .as_array()
            .unwrap()
        {
            assert!(verify_witness(
                &meta(&live["receipt"]),
                live["dbid"].as_str().unwrap()
            ));
        }
    }
}
