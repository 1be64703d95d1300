//! The sync engine: moves entries from a source store to a target store, whatever either is (local,
//! remote, cache). One pass is [`transfer`]; [`pull_changes_from`] and [`push_changes_to`] name the
//! two directions as seen from this node.
//!
//! A pass: both store heads (a local head costs nothing; a remote one is the only request of an idle
//! pass) → if the epochs are the ones of the saved [`SyncState`] and the source has nothing past the
//! cursor, done. Otherwise cursor scan of the source (restarting from the beginning when either epoch
//! changed), the next page fetched while the current one is processed; missing ids found with the
//! target's bloom summary (on full scans) and an exact `hasEntries` for the "maybe" ids; transfers in
//! batches with a bounded number in flight; the cursor advanced only after a page is stored. Sources
//! without cursor scan use the baseline flow (target ids → `findNewEntries`).

use std::collections::HashSet;

use futures::stream::{self, StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};

use crate::bloom::BloomTester;
use crate::store::{ContentAddressedStore, StoreError};
use crate::wire::{
    Entry, EntryMetadata, Rejection, ScanCursor, ScanFilters, ScanPage, StoreHead, MAX_SCAN_PAGE,
};

/// What is remembered per (source, target) pair between passes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncState {
    pub source_epoch: Option<String>,
    pub target_epoch: Option<String>,
    pub cursor: Option<ScanCursor>,
}

impl SyncState {
    fn position(&self) -> u64 {
        self.cursor.as_ref().map_or(0, |c| c.receipt_order)
    }
}

/// Checks entries before a target stores them (pulls into a local store verify signatures and
/// hashes here; a remote target verifies on its own).
pub trait Admission: Send + Sync {
    fn admit(&self, entries: Vec<Entry>) -> (Vec<Entry>, Vec<Rejection>);
}

#[derive(Debug, Clone, Copy)]
pub struct SyncOptions {
    pub batch_size: usize,
    pub max_in_flight: usize,
}

impl Default for SyncOptions {
    fn default() -> Self {
        SyncOptions {
            batch_size: 250,
            max_in_flight: 3,
        }
    }
}

/// Progress of a pass, reported after every page (and at the end).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    pub scanned: u64,
    pub transferred: u64,
    /// Entries of the source past the starting cursor (an upper bound of the work).
    pub total: u64,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct SyncReport {
    /// Nothing to do: only the heads were read.
    pub idle: bool,
    /// The pass restarted from the beginning because an epoch changed (or it was the first).
    pub full_scan: bool,
    pub scanned: u64,
    pub transferred: u64,
    pub bytes: u64,
    pub rejected: Vec<Rejection>,
    /// Ids the bloom summary called "maybe present" that `hasEntries` found missing.
    pub bloom_false_positives: u64,
    /// Source entries past the cursor after the pass (0 when caught up).
    pub lag: u64,
    pub source_head: Option<StoreHead>,
}

/// Called after each page: the state to persist and the progress so far.
pub type PageHook<'a> = &'a mut (dyn FnMut(&SyncState, &Progress) + Send);

/// Remote source → local target.
pub async fn pull_changes_from(
    source: &dyn ContentAddressedStore,
    target: &dyn ContentAddressedStore,
    state: &mut SyncState,
    options: SyncOptions,
    admission: Option<&dyn Admission>,
    on_page: PageHook<'_>,
) -> Result<SyncReport, StoreError> {
    transfer(source, target, state, options, admission, on_page).await
}

/// Local source → remote target (which verifies on its side).
pub async fn push_changes_to(
    source: &dyn ContentAddressedStore,
    target: &dyn ContentAddressedStore,
    state: &mut SyncState,
    options: SyncOptions,
    on_page: PageHook<'_>,
) -> Result<SyncReport, StoreError> {
    transfer(source, target, state, options, None, on_page).await
}

fn unsupported(e: &StoreError) -> bool {
    matches!(e, StoreError::Unsupported { .. })
}

