//! The sync engine: moves entries from a source store to a target store, whatever either is (local,
//! remote, cache). One pass is [`transfer`]; [`pull_changes_from`] and [`push_changes_to`] name the
//! two directions as seen from this node.
//!
//! A pass: both store heads (a local head costs nothing; a remote one is the only request of an idle
//! pass) → if the epochs are the ones of the saved [`SyncState`] and the source has nothing past the
//! cursor, done. Otherwise cursor scan of the source (restarting from the beginning when either epoch
//! changed), the next page fetched while the current one is processed; missing ids found with the
//! target's bloom summary (on full scans) and an exact `hasEntries` for the "maybe" ids; transfers in
//! batches bounded by entries and payload bytes, a bounded number in flight. The scanner runs ahead
//! of the transfers, so batches keep flowing across page boundaries; the cursor is advanced only
//! once every batch of its page is stored. Sources without cursor scan use the baseline flow
//! (target ids → `findNewEntries`).

use std::collections::HashSet;

use futures::channel::mpsc;
use futures::stream::{self, StreamExt};
use futures::SinkExt;
use serde::{Deserialize, Serialize};

use crate::bloom::BloomTester;
use crate::store::memory::EMPTY_VIEW_EPOCH;
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
    /// Ids behind the cursor that were neither stored nor refused for good: held back for a
    /// reason that can change, retried by later passes (see [`Admitted::held`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub held: Vec<String>,
    /// What the held ids were last tried against ([`Admission::generation`]) and when (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_generation: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_tried_ms: Option<i64>,
}

/// Held ids a link may carry; past this the cursor stops (the pass fails) until some are
/// resolved, so that nothing is ever passed over without a trace.
pub const MAX_HELD: usize = 10_000;

/// How often held ids are retried when nothing observable changed (a target's directory, say).
pub const HELD_RETRY_MS: i64 = 60_000;

impl SyncState {
    fn position(&self) -> u64 {
        self.cursor.as_ref().map_or(0, |c| c.receipt_order)
    }

    /// Entries of a source with `head` past this state's cursor (all of them when the source's
    /// epoch is not the one the cursor belongs to).
    pub fn lag_to(&self, head: &StoreHead) -> u64 {
        if self.source_epoch.as_deref() != Some(head.epoch.as_str()) {
            return head.max_receipt_order;
        }
        head.max_receipt_order.saturating_sub(self.position())
    }
}

/// Checks entries before a target stores them (pulls into a local store verify signatures and
/// hashes here; a remote target verifies on its own).
pub trait Admission: Send + Sync {
    fn admit(&self, entries: Vec<Entry>) -> Admitted;

    /// Identifies what verdicts depend on that can change (the directory): held ids are retried
    /// when it differs from the one they were last tried against.
    fn generation(&self) -> String;

    /// Called once the target stored admitted entries, with the witness receipt time
    /// (`receivedAt`, ms) each carried from its origin (`None`: not witnessed), one per entry.
    fn stored(&self, _received_at: &[Option<i64>]) {}
}

/// The verdict on a batch: entries to store, entries refused for good (a reason that cannot
/// change: a bad hash or signature), and ids held back for a reason that can (an author the
/// directory does not know yet).
#[derive(Debug, Default)]
pub struct Admitted {
    pub accepted: Vec<Entry>,
    pub rejected: Vec<Rejection>,
    pub held: Vec<String>,
}

/// Whether a target's refusal can change later: a MindooDB server refuses an author it does not
/// trust *yet* with this text (spec §4.11); every other reason is about the entry itself.
pub fn is_retryable_refusal(reason: &str) -> bool {
    reason.ends_with("was not signed by a trusted user")
}

#[derive(Debug, Clone, Copy)]
pub struct SyncOptions {
    /// Entries per transfer batch (one `getEntries` request)...
    pub batch_size: usize,
    /// ...and payload bytes per batch, whichever is reached first.
    pub batch_bytes: u64,
    pub max_in_flight: usize,
}

