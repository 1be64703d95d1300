//! The push validation pipeline (spec §4.11), as a pure function over a batch: which entries are
//! acknowledged with the stored record, which are new and accepted (stamped when this node is a
//! witness), and which are rejected with the protocol's reason text. No I/O happens here.

use std::collections::HashMap;

use ed25519_dalek::VerifyingKey;
use rayon::prelude::*;

use crate::crypto::keys::FastSigner;
use crate::crypto::signing::{self, AuthorSignatureError, AuthorSignedMessage};
use crate::directory::TenantDirectory;
use crate::wire::{has_content_hash, Entry, EntryMetadata, Rejection};

/// Why an entry was rejected; the label is used for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    InvalidId,
    UntrustedAuthor,
    ContentHash,
    V2Required,
    InvalidSignature,
    SizeMismatch,
}

impl RejectReason {
    pub fn label(self) -> &'static str {
        match self {
            RejectReason::InvalidId => "invalid_id",
            RejectReason::UntrustedAuthor => "untrusted_author",
            RejectReason::ContentHash => "content_hash",
            RejectReason::V2Required => "v2_required",
            RejectReason::InvalidSignature => "invalid_signature",
            RejectReason::SizeMismatch => "size_mismatch",
        }
    }

    fn text(self, id: &str) -> String {
        match self {
            RejectReason::InvalidId => format!(
                "Entry {} has an invalid id (empty, or longer than the reference store can hold)",
                id.chars().take(80).collect::<String>()
            ),
            RejectReason::UntrustedAuthor => format!("Entry {id} was not signed by a trusted user"),
            RejectReason::ContentHash => format!("Entry {id} content hash does not match its payload"),
            RejectReason::V2Required => format!(
                "Entry {id} must carry a v2 metadata signature (tenant requires v2 as of the configured cutoff)"
            ),
            RejectReason::InvalidSignature => format!("Entry {id} has an invalid author signature"),
            RejectReason::SizeMismatch => format!("Entry {id} encryptedSize does not match its payload"),
        }
    }
}

/// The node's witness identity, when it stamps receipts.
pub struct Witness<'a> {
    pub key: &'a FastSigner,
    pub pem: &'a str,
}

pub struct IngestInput<'a> {
    pub directory: &'a TenantDirectory,
    pub db_id: &'a str,
    pub witness: Option<Witness<'a>>,
    pub now_ms: i64,
    /// Entries pulled from a link (history an upstream accepted): an author known to the
    /// directory is enough, revoked or not. Client writes need an active author.
    pub history: bool,
}

#[derive(Debug, Default)]
pub struct IngestPlan {
    /// New entries to store, in request order (stamped when witnessed).
    pub accepted: Vec<Entry>,
    /// One receipt per non-rejected entry, in request order.
    pub receipts: Vec<EntryMetadata>,
    pub rejected: Vec<Rejection>,
    pub reasons: Vec<RejectReason>,
}

enum Slot {
    Existing(String),
    New,
    Rejected(String, RejectReason),
}

/// What an entry's author signature is checked against.
struct Candidate<'e> {
    entry: &'e Entry,
    key: VerifyingKey,
    message: AuthorSignedMessage,
}