/// One pass from `source` to `target`.
pub async fn transfer(
    source: &dyn ContentAddressedStore,
    target: &dyn ContentAddressedStore,
    state: &mut SyncState,
    options: SyncOptions,
    admission: Option<&dyn Admission>,
    on_page: PageHook<'_>,
) -> Result<SyncReport, StoreError> {
    let (source_head, target_head) =
        futures::join!(source.get_store_head(), target.get_store_head());
    let source_head = match source_head {
        Ok(h) => h,
        Err(e) if unsupported(&e) => {
            return baseline(source, target, options, admission, on_page).await
        }
        Err(e) => return Err(e),
    };
    let target_epoch = match target_head {
        Ok(h) => Some(h.epoch),
        Err(e) if unsupported(&e) => None,
        Err(e) => return Err(e),
    };
    let mut report = SyncReport {
        source_head: Some(source_head.clone()),
        ..SyncReport::default()
    };
    let epochs_changed = state.source_epoch.as_deref() != Some(source_head.epoch.as_str())
        || state.target_epoch != target_epoch;
    if epochs_changed {
        *state = SyncState {
            source_epoch: Some(source_head.epoch.clone()),
            target_epoch,
            cursor: None,
        };
    }
    if state.position() >= source_head.max_receipt_order && !epochs_changed {
        report.idle = true;
        return Ok(report);
    }
    // A rescan from the start happens on the first sync and on every epoch change; a pass that
    // starts at the beginning because nothing was there before is not one.
    report.full_scan = epochs_changed;
    let from_start = state.cursor.is_none();
    let mut progress = Progress {
        total: source_head
            .max_receipt_order
            .saturating_sub(state.position()),
        ..Progress::default()
    };
    // On a full scan a bloom summary of the target spares an exact lookup for most new ids.
    let bloom = if from_start && progress.total > MAX_SCAN_PAGE as u64 {
        match target.get_id_bloom_summary().await {
            Ok(s) => Some(BloomTester::new(&s)),
            Err(e) if unsupported(&e) => None,
            Err(e) => return Err(e),
        }
    } else {
        None
    };
    let filters = ScanFilters::default();
    let mut page: ScanPage = match source
        .scan_entries_since(state.cursor.as_ref(), MAX_SCAN_PAGE, &filters)
        .await
    {
        Ok(p) => p,
        Err(e) if unsupported(&e) => {
            return baseline(source, target, options, admission, on_page).await
        }
        Err(e) => return Err(e),
    };
    loop {
        // Fetch the next page while this one is transferred.
        let next_cursor = page.next_cursor.clone();
        let prefetch = async {
            if page.has_more {
                source
                    .scan_entries_since(next_cursor.as_ref(), MAX_SCAN_PAGE, &filters)
                    .await
                    .map(Some)
            } else {
                Ok(None)
            }
        };
        let ids: Vec<String> = page.entries.iter().map(|m| m.id.clone()).collect();
        let work = async {
            let missing = missing_ids(target, &ids, bloom.as_ref(), &mut report).await?;
            move_entries(source, target, missing, options, admission, &mut report).await
        };
        let (next, moved) = futures::join!(prefetch, work);
        moved?;
        progress.scanned += ids.len() as u64;
        progress.transferred = report.transferred;
        report.scanned = progress.scanned;
        if page.next_cursor.is_some() {
            state.cursor = page.next_cursor.clone();
        }
        on_page(state, &progress);
        match next? {
            Some(p) => page = p,
            None => break,
        }
    }
    report.lag = source_head
        .max_receipt_order
        .saturating_sub(state.position());
    Ok(report)
}

/// Ids of `ids` the target lacks, in order.
async fn missing_ids(
    target: &dyn ContentAddressedStore,
    ids: &[String],
    bloom: Option<&BloomTester>,
    report: &mut SyncReport,
) -> Result<Vec<String>, StoreError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let maybe: Vec<String> = match bloom {
        Some(b) => ids
            .iter()
            .filter(|id| b.might_contain(id))
            .cloned()
            .collect(),
        None => ids.to_vec(),
    };
    let present: HashSet<String> = if maybe.is_empty() {
        HashSet::new()
    } else {
        target.has_entries(&maybe).await?.into_iter().collect()
    };
    if bloom.is_some() {
        report.bloom_false_positives +=
            maybe.iter().filter(|id| !present.contains(*id)).count() as u64;
    }
    Ok(ids
        .iter()
        .filter(|id| !present.contains(*id))
        .cloned()
        .collect())
}

