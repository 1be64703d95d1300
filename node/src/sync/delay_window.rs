//! Quantiles of replication delays over the last few minutes, in bounded memory. Pure.
//!
//! The window is a ring of time slots (say 30 of 10 s); each slot counts delays in log-spaced
//! buckets, four per doubling (a bucket's upper bound is 2^(1/4) ≈ 1.19 times its lower one), from
//! 1 ms to about 40 days (larger delays land in the last bucket). A quantile is the upper bound of
//! the bucket it falls in, capped by the largest delay seen in the window: it overstates by at most
//! 19 %, never understates. Memory is `slots × 128` counters whatever the rate.

/// Buckets per slot: 0 holds 0 ms; bucket b ≥ 1 holds delays d with `b - 1 ≤ 4·log2(d) < b`.
const BUCKETS: usize = 128;

#[derive(Debug, Clone)]
struct Slot {
    /// `now / slot_ms` of the slot's time span; `None` while unused.
    epoch: Option<i64>,
    counts: [u32; BUCKETS],
    samples: u64,
    max_ms: u64,
    /// Delays that came out negative (the receiver's clock behind the origin's), clamped to 0.
    skewed: u64,
}

impl Default for Slot {
    fn default() -> Self {
        Slot {
            epoch: None,
            counts: [0; BUCKETS],
            samples: 0,
            max_ms: 0,
            skewed: 0,
        }
    }
}

/// What the window holds now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DelaySummary {
    pub samples: u64,
    pub p50_ms: u64,
    pub p99_ms: u64,
    pub max_ms: u64,
    /// Negative delays clamped to 0, within the window.
    pub skewed: u64,
}

#[derive(Debug, Clone)]
pub struct DelayWindow {
    slot_ms: i64,
    slots: Vec<Slot>,
}

fn bucket(delay_ms: u64) -> usize {
    if delay_ms == 0 {
        return 0;
    }
    let b = 1 + (4.0 * (delay_ms as f64).log2()).floor() as usize;
    b.min(BUCKETS - 1)
}

/// The smallest delay (ms, rounded up) above every delay of bucket `b`.
fn upper_bound(b: usize) -> u64 {
    if b == 0 {
        0
    } else {
        2f64.powf(b as f64 / 4.0).ceil() as u64
    }
}

impl DelayWindow {
    /// A window of `slots` slots of `slot_ms` each (e.g. 30 × 10 s = the last 5 minutes).
    pub fn new(slot_ms: i64, slots: usize) -> Self {
        DelayWindow {
            slot_ms: slot_ms.max(1),
            slots: vec![Slot::default(); slots.max(1)],
        }
    }

    /// The window's length.
    pub fn span_ms(&self) -> i64 {
        self.slot_ms * self.slots.len() as i64
    }

    fn epoch(&self, now_ms: i64) -> i64 {
        now_ms.div_euclid(self.slot_ms)
    }

    /// Records a delay of `delay_ms` observed at `now_ms`; a negative delay counts as 0 and as
    /// skewed. Returns whether it was negative.
    pub fn record(&mut self, now_ms: i64, delay_ms: i64) -> bool {
        let epoch = self.epoch(now_ms);
        let n = self.slots.len() as i64;
        let slot = &mut self.slots[epoch.rem_euclid(n) as usize];
        if slot.epoch != Some(epoch) {
            *slot = Slot {
                epoch: Some(epoch),
                ..Slot::default()
            };
        }
        let skewed = delay_ms < 0;
        let d = delay_ms.max(0) as u64;
        let b = bucket(d);
        slot.counts[b] = slot.counts[b].saturating_add(1);
        slot.samples += 1;
        slot.max_ms = slot.max_ms.max(d);
        slot.skewed += u64::from(skewed);
        skewed
    }

    /// Quantiles over the slots within the window ending at `now_ms`; `None` without samples.
    pub fn summary(&self, now_ms: i64) -> Option<DelaySummary> {
        let now = self.epoch(now_ms);
        let n = self.slots.len() as i64;
        let live = self
            .slots
            .iter()
            .filter(|s| s.epoch.is_some_and(|e| e <= now && e > now - n));
        let mut counts = [0u64; BUCKETS];
        let (mut samples, mut max_ms, mut skewed) = (0u64, 0u64, 0u64);
        for s in live {
            for (total, c) in counts.iter_mut().zip(s.counts.iter()) {
                *total += u64::from(*c);
            }
            samples += s.samples;
            max_ms = max_ms.max(s.max_ms);
            skewed += s.skewed;
        }
        if samples == 0 {
            return None;
        }
        let quantile = |q: f64| {
            let rank = ((q * samples as f64).ceil() as u64).clamp(1, samples);
            let mut seen = 0;
            for (b, c) in counts.iter().enumerate() {
                seen += c;
                if seen >= rank {
                    return upper_bound(b).min(max_ms);
                }
            }
            max_ms
        };
        Some(DelaySummary {
            samples,
            p50_ms: quantile(0.5),
            p99_ms: quantile(0.99),
            max_ms,
            skewed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window() -> DelayWindow {
        DelayWindow::new(10_000, 30)
    }

    #[test]
    fn empty_window_has_no_summary() {
        assert_eq!(window().summary(1_000), None);
    }

    #[test]
    fn quantiles_are_within_one_bucket_above_the_exact_ones() {
        let mut w = window();
        // 1..=1000 ms: exact p50 = 500, p99 = 990.
        for d in 1..=1000 {
            w.record(5_000, d);
        }
        let s = w.summary(5_000).unwrap();
        assert_eq!(s.samples, 1000);
        assert_eq!(s.max_ms, 1000);
        assert!((500..=595).contains(&s.p50_ms), "{s:?}");
        assert!((990..=1000).contains(&s.p99_ms), "capped by the max: {s:?}");
    }

    #[test]
    fn every_bucket_bound_is_above_its_members_and_at_most_19_percent_over() {
        for d in [1u64, 2, 3, 7, 100, 999, 65_432, 3_600_000] {
            let ub = upper_bound(bucket(d));
            assert!(ub >= d, "{d} → {ub}");
            assert!((ub as f64) <= (d as f64) * 1.19 + 1.0, "{d} → {ub}");
        }
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn negative_delays_clamp_to_zero_and_are_counted() {
        let mut w = window();
        assert!(w.record(1_000, -250));
        assert!(!w.record(1_000, 0));
        let s = w.summary(1_000).unwrap();
        assert_eq!((s.samples, s.skewed, s.p99_ms, s.max_ms), (2, 1, 0, 0));
    }

    #[test]
    fn old_slots_leave_the_window_and_are_reused() {
        let mut w = window();
        w.record(0, 60_000); // a minute late, at t = 0
        for t in 0..10 {
            w.record(250_000 + t, 20);
        }
        let s = w.summary(299_999).unwrap();
        assert_eq!(s.samples, 11, "both inside the 5 minutes");
        assert_eq!(s.max_ms, 60_000);
        let later = w.summary(300_000).unwrap();
        assert_eq!(later.samples, 10, "the slot of t = 0 has left the window");
        assert_eq!(later.max_ms, 20);
        // The same ring position, 30 slots later: reset, not added to.
        w.record(300_000, 5);
        let s = w.summary(300_000).unwrap();
        assert_eq!((s.samples, s.max_ms), (11, 20));
        assert_eq!(w.summary(1_000_000), None, "everything aged out");
    }

    #[test]
    fn a_clock_stepping_back_does_not_count_future_slots() {
        let mut w = window();
        w.record(100_000, 7);
        assert_eq!(w.summary(50_000), None);
        assert_eq!(w.span_ms(), 300_000);
    }
}
