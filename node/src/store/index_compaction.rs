//! Index maintenance of the sled store, as pure functions: which runs of small batch keys merge into
//! one, what the merged id list is, and the figures `getCompactionStatus` reports.
//!
//! Every push writes its own scan-index key (`o first`) and per-document keys (`d doc first`), and
//! every applied witness receipt leaves an empty id (a tombstone) in its entry's old batch. Merging a
//! run of keys whose receiptOrders follow each other without a gap keeps every entry at its
//! receiptOrder (entry `i` of the key `first` has receiptOrder `first + i`), so scans, cursors and
//! receiptOrders read exactly as before; tombstones at either end of a merged run are dropped (the
//! key moves past leading ones). The sled store applies a merge as one atomic batch, so a crash at
//! any point leaves either the old keys or the merged one.

use std::time::Duration;

use crate::wire::CompactionStatus;

/// When the index is worth merging, after the reference store's thresholds (spec §7.3-§7.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactionThresholds {
    /// Merge once at least this many scan-index keys would disappear; ≤ 0 disables this trigger.
    pub min_keys: i64,
    /// Merge once the keys that would disappear hold at least this many bytes; ≤ 0 disables it.
    pub max_bytes: i64,
    /// Largest merged key, in receiptOrder positions.
    pub target_entries: u64,
}

impl Default for CompactionThresholds {
    fn default() -> Self {
        CompactionThresholds {
            min_keys: 32,
            max_bytes: 0,
            target_entries: 4096,
        }
    }
}

impl CompactionThresholds {
    pub fn enabled(&self) -> bool {
        self.min_keys > 0 || self.max_bytes > 0
    }
}

/// One scan-index key as the planner sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexKey {
    /// receiptOrder of its first position.
    pub first: u64,
    /// Positions it holds (tombstones included).
    pub positions: u64,
    /// Bytes of its value.
    pub bytes: u64,
}

/// The runs of keys to merge: index ranges into `keys` (sorted by `first`), each of at least two
/// keys whose receiptOrders follow each other without a gap, holding at most `target` positions.
pub fn plan_merges(keys: &[IndexKey], target: u64) -> Vec<std::ops::Range<usize>> {
    let mut runs = Vec::new();
    let mut start = 0;
    let mut positions = 0u64;
    for i in 0..keys.len() {
        let follows = i > start && keys[i - 1].first + keys[i - 1].positions == keys[i].first;
        if i > start && (!follows || positions + keys[i].positions > target) {
            if i - start >= 2 {
                runs.push(start..i);
            }
            start = i;
            positions = 0;
        }
        positions += keys[i].positions;
    }
    if keys.len() - start >= 2 {
        runs.push(start..keys.len());
    }
    runs
}

/// Whether merging `runs` is due: enough keys would disappear, or enough bytes.
pub fn due(keys: &[IndexKey], runs: &[std::ops::Range<usize>], t: &CompactionThresholds) -> bool {
    let removed: usize = runs.iter().map(|r| r.len() - 1).sum();
    let bytes: u64 = runs
        .iter()
        .flat_map(|r| keys[r.clone()].iter())
        .map(|k| k.bytes)
        .sum();
    (t.min_keys > 0 && removed as i64 >= t.min_keys)
        || (t.max_bytes > 0 && bytes as i64 >= t.max_bytes)
}

/// The merged list of consecutive id lists (each as `(first, ids)`, tombstones as empty ids): the
/// receiptOrder of its first live position and its ids from there to the last live one, or `None`
/// when every position is a tombstone.
pub fn merge_lists<'a>(lists: &[(u64, Vec<&'a str>)]) -> Option<(u64, Vec<&'a str>)> {
    let first = lists.first()?.0;
    let all: Vec<&str> = lists
        .iter()
        .flat_map(|(_, ids)| ids.iter().copied())
        .collect();
    let lead = all.iter().position(|id| !id.is_empty())?;
    let end = all.iter().rposition(|id| !id.is_empty())? + 1;
    Some((first + lead as u64, all[lead..end].to_vec()))
}

/// What one maintenance pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CompactionRun {
    /// Index keys that no longer exist (scan and document keys).
    pub removed_keys: u64,
    /// Bytes of the index values rewritten or removed.
    pub rewritten_bytes: u64,
    pub duration: Duration,
    pub finished_at_ms: i64,
}

/// Totals since the process started, as the reference keeps them.
#[derive(Debug, Clone, Default)]
pub struct CompactionFigures {
    total: CompactionRun,
    runs: u64,
    last: Option<CompactionRun>,
}