/// Copies entries in batches, at most `max_in_flight` at once, in order.
async fn move_entries(
    source: &dyn ContentAddressedStore,
    target: &dyn ContentAddressedStore,
    ids: Vec<String>,
    options: SyncOptions,
    admission: Option<&dyn Admission>,
    report: &mut SyncReport,
) -> Result<(), StoreError> {
    let batches: Vec<Vec<String>> = ids
        .chunks(options.batch_size.max(1))
        .map(<[String]>::to_vec)
        .collect();
    let results: Vec<(u64, u64, Vec<Rejection>)> = stream::iter(batches)
        .map(|batch| async move {
            let entries = source.get_entries(&batch).await?;
            let (entries, mut rejected) = match admission {
                Some(a) => a.admit(entries),
                None => (entries, Vec::new()),
            };
            let mut count = entries.len() as u64;
            let bytes = entries.iter().map(|e| e.encrypted_data.len() as u64).sum();
            if !entries.is_empty() {
                let db_id = &source.id().db_id;
                let pushed: Vec<EntryMetadata> =
                    entries.iter().map(|e| e.metadata.clone()).collect();
                let outcome = target.push_entries(entries).await?;
                count = count.saturating_sub(outcome.rejected.len() as u64);
                rejected.extend(outcome.rejected);
                // The target's witness receipts go onto the source's copy (a relay forwarding the
                // writes it queued while its upstream was away gets the origin's receipts).
                let receipts = verified_receipts(&pushed, &outcome.receipts, db_id);
                if !receipts.is_empty() {
                    source.apply_receipts(&receipts).await?;
                }
            }
            Ok::<_, StoreError>((count, bytes, rejected))
        })
        .buffered(options.max_in_flight.max(1))
        .try_collect()
        .await?;
    for (count, bytes, rejected) in results {
        report.transferred += count;
        report.bytes += bytes;
        report.rejected.extend(rejected);
    }
    Ok(())
}

/// The records of `pushed` with the witness receipts of `receipts` copied on, for every receipt
/// that is new to the pushed record and whose signature verifies over it (spec §5.6): a receipt is
/// taken only for exactly the entry that was pushed, never on the target's word alone.
pub fn verified_receipts(
    pushed: &[EntryMetadata],
    receipts: &[EntryMetadata],
    db_id: &str,
) -> Vec<EntryMetadata> {
    let by_id: std::collections::HashMap<&str, &EntryMetadata> =
        pushed.iter().map(|m| (m.id.as_str(), m)).collect();
    receipts
        .iter()
        .filter_map(|receipt| {
            let merged = crate::store::with_receipt(by_id.get(receipt.id.as_str())?, receipt)?;
            crate::crypto::signing::verify_witness(&merged, db_id).then_some(merged)
        })
        .collect()
}