impl Default for SyncOptions {
    fn default() -> Self {
        SyncOptions {
            batch_size: 1000,
            batch_bytes: 4 << 20,
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
    /// Ids held back after this pass (see [`SyncState::held`]).
    pub held: u64,
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
    // A database that did not exist on one side (answered from an empty view) and now does
    // starts from the beginning, but nothing was scanned before: not a re-scan.
    let was_empty_view = [&state.source_epoch, &state.target_epoch]
        .iter()
        .any(|e| e.as_deref() == Some(EMPTY_VIEW_EPOCH));
    if epochs_changed {
        // A rescan from the start meets the held ids again: they are forgotten with the cursor.
        *state = SyncState {
            source_epoch: Some(source_head.epoch.clone()),
            target_epoch,
            ..SyncState::default()
        };
    } else if !state.held.is_empty() {
        retry_held(source, target, state, options, admission, &mut report).await?;
        on_page(state, &Progress::default());
    }
    report.held = state.held.len() as u64;
    if state.position() >= source_head.max_receipt_order && !epochs_changed {
        report.idle = true;
        return Ok(report);
    }
    // A rescan from the start happens on the first sync and on every epoch change; a pass that
    // starts at the beginning because nothing was there before is not one.
    report.full_scan = epochs_changed && !was_empty_view;
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
    let first = match source
        .scan_entries_since(
            state.cursor.as_ref(),
            MAX_SCAN_PAGE,
            &ScanFilters::default(),
        )
        .await
    {
        Ok(p) => p,
        Err(e) if unsupported(&e) => {
            return baseline(source, target, options, admission, on_page).await
        }
        Err(e) => return Err(e),
    };
    // The scanner runs ahead of the movers by a bounded number of batches, so that batches keep
    // flowing across page boundaries instead of the window draining at the end of every page.
    let (tx, rx) = mpsc::channel(2 * MAX_SCAN_PAGE.div_ceil(options.batch_size.max(1)));
    let scanner = scan_pages(source, target, first, bloom.as_ref(), options, tx);
    let movers = async {
        let mut done = rx
            .map(|work: Work| async move {
                let moved = match work.ids.is_empty() {
                    true => Moved::default(),
                    false => move_batch(source, target, work.ids, admission).await?,
                };
                Ok::<_, StoreError>((moved, work.page_end))
            })
            .buffered(options.max_in_flight.max(1));
        // `buffered` yields in order: when a page's end comes out, every batch before it is stored.
        while let Some(done) = done.next().await {
            let (mut moved, page_end) = done?;
            hold(state, std::mem::take(&mut moved.held))?;
            report.add(moved);
            if let Some(PageEnd { cursor, scanned }) = page_end {
                progress.scanned += scanned;
                progress.transferred = report.transferred;
                report.scanned = progress.scanned;
                if cursor.is_some() {
                    state.cursor = cursor;
                }
                on_page(state, &progress);
            }
        }
        Ok::<_, StoreError>(())
    };
    let (scanned, moved) = futures::join!(scanner, movers);
    // A mover's error first: it is why the scanner stopped early.
    moved?;
    report.bloom_false_positives += scanned?;
    report.held = state.held.len() as u64;
    report.lag = source_head
        .max_receipt_order
        .saturating_sub(state.position());
    Ok(report)
}

/// What the scanner hands to the movers: ids the target lacks, to be moved together, and with a
/// page's last batch (empty when the target lacks nothing of it) the end of that page.
struct Work {
    ids: Vec<String>,
    page_end: Option<PageEnd>,
}

/// The end of a scanned page: its cursor may be saved once every batch before it is stored.
struct PageEnd {
    cursor: Option<ScanCursor>,
    scanned: u64,
}

/// What one moved batch contributes to the report.
#[derive(Default)]
struct Moved {
    count: u64,
    bytes: u64,
    rejected: Vec<Rejection>,
    held: Vec<String>,
}

/// Adds ids to the held set; fails (so that the cursor does not move on) past [`MAX_HELD`].
fn hold(state: &mut SyncState, ids: Vec<String>) -> Result<(), StoreError> {
    for id in ids {
        if !state.held.contains(&id) {
            state.held.push(id);
        }
    }
    if state.held.len() > MAX_HELD {
        return Err(StoreError::Held {
            held: state.held.len(),
            limit: MAX_HELD,
        });
    }
    Ok(())
}

/// Tries the held ids again when what their verdict depends on changed (or, for a remote target
/// whose directory cannot be observed, every [`HELD_RETRY_MS`]): those stored or refused for
/// good leave the held set.
async fn retry_held(
    source: &dyn ContentAddressedStore,
    target: &dyn ContentAddressedStore,
    state: &mut SyncState,
    options: SyncOptions,
    admission: Option<&dyn Admission>,
    report: &mut SyncReport,
) -> Result<(), StoreError> {
    let now = crate::clock::now_ms();
    let generation = admission.map(|a| a.generation());
    let due = match &generation {
        Some(g) => state.held_generation.as_ref() != Some(g),
        None => state
            .held_tried_ms
            .is_none_or(|t| now.saturating_sub(t) >= HELD_RETRY_MS),
    };
    if !due {
        return Ok(());
    }
    let held = std::mem::take(&mut state.held);
    let mut still_held = Vec::new();
    let size = options.batch_size.max(1);
    for (i, batch) in held.chunks(size).enumerate() {
        match move_batch(source, target, batch.to_vec(), admission).await {
            Ok(mut moved) => {
                still_held.append(&mut moved.held);
                report.add(moved);
            }
            Err(e) => {
                // Everything not settled stays held for the next try.
                still_held.extend_from_slice(&held[i * size..]);
                state.held = still_held;
                return Err(e);
            }
        }
    }
    if !still_held.is_empty() {
        tracing::debug!(
            held = still_held.len(),
            "held entries still held after a retry"
        );
    }
    state.held = still_held;
    state.held_generation = generation;
    state.held_tried_ms = Some(now);
    Ok(())
}

impl SyncReport {
    fn add(&mut self, moved: Moved) {
        self.transferred += moved.count;
        self.bytes += moved.bytes;
        self.rejected.extend(moved.rejected);
    }
}

/// Walks the source's pages from `page` on (the next page fetched while this one is checked
/// against the target) and sends each page's missing ids in batches, then the page's end.
/// Returns the bloom summary's false positives; stops early when the movers are gone.
async fn scan_pages(
    source: &dyn ContentAddressedStore,
    target: &dyn ContentAddressedStore,
    mut page: ScanPage,
    bloom: Option<&BloomTester>,
    options: SyncOptions,
    mut tx: mpsc::Sender<Work>,
) -> Result<u64, StoreError> {
    let filters = ScanFilters::default();
    let mut false_positives = 0;
    loop {
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
        let (next, missing) = futures::join!(
            prefetch,
            missing(target, &page.entries, bloom, &mut false_positives)
        );
        let mut work: Vec<Work> = batches(&missing?, options)
            .into_iter()
            .map(|ids| Work {
                ids,
                page_end: None,
            })
            .collect();
        if work.is_empty() {
            work.push(Work {
                ids: Vec::new(),
                page_end: None,
            });
        }
        work.last_mut().expect("one at least").page_end = Some(PageEnd {
            cursor: page.next_cursor.take(),
            scanned: page.entries.len() as u64,
        });
        for item in work {
            if tx.send(item).await.is_err() {
                return Ok(false_positives);
            }
        }
        match next? {
            Some(p) => page = p,
            None => return Ok(false_positives),
        }
    }
}

/// The entries of `page` the target lacks, in order.
async fn missing<'a>(
    target: &dyn ContentAddressedStore,
    page: &'a [EntryMetadata],
    bloom: Option<&BloomTester>,
    false_positives: &mut u64,
) -> Result<Vec<&'a EntryMetadata>, StoreError> {
    let maybe: Vec<String> = page
        .iter()
        .filter(|m| bloom.is_none_or(|b| b.might_contain(&m.id)))
        .map(|m| m.id.clone())
        .collect();
    let present: HashSet<String> = if maybe.is_empty() {
        HashSet::new()
    } else {
        target.has_entries(&maybe).await?.into_iter().collect()
    };
    if bloom.is_some() {
        *false_positives += maybe.iter().filter(|id| !present.contains(*id)).count() as u64;
    }
    Ok(page.iter().filter(|m| !present.contains(&m.id)).collect())
}