/// Validates a batch. `existing` holds the stored metadata of ids the store already has.
///
/// The per-entry work (hashing, signature verification, witness signing) is spread over the
/// machine's cores: it is almost all of an ingest's CPU time.
pub fn plan(
    input: &IngestInput<'_>,
    entries: Vec<Entry>,
    existing: &HashMap<String, EntryMetadata>,
) -> IngestPlan {
    let require_v2 = input.directory.requires_v2(input.now_ms);
    let checks: Vec<Option<Result<Candidate<'_>, RejectReason>>> = entries
        .par_iter()
        .map(|entry| {
            (!existing.contains_key(&entry.metadata.id))
                .then(|| check_entry(input.directory, entry, require_v2, input.history))
        })
        .collect();
    let candidates: Vec<&Candidate<'_>> = checks.iter().flatten().flatten().collect();
    // One signature batch per core: larger batches verify faster per signature.
    let per_core = candidates
        .len()
        .div_ceil(rayon::current_num_threads())
        .max(64);
    let verdicts: Vec<bool> = candidates
        .par_chunks(per_core)
        .flat_map_iter(verify_signatures)
        .collect();
    let mut verdicts = verdicts.into_iter();
    let slots: Vec<Slot> = checks
        .into_iter()
        .zip(&entries)
        .map(|(check, entry)| {
            let id = entry.metadata.id.clone();
            match check {
                None => Slot::Existing(id),
                Some(Err(reason)) => Slot::Rejected(id, reason),
                Some(Ok(_)) if verdicts.next() == Some(true) => Slot::New,
                Some(Ok(_)) => Slot::Rejected(id, RejectReason::InvalidSignature),
            }
        })
        .collect();
    let mut accepted: Vec<Entry> = entries
        .into_iter()
        .zip(&slots)
        .filter(|(_, slot)| matches!(slot, Slot::New))
        .map(|(entry, _)| entry)
        .collect();
    if let Some(w) = &input.witness {
        accepted.par_iter_mut().for_each(|entry| {
            if entry.metadata.entry_version.is_some()
                && entry.metadata.created_by_public_key != w.pem
            {
                signing::stamp_witness(
                    &mut entry.metadata,
                    input.db_id,
                    input.now_ms,
                    w.key,
                    w.pem,
                );
            }
        });
    }
    let mut out = IngestPlan::default();
    let mut next_accepted = accepted.iter();
    for slot in slots {
        match slot {
            Slot::Existing(id) => out.receipts.push(existing[&id].clone()),
            Slot::Rejected(id, reason) => out.reject(id, reason),
            Slot::New => out.receipts.push(
                next_accepted
                    .next()
                    .expect("one accepted entry per new slot")
                    .metadata
                    .clone(),
            ),
        }
    }
    out.accepted = accepted;
    out
}

/// Everything but the signature itself: trust, content hash, size, and the signed message.
fn check_entry<'e>(
    directory: &TenantDirectory,
    entry: &'e Entry,
    require_v2: bool,
    history: bool,
) -> Result<Candidate<'e>, RejectReason> {
    crate::wire::ids::validate_entry_id(&entry.metadata.id).map_err(|_| RejectReason::InvalidId)?;
    let key = &entry.metadata.created_by_public_key;
    let author = if history {
        directory.by_signing_key(key)
    } else {
        directory.active_by_signing_key(key)
    }
    .ok_or(RejectReason::UntrustedAuthor)?;
    if !has_content_hash(&entry.encrypted_data, &entry.metadata.content_hash) {
        return Err(RejectReason::ContentHash);
    }
    if entry.metadata.encrypted_size != entry.encrypted_data.len() as u64 {
        return Err(RejectReason::SizeMismatch);
    }
    let message =
        signing::author_signed_message(&entry.metadata, require_v2).map_err(|e| match e {
            AuthorSignatureError::V2Required => RejectReason::V2Required,
            _ => RejectReason::InvalidSignature,
        })?;
    Ok(Candidate {
        entry,
        key: author.signing_key,
        message,
    })
}

impl IngestPlan {
    fn reject(&mut self, id: String, reason: RejectReason) {
        self.rejected.push(Rejection {
            reason: reason.text(&id),
            id,
        });
        self.reasons.push(reason);
    }
}

