//! Status conditions in the cert-manager shape: `observedGeneration` on each, and the transition time
//! kept while the status does not change (so that an unchanged status is byte-for-byte unchanged and
//! is not written again).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

pub const READY: &str = "Ready";
pub const PROGRESSING: &str = "Progressing";
pub const DEGRADED: &str = "Degraded";
pub const UPSTREAM_CONNECTED: &str = "UpstreamConnected";

/// A condition to set: type, status, reason, message.
pub struct Want<'a> {
    pub type_: &'a str,
    pub status: bool,
    pub reason: &'a str,
    pub message: String,
}

/// The new condition list: each wanted condition, keeping `lastTransitionTime` from `old` when the
/// status did not flip.
pub fn merge(
    old: &[Condition],
    wanted: Vec<Want<'_>>,
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    wanted
        .into_iter()
        .map(|w| {
            let status = if w.status { "True" } else { "False" }.to_string();
            let previous = old.iter().find(|c| c.type_ == w.type_);
            let last_transition_time = match previous {
                Some(p) if p.status == status => p.last_transition_time.clone(),
                _ => now.clone(),
            };
            Condition {
                type_: w.type_.to_string(),
                status,
                reason: w.reason.to_string(),
                // The API server refuses an empty message (it is serialised as null).
                message: if w.message.is_empty() {
                    "-".into()
                } else {
                    w.message
                },
                observed_generation: generation,
                last_transition_time,
            }
        })
        .collect()
}

/// The conditions of an object that cannot be reconciled: each listed type False except
/// `Degraded`, which is True, all with the same reason and message (in the listed order).
pub fn failing<'a>(types: &[&'a str], reason: &'a str, message: &str) -> Vec<Want<'a>> {
    types
        .iter()
        .map(|type_| Want {
            type_,
            status: *type_ == DEGRADED,
            reason,
            message: message.to_string(),
        })
        .collect()
}

/// The message of the condition of `type_`, if there is one.
pub fn message<'c>(conditions: &'c [Condition], type_: &str) -> Option<&'c str> {
    conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.message.as_str())
}

/// Whether a condition of `type_` is True.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    conditions
        .iter()
        .any(|c| c.type_ == type_ && c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn time(s: &str) -> Time {
        Time(s.parse().unwrap())
    }

    #[test]
    fn transition_time_moves_only_when_the_status_flips() {
        let t0 = time("2026-01-01T00:00:00Z");
        let t1 = time("2026-01-01T00:05:00Z");
        let first = merge(
            &[],
            vec![Want {
                type_: READY,
                status: false,
                reason: "Starting",
                message: "x".into(),
            }],
            Some(1),
            &t0,
        );
        let same = merge(
            &first,
            vec![Want {
                type_: READY,
                status: false,
                reason: "Starting",
                message: "x".into(),
            }],
            Some(1),
            &t1,
        );
        assert_eq!(
            same, first,
            "unchanged status: identical conditions, nothing to write"
        );
        let flipped = merge(
            &same,
            vec![Want {
                type_: READY,
                status: true,
                reason: "Ready",
                message: "y".into(),
            }],
            Some(2),
            &t1,
        );
        assert_eq!(flipped[0].last_transition_time, t1);
        assert_eq!(flipped[0].observed_generation, Some(2));
        assert!(is_true(&flipped, READY));
    }

    #[test]
    fn failing_sets_only_degraded_true_in_the_listed_order() {
        let wanted = failing(&[READY, DEGRADED, UPSTREAM_CONNECTED], "Broken", "why");
        let got: Vec<(&str, bool, &str)> = wanted
            .iter()
            .map(|w| (w.type_, w.status, w.message.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (READY, false, "why"),
                (DEGRADED, true, "why"),
                (UPSTREAM_CONNECTED, false, "why")
            ]
        );
        let merged = merge(
            &[],
            wanted,
            Some(3),
            &Time("2026-01-01T00:00:00Z".parse().unwrap()),
        );
        assert_eq!(message(&merged, DEGRADED), Some("why"));
        assert_eq!(message(&merged, PROGRESSING), None);
    }
}