/// Splits entries into transfer batches of at most `batch_size` entries and `batch_bytes` payload
/// bytes (by their `encryptedSize`; an entry larger than that travels alone), in order, so that
/// one response stays a bounded size whatever the entries weigh.
fn batches(entries: &[&EntryMetadata], options: SyncOptions) -> Vec<Vec<String>> {
    let mut out: Vec<Vec<String>> = Vec::new();
    let mut bytes = 0u64;
    for m in entries {
        let full = out.last().is_none_or(|b| {
            b.len() >= options.batch_size.max(1)
                || bytes.saturating_add(m.encrypted_size) > options.batch_bytes
        });
        if full {
            out.push(Vec::new());
            bytes = 0;
        }
        out.last_mut().expect("pushed above").push(m.id.clone());
        bytes = bytes.saturating_add(m.encrypted_size);
    }
    out
}

/// Copies the batches, at most `max_in_flight` at once.
async fn move_entries(
    source: &dyn ContentAddressedStore,
    target: &dyn ContentAddressedStore,
    batches: Vec<Vec<String>>,
    options: SyncOptions,
    admission: Option<&dyn Admission>,
    report: &mut SyncReport,
) -> Result<(), StoreError> {
    let mut moved = stream::iter(batches)
        .map(|batch| move_batch(source, target, batch, admission))
        .buffered(options.max_in_flight.max(1));
    while let Some(batch) = moved.next().await {
        report.add(batch?);
    }
    Ok(())
}