/// The flow for sources without cursor scan or store head: all target ids → `findNewEntries`.
async fn baseline(
    source: &dyn ContentAddressedStore,
    target: &dyn ContentAddressedStore,
    options: SyncOptions,
    admission: Option<&dyn Admission>,
    on_page: PageHook<'_>,
) -> Result<SyncReport, StoreError> {
    let have = target.get_all_ids().await?;
    let new = source.find_new_entries(&have).await?;
    let ids: Vec<String> = new.into_iter().map(|m| m.id).collect();
    let mut report = SyncReport {
        full_scan: true,
        scanned: ids.len() as u64,
        ..SyncReport::default()
    };
    move_entries(source, target, ids, options, admission, &mut report).await?;
    on_page(
        &SyncState::default(),
        &Progress {
            scanned: report.scanned,
            transferred: report.transferred,
            total: report.scanned,
        },
    );
    report.idle = report.scanned == 0;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::contract_tests::entry;
    use crate::store::memory::MemoryStore;
    use crate::wire::{StoreId, StoreKind};
    use tokio::sync::broadcast;

    fn store() -> MemoryStore {
        let id = StoreId::new("t", "db", StoreKind::Docs).unwrap();
        MemoryStore::new(id, broadcast::channel(16).0)
    }

    #[test]
    fn only_receipts_that_verify_over_the_pushed_entry_are_taken() {
        let server = crate::testdata::identity("server");
        let stamp = |m: &EntryMetadata, db: &str| {
            let mut m = m.clone();
            crate::crypto::signing::stamp_witness(
                &mut m,
                db,
                1_700_000_000_123,
                &server.signer,
                &server.signing_public_pem,
            );
            m
        };
        let pushed: Vec<EntryMetadata> = ["a", "b", "c", "d", "e"]
            .iter()
            .map(|id| entry(id, "doc", &[], "doc_create", id.as_bytes()).metadata)
            .collect();
        let good = stamp(&pushed[0], "db");
        let other_db = stamp(&pushed[1], "elsewhere");
        let mut forged = stamp(&pushed[2], "db");
        forged.received_at = Some(1); // the signature covers receivedAt
        let mut changed_entry = stamp(&pushed[3], "db");
        changed_entry.doc_id = "other".into(); // the receipt's own fields are never taken
        let mut other_fields = pushed[3].clone();
        other_fields.doc_id = "other".into();
        let for_other_fields = stamp(&other_fields, "db");
        let unstamped = pushed[4].clone();
        let taken = verified_receipts(
            &pushed,
            &[
                good.clone(),
                other_db,
                forged,
                changed_entry,
                for_other_fields,
                unstamped,
            ],
            "db",
        );
        assert_eq!(taken.len(), 2, "{taken:?}");
        assert_eq!(taken[0], good);
        // A receipt signed over the pushed fields is valid even if the record around it differs:
        // only its three receipt fields are copied onto the pushed record.
        assert_eq!(taken[1].id, "d");
        assert_eq!(taken[1].doc_id, "doc");
    }

    fn entries(prefix: &str, n: usize) -> Vec<Entry> {
        (0..n)
            .map(|i| {
                let id = format!("{prefix}{i:05}");
                entry(&id, "doc", &[], "doc_change", id.as_bytes())
            })
            .collect()
    }

    /// Rejects ids ending in 7, like a verifier refusing a forged entry.
    struct RefuseSevens;
    impl Admission for RefuseSevens {
        fn admit(&self, entries: Vec<Entry>) -> (Vec<Entry>, Vec<Rejection>) {
            let (bad, good): (Vec<_>, Vec<_>) = entries
                .into_iter()
                .partition(|e| e.metadata.id.ends_with('7'));
            let rejected = bad
                .into_iter()
                .map(|e| Rejection {
                    id: e.metadata.id,
                    reason: "forged".into(),
                })
                .collect();
            (good, rejected)
        }
    }

    async fn pass(a: &MemoryStore, b: &MemoryStore, state: &mut SyncState) -> SyncReport {
        let mut pages = 0;
        let mut hook = |_: &SyncState, _: &Progress| pages += 1;
        transfer(a, b, state, SyncOptions::default(), None, &mut hook)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn first_pass_copies_everything_then_idle_then_incremental() {
        let (a, b) = (store(), store());
        a.put_entries(entries("a", 2_500)).await.unwrap();
        b.put_entries(entries("a", 10)).await.unwrap(); // some already there
        let mut state = SyncState::default();
        let first = pass(&a, &b, &mut state).await;
        assert!(first.full_scan && !first.idle);
        assert_eq!(
            (first.scanned, first.transferred, first.lag),
            (2_500, 2_490, 0)
        );
        assert_eq!(b.get_all_ids().await.unwrap().len(), 2_500);
        assert_eq!(state.cursor.as_ref().unwrap().receipt_order, 2_500);

        let idle = pass(&a, &b, &mut state).await;
        assert!(idle.idle);
        assert_eq!(idle.scanned, 0);

        a.put_entries(entries("n", 5)).await.unwrap();
        let more = pass(&a, &b, &mut state).await;
        assert!(!more.full_scan && !more.idle);
        assert_eq!((more.scanned, more.transferred), (5, 5));
    }

    #[tokio::test]
    async fn an_epoch_change_rescans_from_the_start() {
        let (a, b) = (store(), store());
        a.put_entries(entries("a", 50)).await.unwrap();
        let mut state = SyncState::default();
        pass(&a, &b, &mut state).await;
        // The target was wiped: a new store with a new epoch.
        let fresh = store();
        let report = pass(&a, &fresh, &mut state).await;
        assert!(report.full_scan);
        assert_eq!(report.transferred, 50);
        assert_eq!(fresh.get_all_ids().await.unwrap().len(), 50);
    }

    #[tokio::test]
    async fn rejected_entries_are_reported_and_do_not_block_the_cursor() {
        let (a, b) = (store(), store());
        a.put_entries(entries("a", 30)).await.unwrap();
        let mut state = SyncState::default();
        let mut hook = |_: &SyncState, _: &Progress| {};
        let report = transfer(
            &a,
            &b,
            &mut state,
            SyncOptions::default(),
            Some(&RefuseSevens),
            &mut hook,
        )
        .await
        .unwrap();
        assert_eq!(report.rejected.len(), 3);
        assert_eq!(report.transferred, 27);
        assert_eq!(report.lag, 0);
        assert!(!b
            .get_all_ids()
            .await
            .unwrap()
            .iter()
            .any(|id| id.ends_with('7')));
    }

    #[tokio::test]
    async fn large_first_pass_uses_the_targets_bloom_summary() {
        let (a, b) = (store(), store());
        a.put_entries(entries("a", 3_000)).await.unwrap();
        b.put_entries(entries("a", 1_500)).await.unwrap();
        let mut state = SyncState::default();
        let report = pass(&a, &b, &mut state).await;
        assert_eq!(report.transferred, 1_500);
        // bloom-v1 targets a 1 % false-positive rate: a handful of rechecks, not hundreds.
        assert!(
            report.bloom_false_positives < 100,
            "{}",
            report.bloom_false_positives
        );
        assert_eq!(b.get_all_ids().await.unwrap().len(), 3_000);
    }
}
