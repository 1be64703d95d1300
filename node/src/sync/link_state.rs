//! The state of one link as an on-call engineer asks about it: `current`, `catching-up`,
//! `stalled` or `down`, with the reason and since when. Pure: [`LinkTracker`] folds observations
//! (one per sync pass or upstream probe, each with its time) and answers for any `now`;
//! [`classify`] does the same for a whole history.
//!
//! - `down`: the last observation found the upstream unreachable (no HTTP answer, or a gateway
//!   error from in front of it).
//! - `current`: reachable, and a pass made since it last became reachable found nothing past
//!   the cursors (lag 0). Only an observation that carries a lag says so.
//! - `catching-up`: reachable, behind — or its lag not known yet — and it moved (entries stored,
//!   or the lag shrank) within the last `stall_after`.
//! - `stalled`: reachable and behind (or lag unknown), and nothing moved for `stall_after` —
//!   counted from the latest of: the last movement, the moment it fell behind, the moment it
//!   became reachable again (an outage is `down`, not `stalled`).
//!
//! The lag is forgotten whenever the link becomes reachable (first observation, or the end of an
//! outage): entries written upstream meanwhile are missing until a pass learns the new lag, so
//! the lag learned before does not make it `current`. A link that answers but never learns a lag
//! (say, it refuses this node's login, or its first pass is still running) counts as behind: it
//! is not current, and it stalls if nothing moves.

use crate::status::LinkState;

/// What one sync pass (or probe) of a link found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observation {
    /// No answer from the upstream (connection refused, timeout, gateway error).
    Unreachable { error: String },
    /// The upstream answered.
    Reachable {
        /// Entries past this node's cursors over the link's stores, when known.
        lag: Option<u64>,
        /// Entries were stored, or the lag shrank, since the previous observation.
        moved: bool,
        /// Why the pass failed although the upstream answered (e.g. every transfer refused).
        error: Option<String>,
    },
}

/// A link's state at one moment, with the reason and the figures behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkVerdict {
    pub state: LinkState,
    pub reason: String,
    /// Since when (ms) the link has been in this state.
    pub since_ms: Option<i64>,
    /// Milliseconds without movement while reachable and behind (0 unless stalled).
    pub stalled_ms: i64,
}

/// The fold of a link's observations: a few numbers, whatever the history's length.
#[derive(Debug, Clone, Default)]
pub struct LinkTracker {
    observed: bool,
    reachable: bool,
    /// When the current run of reachable / unreachable observations began.
    reachability_since_ms: i64,
    lag: Option<u64>,
    /// When the link last went from not-behind to behind...
    behind_since_ms: Option<i64>,
    /// ...and from behind to not-behind.
    caught_up_ms: Option<i64>,
    last_moved_ms: Option<i64>,
    last_error: Option<String>,
    /// The state last reported, and since when (for `since_ms`).
    reported: Option<(LinkState, i64)>,
}

impl LinkTracker {
    /// Takes one observation made at `now_ms`.
    pub fn observe(&mut self, now_ms: i64, observation: Observation) {
        match observation {
            Observation::Unreachable { error } => {
                if !self.observed || self.reachable {
                    self.reachability_since_ms = now_ms;
                }
                self.reachable = false;
                self.last_error = Some(error);
            }
            Observation::Reachable { lag, moved, error } => {
                if !self.observed || !self.reachable {
                    self.reachability_since_ms = now_ms;
                    // What was missed while it was away is unknown until a pass says.
                    self.lag = None;
                }
                self.reachable = true;
                if lag.is_some() {
                    self.lag = lag;
                }
                let behind = self.lag != Some(0);
                match (behind, self.behind_since_ms) {
                    (true, None) => self.behind_since_ms = Some(now_ms),
                    (false, Some(_)) => {
                        self.behind_since_ms = None;
                        self.caught_up_ms = Some(now_ms);
                    }
                    _ => {}
                }
                if moved {
                    self.last_moved_ms = Some(now_ms);
                }
                self.last_error = error;
            }
        }
        self.observed = true;
    }

    /// The state at `now_ms`, `stall_after_ms` being how long a reachable link that is behind may
    /// go without movement before it counts as stalled.
    pub fn verdict(&self, now_ms: i64, stall_after_ms: i64) -> LinkVerdict {
        let (state, reason, stalled_ms) = self.judge(now_ms, stall_after_ms);
        let since_ms = match (&self.reported, state) {
            _ if !self.observed => None,
            (Some((s, t)), _) if *s == state => Some(*t),
            _ => Some(self.entered_at(state, stall_after_ms)),
        };
        LinkVerdict {
            state,
            reason,
            since_ms,
            stalled_ms,
        }
    }