impl CompactionFigures {
    pub fn record(&mut self, run: CompactionRun) {
        self.runs += 1;
        self.total.removed_keys += run.removed_keys;
        self.total.rewritten_bytes += run.rewritten_bytes;
        self.total.duration += run.duration;
        self.last = Some(run);
    }

    /// The figures in the protocol's shape: index keys stand for the reference's segment files.
    pub fn status(&self, t: &CompactionThresholds) -> CompactionStatus {
        let last = self.last.unwrap_or_default();
        CompactionStatus {
            enabled: t.enabled(),
            compaction_min_files: t.min_keys,
            compaction_max_bytes: t.max_bytes,
            total_compactions: self.runs,
            total_compacted_files: self.total.removed_keys,
            total_compacted_bytes: self.total.rewritten_bytes,
            total_compaction_duration_ms: self.total.duration.as_millis() as u64,
            last_compaction_at: self.last.map(|r| r.finished_at_ms),
            last_compacted_files: last.removed_keys,
            last_compacted_bytes: last.rewritten_bytes,
            last_compaction_duration_ms: last.duration.as_millis() as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(first: u64, positions: u64) -> IndexKey {
        IndexKey {
            first,
            positions,
            bytes: positions * 10,
        }
    }

    #[test]
    fn runs_follow_receipt_orders_and_stop_at_gaps_and_the_target() {
        // 1..=3, 4..=5, 6 | gap | 10..=11, 12..=13 | 14..=113 alone (too large to join).
        let keys = [
            key(1, 3),
            key(4, 2),
            key(6, 1),
            key(10, 2),
            key(12, 2),
            key(14, 100),
        ];
        assert_eq!(plan_merges(&keys, 50), vec![0..3, 3..5]);
        // A target of 5 positions splits the first run after two keys; 6 stays alone.
        assert_eq!(plan_merges(&keys, 5), vec![0..2, 3..5]);
        assert!(plan_merges(&keys[5..], 50).is_empty());
        assert!(plan_merges(&[], 50).is_empty());
    }

    #[test]
    fn due_counts_keys_that_disappear_or_bytes() {
        let keys = [key(1, 1), key(2, 1), key(3, 1), key(4, 1)];
        let runs = plan_merges(&keys, 100);
        assert_eq!(runs, vec![0..4]);
        let by_keys = |n| CompactionThresholds {
            min_keys: n,
            max_bytes: 0,
            target_entries: 100,
        };
        assert!(due(&keys, &runs, &by_keys(3)));
        assert!(!due(&keys, &runs, &by_keys(4)));
        assert!(!due(&keys, &runs, &by_keys(0)));
        let by_bytes = CompactionThresholds {
            min_keys: 0,
            max_bytes: 40,
            target_entries: 100,
        };
        assert!(due(&keys, &runs, &by_bytes));
    }

    #[test]
    fn merged_lists_keep_positions_and_drop_tombstones_at_the_ends() {
        let lists = vec![
            (5, vec!["", "a"]),
            (7, vec!["b", ""]),
            (9, vec!["c", "", ""]),
        ];
        // a keeps receiptOrder 6, b 7, c 9; the tombstone at 8 stays, those at 5, 10 and 11 go.
        assert_eq!(merge_lists(&lists), Some((6, vec!["a", "b", "", "c"])));
        assert_eq!(merge_lists(&[(3, vec!["", ""]), (5, vec![""])]), None);
        assert_eq!(merge_lists(&[]), None);
    }

    #[test]
    fn figures_add_up_and_report_the_last_run() {
        let t = CompactionThresholds::default();
        let mut figures = CompactionFigures::default();
        assert_eq!(figures.status(&t).total_compactions, 0);
        assert_eq!(figures.status(&t).last_compaction_at, None);
        for (keys, ms) in [(10, 3), (4, 5)] {
            figures.record(CompactionRun {
                removed_keys: keys,
                rewritten_bytes: keys * 100,
                duration: Duration::from_millis(ms),
                finished_at_ms: 1000 + ms as i64,
            });
        }
        let s = figures.status(&t);
        assert!(s.enabled);
        assert_eq!(
            (
                s.total_compactions,
                s.total_compacted_files,
                s.total_compacted_bytes
            ),
            (2, 14, 1400)
        );
        assert_eq!(s.total_compaction_duration_ms, 8);
        assert_eq!(
            (s.last_compacted_files, s.last_compaction_at),
            (4, Some(1005))
        );
    }
}