/// Verifies all signatures, batched (one multiscalar check for the whole batch); when the batch
/// fails, each is checked alone so that only the bad ones are rejected.
fn verify_signatures(candidates: &[&Candidate<'_>]) -> Vec<bool> {
    let mut messages: Vec<&[u8]> = Vec::with_capacity(candidates.len());
    let mut sigs = Vec::with_capacity(candidates.len());
    let mut keys = Vec::with_capacity(candidates.len());
    let mut parsed_ok = vec![true; candidates.len()];
    for (
        i,
        Candidate {
            entry,
            key,
            message,
        },
    ) in candidates.iter().enumerate()
    {
        let (msg, sig): (&[u8], &[u8]) = match message {
            AuthorSignedMessage::Metadata(bytes) => (
                bytes,
                &entry
                    .metadata
                    .metadata_signature
                    .as_ref()
                    .expect("chosen because present")
                    .0,
            ),
            AuthorSignedMessage::Legacy => (&entry.encrypted_data, &entry.metadata.signature.0),
        };
        match signing::parse_signature(sig) {
            Some(s) => {
                messages.push(msg);
                sigs.push(s);
                keys.push(*key);
            }
            None => parsed_ok[i] = false,
        }
    }
    let one_key = keys.windows(2).all(|pair| pair[0] == pair[1]);
    let batch_ok = match keys.first() {
        Some(key) if one_key => signing::verify_batch_one_key(key, &messages, &sigs),
        _ => ed25519_dalek::verify_batch(&messages, &sigs, &keys).is_ok(),
    };
    if parsed_ok.iter().all(|ok| *ok) && batch_ok {
        return vec![true; candidates.len()];
    }
    let mut next = 0;
    parsed_ok
        .into_iter()
        .map(|parsed| {
            if !parsed {
                return false;
            }
            let i = next;
            next += 1;
            keys[i].verify_strict(messages[i], &sigs[i]).is_ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::keys::Identity;
    use crate::directory::{Directory, DirectoryFile, TenantFile, UserEntry};
    use crate::testdata::identity;

    fn directory_trusting(author: &Identity) -> Directory {
        let mut file = DirectoryFile::default();
        file.tenants.insert(
            "t".into(),
            TenantFile {
                users: vec![UserEntry {
                    username: "alice".into(),
                    signing_public_key: author.signing_public_pem.clone(),
                    encryption_public_key: author.encryption_public_pem.clone(),
                    revoked: false,
                }],
                ..Default::default()
            },
        );
        Directory::from_file(&file).unwrap()
    }

    /// A batch large enough to be verified in several parallel chunks, with bad entries in
    /// different chunks: each is rejected for its own reason, everything else is accepted and
    /// witnessed, and receipts keep the request order.
    #[test]
    fn a_mixed_batch_gets_one_verdict_per_entry_in_request_order() {
        let alice = identity("alice");
        let outsider = identity("outsider");
        let witness = identity("server");
        let directory = directory_trusting(&alice);
        let mut entries: Vec<Entry> = (0..300)
            .map(|n| crate::crypto::signing::author_entry(&alice, "doc", n, vec![n as u8; 64]))
            .collect();
        entries[5].encrypted_data[0] ^= 1;
        if let Some(sig) = entries[150].metadata.metadata_signature.as_mut() {
            sig.0[0] ^= 1;
        }
        entries[250] = crate::crypto::signing::author_entry(&outsider, "doc", 250, vec![7; 64]);
        let mut stored = entries[10].metadata.clone();
        stored.receipt_order = Some(1);
        let existing = HashMap::from([(stored.id.clone(), stored.clone())]);
        let ids: Vec<String> = entries.iter().map(|e| e.metadata.id.clone()).collect();

        let input = IngestInput {
            directory: directory.tenant("t").unwrap(),
            db_id: "db",
            witness: Some(Witness {
                key: &witness.signer,
                pem: &witness.signing_public_pem,
            }),
            now_ms: 1_800_000_000_000,
            history: false,
        };
        let plan = plan(&input, entries, &existing);

        let rejected: Vec<(&str, RejectReason)> = plan
            .rejected
            .iter()
            .map(|r| r.id.as_str())
            .zip(plan.reasons.iter().copied())
            .collect();
        assert_eq!(
            rejected,
            vec![
                (ids[5].as_str(), RejectReason::ContentHash),
                (ids[150].as_str(), RejectReason::InvalidSignature),
                (ids[250].as_str(), RejectReason::UntrustedAuthor),
            ]
        );
        let expected: Vec<&String> = ids
            .iter()
            .enumerate()
            .filter(|(i, _)| ![5, 150, 250].contains(i))
            .map(|(_, id)| id)
            .collect();
        let receipts: Vec<&String> = plan.receipts.iter().map(|m| &m.id).collect();
        assert_eq!(
            receipts, expected,
            "one receipt per entry, in request order"
        );
        assert_eq!(
            plan.receipts[9], stored,
            "an existing id gets its stored record"
        );
        assert_eq!(plan.accepted.len(), 296);
        for entry in &plan.accepted {
            assert!(signing::verify_witness(&entry.metadata, "db"));
        }
    }
}
