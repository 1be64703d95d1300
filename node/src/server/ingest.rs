//! The push validation pipeline (spec §4.11), as a pure function over a batch: which entries are
//! acknowledged with the stored record, which are new and accepted (stamped when this node is a
//! witness), and which are rejected with the protocol's reason text. No I/O happens here.

use std::collections::HashMap;

use ed25519_dalek::{SigningKey, VerifyingKey};

use crate::crypto::signing::{self, AuthorSignatureError, AuthorSignedMessage};
use crate::directory::TenantDirectory;
use crate::wire::{content_hash, Entry, EntryMetadata, Rejection};

/// Why an entry was rejected; the label is used for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    UntrustedAuthor,
    ContentHash,
    V2Required,
    InvalidSignature,
    SizeMismatch,
}

impl RejectReason {
    pub fn label(self) -> &'static str {
        match self {
            RejectReason::UntrustedAuthor => "untrusted_author",
            RejectReason::ContentHash => "content_hash",
            RejectReason::V2Required => "v2_required",
            RejectReason::InvalidSignature => "invalid_signature",
            RejectReason::SizeMismatch => "size_mismatch",
        }
    }

    fn text(self, id: &str) -> String {
        match self {
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
    pub key: &'a SigningKey,
    pub pem: &'a str,
}

pub struct IngestInput<'a> {
    pub directory: &'a TenantDirectory,
    pub db_id: &'a str,
    pub witness: Option<Witness<'a>>,
    pub now_ms: i64,
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
    Existing(Box<EntryMetadata>),
    New(usize),
    Rejected(String, RejectReason),
}

/// Validates a batch. `existing` holds the stored metadata of ids the store already has.
pub fn plan(
    input: &IngestInput<'_>,
    entries: Vec<Entry>,
    existing: &HashMap<String, EntryMetadata>,
) -> IngestPlan {
    let mut out = IngestPlan::default();
    let require_v2 = input.directory.requires_v2(input.now_ms);
    let mut slots = Vec::with_capacity(entries.len());
    let mut candidates: Vec<(Entry, VerifyingKey, AuthorSignedMessage)> = Vec::new();
    for entry in entries {
        let id = entry.metadata.id.clone();
        if let Some(stored) = existing.get(&id) {
            slots.push(Slot::Existing(Box::new(stored.clone())));
            continue;
        }
        let check = || -> Result<(VerifyingKey, AuthorSignedMessage), RejectReason> {
            let author = input
                .directory
                .active_by_signing_key(&entry.metadata.created_by_public_key)
                .ok_or(RejectReason::UntrustedAuthor)?;
            if content_hash(&entry.encrypted_data) != entry.metadata.content_hash {
                return Err(RejectReason::ContentHash);
            }
            if entry.metadata.encrypted_size != entry.encrypted_data.len() as u64 {
                return Err(RejectReason::SizeMismatch);
            }
            let message = signing::author_signed_message(&entry.metadata, require_v2).map_err(
                |e| match e {
                    AuthorSignatureError::V2Required => RejectReason::V2Required,
                    _ => RejectReason::InvalidSignature,
                },
            )?;
            Ok((author.signing_key, message))
        };
        match check() {
            Ok((key, message)) => {
                slots.push(Slot::New(candidates.len()));
                candidates.push((entry, key, message));
            }
            Err(reason) => slots.push(Slot::Rejected(id, reason)),
        }
    }
    let verdicts = verify_signatures(&candidates);
    let mut new_entries: Vec<Option<Entry>> =
        candidates.into_iter().map(|(e, _, _)| Some(e)).collect();
    for slot in slots {
        match slot {
            Slot::Existing(stored) => out.receipts.push(*stored),
            Slot::Rejected(id, reason) => out.reject(id, reason),
            Slot::New(i) => {
                let mut entry = new_entries[i].take().expect("each candidate has one slot");
                if !verdicts[i] {
                    out.reject(entry.metadata.id, RejectReason::InvalidSignature);
                    continue;
                }
                if let Some(w) = &input.witness {
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
                }
                out.receipts.push(entry.metadata.clone());
                out.accepted.push(entry);
            }
        }
    }
    out
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
fn verify_signatures(candidates: &[(Entry, VerifyingKey, AuthorSignedMessage)]) -> Vec<bool> {
    let mut messages: Vec<&[u8]> = Vec::with_capacity(candidates.len());
    let mut sigs = Vec::with_capacity(candidates.len());
    let mut keys = Vec::with_capacity(candidates.len());
    let mut parsed_ok = vec![true; candidates.len()];
    for (i, (entry, key, message)) in candidates.iter().enumerate() {
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
    if parsed_ok.iter().all(|ok| *ok)
        && ed25519_dalek::verify_batch(&messages, &sigs, &keys).is_ok()
    {
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