/// Copies one batch: fetched from the source, admitted, stored at the target; the target's witness
/// receipts go onto the source's copy (a relay forwarding the writes it queued while its upstream
/// was away gets the origin's receipts).
async fn move_batch(
    source: &dyn ContentAddressedStore,
    target: &dyn ContentAddressedStore,
    ids: Vec<String>,
    admission: Option<&dyn Admission>,
) -> Result<Moved, StoreError> {
    let entries = source.get_entries(&ids).await?;
    let Admitted {
        accepted: entries,
        mut rejected,
        mut held,
    } = match admission {
        Some(a) => a.admit(entries),
        None => Admitted {
            accepted: entries,
            ..Admitted::default()
        },
    };
    let mut count = entries.len() as u64;
    let bytes = entries.iter().map(|e| e.encrypted_data.len() as u64).sum();
    // Receipt times of what is stored, for the admission's delay figures.
    let received: Option<Vec<(String, Option<i64>)>> = admission.map(|_| {
        entries
            .iter()
            .map(|e| (e.metadata.id.clone(), e.metadata.received_at))
            .collect()
    });
    if !entries.is_empty() {
        // A pull from a remote source has nowhere to put receipts: no copy kept for them.
        let pushed: Option<Vec<EntryMetadata>> = source
            .keeps_receipts()
            .then(|| entries.iter().map(|e| e.metadata.clone()).collect());
        let outcome = target.push_entries(entries).await?;
        count = count.saturating_sub(outcome.rejected.len() as u64);
        if let (Some(a), Some(received)) = (admission, received) {
            let refused: HashSet<&str> = outcome.rejected.iter().map(|r| r.id.as_str()).collect();
            let times: Vec<Option<i64>> = received
                .into_iter()
                .filter(|(id, _)| !refused.contains(id.as_str()))
                .map(|(_, t)| t)
                .collect();
            a.stored(&times);
        }
        for refusal in outcome.rejected {
            if is_retryable_refusal(&refusal.reason) {
                held.push(refusal.id);
            } else {
                rejected.push(refusal);
            }
        }
        if let Some(pushed) = pushed {
            let receipts = verified_receipts(&pushed, &outcome.receipts, &source.id().db_id);
            if !receipts.is_empty() {
                source.apply_receipts(&receipts).await?;
            }
        }
    }
    Ok(Moved {
        count,
        bytes,
        rejected,
        held,
    })
}