    /// Like [`verdict`](Self::verdict), and remembers the state so that the next answer keeps its
    /// `since_ms` while the state holds.
    pub fn report(&mut self, now_ms: i64, stall_after_ms: i64) -> LinkVerdict {
        let verdict = self.verdict(now_ms, stall_after_ms);
        if let Some(since) = verdict.since_ms {
            self.reported = Some((verdict.state, since));
        }
        verdict
    }

    /// The moment of the last movement, or of falling behind, or of becoming reachable: the
    /// latest of them starts the clock of a stall.
    fn quiet_since(&self) -> i64 {
        [
            self.last_moved_ms,
            self.behind_since_ms,
            Some(self.reachability_since_ms),
        ]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(self.reachability_since_ms)
    }

    fn entered_at(&self, state: LinkState, stall_after_ms: i64) -> i64 {
        match state {
            LinkState::Down => self.reachability_since_ms,
            LinkState::Stalled => self.quiet_since() + stall_after_ms,
            LinkState::CatchingUp => self
                .behind_since_ms
                .unwrap_or(self.reachability_since_ms)
                .max(self.reachability_since_ms),
            LinkState::Current => self
                .caught_up_ms
                .unwrap_or(self.reachability_since_ms)
                .max(self.reachability_since_ms),
        }
    }

    fn judge(&self, now_ms: i64, stall_after_ms: i64) -> (LinkState, String, i64) {
        if !self.observed {
            return (LinkState::CatchingUp, "not synced with yet".into(), 0);
        }
        let error = self.last_error.as_deref();
        if !self.reachable {
            return (
                LinkState::Down,
                format!("unreachable: {}", error.unwrap_or("no answer")),
                0,
            );
        }
        if self.behind_since_ms.is_none() {
            return (LinkState::Current, "nothing to pull".into(), 0);
        }
        let lag = match self.lag {
            Some(l) => format!("{l} entries behind"),
            None => "behind (lag unknown until a pass completes)".into(),
        };
        let quiet = now_ms.saturating_sub(self.quiet_since()).max(0);
        let why = error
            .map(|e| format!("; last error: {e}"))
            .unwrap_or_default();
        if quiet >= stall_after_ms {
            (
                LinkState::Stalled,
                format!(
                    "{lag}, upstream reachable, nothing moved for {}s{why}",
                    quiet / 1000
                ),
                quiet,
            )
        } else {
            (LinkState::CatchingUp, format!("{lag}, moving{why}"), 0)
        }
    }
}