/// The records of `pushed` with the witness receipts of `receipts` copied on, for every receipt
/// that is new to the pushed record and whose signature verifies over it (spec §5.6): a receipt is
/// taken only for exactly the entry that was pushed, never on the target's word alone.
pub fn verified_receipts<'a>(
    pushed: impl IntoIterator<Item = &'a EntryMetadata>,
    receipts: &[EntryMetadata],
    db_id: &str,
) -> Vec<EntryMetadata> {
    let by_id: std::collections::HashMap<&str, &EntryMetadata> =
        pushed.into_iter().map(|m| (m.id.as_str(), m)).collect();
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
    let mut report = SyncReport {
        full_scan: true,
        scanned: new.len() as u64,
        ..SyncReport::default()
    };
    let batches = batches(&new.iter().collect::<Vec<_>>(), options);
    move_entries(source, target, batches, options, admission, &mut report).await?;
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

    #[test]
    fn batches_are_bounded_by_count_and_by_bytes() {
        let sized = |id: &str, size: u64| {
            let mut m = entry(id, "doc", &[], "doc_change", b"x").metadata;
            m.encrypted_size = size;
            m
        };
        let options = SyncOptions {
            batch_size: 3,
            batch_bytes: 100,
            max_in_flight: 1,
        };
        let ids = |b: Vec<Vec<String>>| b.into_iter().map(|b| b.join(",")).collect::<Vec<_>>();
        let small: Vec<EntryMetadata> = (0..7).map(|i| sized(&format!("s{i}"), 10)).collect();
        assert_eq!(
            ids(batches(&small.iter().collect::<Vec<_>>(), options)),
            ["s0,s1,s2", "s3,s4,s5", "s6"]
        );
        // 40 + 40 fit, a third 40 would pass 100; an entry over the budget travels alone.
        let mixed = [
            sized("a", 40),
            sized("b", 40),
            sized("c", 40),
            sized("big", 500),
            sized("d", 60),
            sized("e", 40),
        ];
        assert_eq!(
            ids(batches(&mixed.iter().collect::<Vec<_>>(), options)),
            ["a,b", "c", "big", "d,e"]
        );
        assert!(batches(&[], options).is_empty());
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
        fn admit(&self, entries: Vec<Entry>) -> Admitted {
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
            Admitted {
                accepted: good,
                rejected,
                held: Vec::new(),
            }
        }

        fn generation(&self) -> String {
            "fixed".into()
        }
    }

    /// Holds ids ending in 5 until it is told to trust their author (a directory update).
    struct TrustLater(std::sync::atomic::AtomicBool);
    impl Admission for TrustLater {
        fn admit(&self, entries: Vec<Entry>) -> Admitted {
            let trusted = self.0.load(std::sync::atomic::Ordering::Relaxed);
            let (held, accepted): (Vec<_>, Vec<_>) = entries
                .into_iter()
                .partition(|e| !trusted && e.metadata.id.ends_with('5'));
            Admitted {
                accepted,
                rejected: Vec::new(),
                held: held.into_iter().map(|e| e.metadata.id).collect(),
            }
        }

        fn generation(&self) -> String {
            self.0
                .load(std::sync::atomic::Ordering::Relaxed)
                .to_string()
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

    /// A source whose `get_entries` fails for any batch naming `poisoned` (an upstream going away
    /// mid-pass); everything else is the inner store.
    struct FailingSource {
        inner: MemoryStore,
        poisoned: String,
    }

    #[async_trait::async_trait]
    impl ContentAddressedStore for FailingSource {
        fn id(&self) -> &StoreId {
            self.inner.id()
        }
        async fn put_entries(&self, e: Vec<Entry>) -> Result<crate::store::PutSummary, StoreError> {
            self.inner.put_entries(e).await
        }
        async fn get_entries(&self, ids: &[String]) -> Result<Vec<Entry>, StoreError> {
            if ids.contains(&self.poisoned) {
                return Err(StoreError::Upstream {
                    upstream: "test".into(),
                    message: "connection reset".into(),
                    status: None,
                    transient: true,
                });
            }
            self.inner.get_entries(ids).await
        }
        async fn get_entry_metadata(&self, id: &str) -> Result<Option<EntryMetadata>, StoreError> {
            self.inner.get_entry_metadata(id).await
        }
        async fn has_entries(&self, ids: &[String]) -> Result<Vec<String>, StoreError> {
            self.inner.has_entries(ids).await
        }
        async fn scan_entries_since(
            &self,
            cursor: Option<&ScanCursor>,
            limit: usize,
            filters: &ScanFilters,
        ) -> Result<ScanPage, StoreError> {
            self.inner.scan_entries_since(cursor, limit, filters).await
        }
        async fn get_store_head(&self) -> Result<StoreHead, StoreError> {
            self.inner.get_store_head().await
        }
        async fn compaction_status(&self) -> Result<crate::wire::CompactionStatus, StoreError> {
            self.inner.compaction_status().await
        }
        async fn stats(&self) -> Result<crate::store::StoreStats, StoreError> {
            self.inner.stats().await
        }
        fn subscribe_changes(&self) -> broadcast::Receiver<crate::store::StoreChange> {
            self.inner.subscribe_changes()
        }
        async fn flush(&self) -> Result<(), StoreError> {
            self.inner.flush().await
        }
    }

    #[tokio::test]
    async fn a_failed_batch_leaves_the_cursor_after_the_last_page_stored_completely() {
        // Pages of 1000; batches of 100 with 3 in flight, so the scanner is well into the second
        // page (and may have sent the third) when its sixth batch fails.
        let source = FailingSource {
            inner: store(),
            poisoned: "a01550".into(),
        };
        source.inner.put_entries(entries("a", 2_500)).await.unwrap();
        let target = store();
        let options = SyncOptions {
            batch_size: 100,
            ..SyncOptions::default()
        };
        let mut state = SyncState::default();
        let mut saved = Vec::new();
        let mut hook = |s: &SyncState, _: &Progress| saved.push(s.position());
        let failed = transfer(&source, &target, &mut state, options, None, &mut hook).await;
        assert!(failed.is_err());
        assert_eq!(saved, vec![1_000], "only the first page ended stored");
        assert_eq!(state.position(), 1_000);
        let held: HashSet<String> = target.get_all_ids().await.unwrap().into_iter().collect();
        let first_page = source
            .inner
            .scan_entries_since(None, 1_000, &ScanFilters::default())
            .await
            .unwrap();
        assert!(first_page.entries.iter().all(|m| held.contains(&m.id)));

        // The next pass resumes at the saved cursor and completes.
        let resumed = pass(&source.inner, &target, &mut state).await;
        assert!(!resumed.full_scan);
        assert_eq!(resumed.scanned, 1_500);
        assert_eq!(target.get_all_ids().await.unwrap().len(), 2_500);
        assert_eq!(state.position(), 2_500);
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

    /// The cursor moves on past held entries but they are remembered with it (and survive a
    /// save/load of the state), are not retried while nothing changed, and are stored once the
    /// admission's generation changes.
    #[tokio::test]
    async fn held_entries_are_remembered_and_stored_when_the_directory_changes() {
        let (a, b) = (store(), store());
        a.put_entries(entries("a", 30)).await.unwrap();
        let admission = TrustLater(std::sync::atomic::AtomicBool::new(false));
        let mut state = SyncState::default();
        let mut hook = |_: &SyncState, _: &Progress| {};
        let options = SyncOptions::default();
        let report = transfer(&a, &b, &mut state, options, Some(&admission), &mut hook)
            .await
            .unwrap();
        assert_eq!(report.transferred, 27);
        assert_eq!(report.held, 3);
        assert!(report.rejected.is_empty(), "held is not refused");
        assert_eq!(report.lag, 0, "the cursor moved on");
        let mut held = state.held.clone();
        held.sort();
        assert!(held.iter().all(|id| id.ends_with('5')) && held.len() == 3);

        // Persisted and loaded again, as the sync service does between passes.
        let mut state: SyncState =
            serde_json::from_slice(&serde_json::to_vec(&state).unwrap()).unwrap();
        a.put_entries(entries("b", 2)).await.unwrap();
        let report = transfer(&a, &b, &mut state, options, Some(&admission), &mut hook)
            .await
            .unwrap();
        assert_eq!(
            report.transferred, 2,
            "only the new entries; nothing changed for the held"
        );
        assert_eq!(state.held.len(), 3);

        admission
            .0
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let report = transfer(&a, &b, &mut state, options, Some(&admission), &mut hook)
            .await
            .unwrap();
        assert_eq!(report.transferred, 3, "the held entries, retried");
        assert!(report.idle, "nothing new past the cursor");
        assert!(state.held.is_empty());
        assert_eq!(b.get_all_ids().await.unwrap().len(), 32);
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