/// The state after `history` (times in ms, in order) at `now_ms`.
pub fn classify(history: &[(i64, Observation)], now_ms: i64, stall_after_ms: i64) -> LinkVerdict {
    let mut tracker = LinkTracker::default();
    for (at, observation) in history {
        tracker.observe(*at, observation.clone());
    }
    tracker.verdict(now_ms, stall_after_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STALL: i64 = 5 * 60_000;

    fn up(lag: u64, moved: bool) -> Observation {
        Observation::Reachable {
            lag: Some(lag),
            moved,
            error: None,
        }
    }

    fn failing(lag: Option<u64>) -> Observation {
        Observation::Reachable {
            lag,
            moved: false,
            error: Some("HTTP 503: transfers refused".into()),
        }
    }

    fn gone() -> Observation {
        Observation::Unreachable {
            error: "connection refused".into(),
        }
    }

    #[test]
    fn nothing_observed_is_not_claimed_current() {
        let v = classify(&[], 1_000, STALL);
        assert_eq!(v.state, LinkState::CatchingUp);
        assert_eq!(v.since_ms, None);
    }

    #[test]
    fn caught_up_is_current() {
        let v = classify(&[(0, up(10, true)), (1_000, up(0, true))], 900_000, STALL);
        assert_eq!(v.state, LinkState::Current);
        assert_eq!(v.stalled_ms, 0);
    }

    #[test]
    fn behind_and_moving_is_catching_up_however_long() {
        // Lag stays high (new writes keep coming) but entries are stored every pass.
        let history: Vec<_> = (0..100).map(|i| (i * 10_000, up(5_000, true))).collect();
        let v = classify(&history, 990_000 + 1_000, STALL);
        assert_eq!(v.state, LinkState::CatchingUp, "{v:?}");
    }

    #[test]
    fn behind_without_movement_stalls_after_the_threshold_and_not_before() {
        let history = vec![
            (0, up(100, false)),
            (60_000, failing(None)),
            (120_000, failing(Some(100))),
        ];
        let before = classify(&history, STALL - 1, STALL);
        assert_eq!(before.state, LinkState::CatchingUp, "{before:?}");
        let at = classify(&history, STALL, STALL);
        assert_eq!(at.state, LinkState::Stalled, "{at:?}");
        assert_eq!(at.stalled_ms, STALL);
        assert!(at.reason.contains("100 entries behind"), "{}", at.reason);
        assert!(
            at.reason.contains("503"),
            "the last error is the reason: {}",
            at.reason
        );
        assert_eq!(at.since_ms, Some(STALL));
    }

    #[test]
    fn movement_restarts_the_stall_clock() {
        let history = vec![
            (0, up(100, false)),
            (200_000, up(90, true)),
            (400_000, up(90, false)),
        ];
        assert_eq!(
            classify(&history, 499_999, STALL).state,
            LinkState::CatchingUp
        );
        assert_eq!(classify(&history, 500_000, STALL).state, LinkState::Stalled);
    }

    #[test]
    fn stalled_recovers_to_current() {
        let mut t = LinkTracker::default();
        t.observe(0, failing(Some(50)));
        assert_eq!(t.report(STALL + 1, STALL).state, LinkState::Stalled);
        t.observe(STALL + 2, up(0, true));
        let v = t.report(STALL + 3, STALL);
        assert_eq!(v.state, LinkState::Current);
        assert_eq!(v.stalled_ms, 0);
    }

    #[test]
    fn unreachable_is_down_not_stalled_and_the_outage_does_not_count_towards_a_stall() {
        let history = vec![(0, up(100, false)), (10_000, gone())];
        let v = classify(&history, 3 * STALL, STALL);
        assert_eq!(v.state, LinkState::Down);
        assert!(v.reason.contains("connection refused"), "{}", v.reason);
        assert_eq!(v.since_ms, Some(10_000));
        // Back, still behind, not moving: the stall clock starts when it came back.
        let mut back = history.clone();
        back.push((3 * STALL, up(100, false)));
        assert_eq!(
            classify(&back, 3 * STALL + STALL - 1, STALL).state,
            LinkState::CatchingUp
        );
        assert_eq!(classify(&back, 4 * STALL, STALL).state, LinkState::Stalled);
    }

    #[test]
    fn answering_but_failing_blind_counts_as_behind() {
        // Never learned a lag (say the login is refused): not current, and it stalls.
        let v = classify(&[(0, failing(None))], STALL, STALL);
        assert_eq!(v.state, LinkState::Stalled);
        assert!(v.reason.contains("lag unknown"), "{}", v.reason);
    }

    #[test]
    fn since_holds_while_the_state_holds() {
        let mut t = LinkTracker::default();
        t.observe(1_000, up(0, false));
        let first = t.report(2_000, STALL);
        t.observe(3_000, up(0, false));
        let later = t.report(50_000, STALL);
        assert_eq!(first.state, LinkState::Current);
        assert_eq!(later.since_ms, first.since_ms);
        t.observe(60_000, gone());
        assert_eq!(t.report(61_000, STALL).since_ms, Some(60_000));
    }

    fn moving_blind() -> Observation {
        // A page of a pass stored: movement, no lag yet (the pass has not finished).
        Observation::Reachable {
            lag: None,
            moved: true,
            error: None,
        }
    }

    #[test]
    fn a_first_pass_still_running_is_catching_up_not_current() {
        let mut t = LinkTracker::default();
        t.observe(1_000, moving_blind());
        let v = t.report(1_500, STALL);
        assert_eq!(v.state, LinkState::CatchingUp, "{v:?}");
        assert!(v.reason.contains("lag unknown"), "{}", v.reason);
        // Still no lag learned and nothing moving: it stalls, never turns current.
        assert_eq!(t.report(1_000 + STALL, STALL).state, LinkState::Stalled);
        t.observe(1_000 + STALL + 1, up(0, true));
        assert_eq!(t.report(1_000 + STALL + 2, STALL).state, LinkState::Current);
    }

    #[test]
    fn back_from_an_outage_the_old_lag_does_not_make_it_current() {
        let mut t = LinkTracker::default();
        t.observe(0, up(0, false));
        assert_eq!(t.report(1, STALL).state, LinkState::Current);
        t.observe(10_000, gone());
        assert_eq!(t.report(10_001, STALL).state, LinkState::Down);
        // Reachable again: a page of the catch-up pass is stored, the pass is not over.
        t.observe(20_000, moving_blind());
        let v = t.report(20_001, STALL);
        assert_eq!(v.state, LinkState::CatchingUp, "{v:?}");
        assert_eq!(v.since_ms, Some(20_000));
        // The pass ends: what it found decides.
        t.observe(21_000, up(7, true));
        assert_eq!(t.report(21_001, STALL).state, LinkState::CatchingUp);
        t.observe(22_000, up(0, true));
        let v = t.report(22_001, STALL);
        assert_eq!(v.state, LinkState::Current, "{v:?}");
        assert_eq!(v.since_ms, Some(22_000));
    }

    #[test]
    fn an_observation_without_a_lag_keeps_the_lag_learned_while_reachable() {
        // Movement reported mid-pass after a pass found lag 0 (no outage between): still current.
        let mut t = LinkTracker::default();
        t.observe(0, up(0, false));
        t.observe(1_000, moving_blind());
        assert_eq!(t.report(1_001, STALL).state, LinkState::Current);
    }
}
