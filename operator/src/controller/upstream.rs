//! The `UpstreamConnected` condition of a SyncNode from the node's own `/status`, and the Event
//! that announces its changes. Pure.
//!
//! - `False`, reason `Stalled`: a link the node syncs with is reachable but nothing moves while
//!   the node is behind (the node's `stalled` state) — replication silently stopped.
//! - `False`, reason `Unreachable`: no link answers.
//! - `True`, reason `Connected`: at least one link answers and none is stalled (links that are
//!   down are named in the message: a failover standby may be).
//!
//! An Event is published when the condition's status or reason changes — a Warning on the way
//! into `Stalled` or `Unreachable`, a Normal one on recovery — never on a reconcile that finds
//! the same.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use syncrelay_node::config::Role;
use syncrelay_node::status::{LinkKind, LinkState, LinkStatus, NodeStatus};

use super::conditions::{Want, UPSTREAM_CONNECTED};

pub const STALLED: &str = "Stalled";
pub const UNREACHABLE: &str = "Unreachable";
pub const CONNECTED: &str = "Connected";

/// A link's state, for nodes that report one; older nodes only say whether the last request
/// succeeded.
fn state(link: &LinkStatus) -> LinkState {
    link.state.unwrap_or(if link.connected {
        LinkState::Current
    } else {
        LinkState::Down
    })
}

/// The condition for a node of `role` with `has_upstreams` declared, from its report (`None`:
/// no answer from `status_url`).
pub fn condition(
    role: Role,
    has_upstreams: bool,
    report: Option<&NodeStatus>,
    status_url: &str,
) -> Want<'static> {
    let want = |status, reason, message| Want {
        type_: UPSTREAM_CONNECTED,
        status,
        reason,
        message,
    };
    if role == Role::Origin && !has_upstreams {
        return want(true, "NoUpstream", "an origin has no upstream".into());
    }
    let Some(report) = report else {
        return want(false, "NoStatus", format!("no answer from {status_url}"));
    };
    // The links that feed this node: its upstreams, or (a peer) its peers.
    let upstreams: Vec<&LinkStatus> = report
        .links
        .iter()
        .filter(|l| l.kind == LinkKind::Upstream)
        .collect();
    let links = if upstreams.is_empty() {
        report.links.iter().collect()
    } else {
        upstreams
    };
    let describe = |l: &LinkStatus| match &l.state_reason {
        Some(reason) => format!("{}: {reason}", l.name),
        None => format!(
            "{}: {}",
            l.name,
            l.last_error.as_deref().unwrap_or("not connected")
        ),
    };
    let stalled: Vec<String> = links
        .iter()
        .filter(|l| state(l) == LinkState::Stalled)
        .map(|l| describe(l))
        .collect();
    if !stalled.is_empty() {
        return want(false, STALLED, format!("stalled: {}", stalled.join("; ")));
    }
    let (down, up): (Vec<&&LinkStatus>, Vec<&&LinkStatus>) =
        links.iter().partition(|l| state(l) == LinkState::Down);
    if up.is_empty() {
        let message = if down.is_empty() {
            "the node reports no link".to_string()
        } else {
            down.iter()
                .map(|l| describe(l))
                .collect::<Vec<_>>()
                .join("; ")
        };
        return want(false, UNREACHABLE, message);
    }
    let mut message = format!(
        "connected to {}",
        up.iter()
            .map(|l| format!("{} ({})", l.name, state(l).as_str()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if !down.is_empty() {
        message.push_str(&format!(
            "; down: {}",
            down.iter()
                .map(|l| describe(l))
                .collect::<Vec<_>>()
                .join("; ")
        ));
    }
    want(true, CONNECTED, message)
}

/// An Event to publish about a condition change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announcement {
    pub warning: bool,
    pub reason: String,
    pub note: String,
}

/// The Event for going from the `UpstreamConnected` condition in `old` to `new`: `None` when
/// status and reason are unchanged (so a reconcile that finds the same publishes nothing), and
/// when nothing was known before and all is well.
pub fn transition(old: &[Condition], new: &Want<'_>) -> Option<Announcement> {
    let previous = old.iter().find(|c| c.type_ == UPSTREAM_CONNECTED);
    let new_status = if new.status { "True" } else { "False" };
    if previous.is_some_and(|p| p.status == new_status && p.reason == new.reason) {
        return None;
    }
    match new.reason {
        STALLED | UNREACHABLE => Some(Announcement {
            warning: true,
            reason: format!("Upstream{}", new.reason),
            note: new.message.clone(),
        }),
        CONNECTED if previous.is_some_and(|p| p.reason == STALLED || p.reason == UNREACHABLE) => {
            Some(Announcement {
                warning: false,
                reason: "UpstreamRecovered".into(),
                note: new.message.clone(),
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn link(name: &str, state: Option<LinkState>, connected: bool) -> LinkStatus {
        LinkStatus {
            name: name.into(),
            url: format!("http://{name}"),
            kind: LinkKind::Upstream,
            connected,
            node_id: None,
            last_success_at: None,
            seconds_since_success: None,
            last_error: (!connected).then(|| "connection refused".into()),
            cycle: false,
            lag: 0,
            state,
            state_reason: state.map(|s| format!("why {}", s.as_str())),
            state_since: None,
            stalled_seconds: 0,
            delay: None,
        }
    }

    fn report(links: Vec<LinkStatus>) -> NodeStatus {
        serde_json::from_value(serde_json::json!({
            "nodeId": "n", "name": "relay", "role": "relay", "version": "0", "chain": [],
            "ready": true, "links": links, "stores": [], "entries": 0, "maxLag": 0,
            "queuedWrites": 0,
        }))
        .unwrap()
    }

    fn decide(links: Vec<LinkStatus>) -> (bool, &'static str, String) {
        let w = condition(Role::Relay, true, Some(&report(links)), "u");
        (w.status, w.reason, w.message)
    }

    #[test]
    fn a_stalled_link_makes_the_condition_false_even_beside_a_current_one() {
        let (ok, reason, message) = decide(vec![
            link("a", Some(LinkState::Current), true),
            link("b", Some(LinkState::Stalled), false),
        ]);
        assert_eq!((ok, reason), (false, STALLED));
        assert!(message.contains("b: why stalled"), "{message}");
    }

    #[test]
    fn every_link_down_is_unreachable_and_one_up_is_connected() {
        let (ok, reason, message) = decide(vec![
            link("a", Some(LinkState::Down), false),
            link("b", Some(LinkState::Down), false),
        ]);
        assert_eq!((ok, reason), (false, UNREACHABLE));
        assert!(message.contains("a: why down") && message.contains("b: why down"));
        let (ok, reason, message) = decide(vec![
            link("a", Some(LinkState::CatchingUp), true),
            link("b", Some(LinkState::Down), false),
        ]);
        assert_eq!((ok, reason), (true, CONNECTED));
        assert!(message.contains("a (catching-up)") && message.contains("down: b"));
    }

    #[test]
    fn nodes_without_link_states_are_judged_by_their_last_request() {
        assert_eq!(decide(vec![link("a", None, false)]).1, UNREACHABLE);
        assert_eq!(decide(vec![link("a", None, true)]).1, CONNECTED);
    }

    #[test]
    fn origins_and_silent_nodes() {
        assert!(condition(Role::Origin, false, None, "u").status);
        let w = condition(Role::Relay, true, None, "http://x/status");
        assert_eq!((w.status, w.reason), (false, "NoStatus"));
    }

    fn merged(w: &Want<'_>) -> Vec<Condition> {
        super::super::conditions::merge(
            &[],
            vec![Want {
                type_: w.type_,
                status: w.status,
                reason: w.reason,
                message: w.message.clone(),
            }],
            Some(1),
            &Time("2026-01-01T00:00:00Z".parse().unwrap()),
        )
    }

    #[test]
    fn one_event_per_transition_not_per_reconcile() {
        let ok = condition(
            Role::Relay,
            true,
            Some(&report(vec![link("a", Some(LinkState::Current), true)])),
            "u",
        );
        let stalled = condition(
            Role::Relay,
            true,
            Some(&report(vec![link("a", Some(LinkState::Stalled), true)])),
            "u",
        );
        let down = condition(
            Role::Relay,
            true,
            Some(&report(vec![link("a", Some(LinkState::Down), false)])),
            "u",
        );
        assert_eq!(transition(&[], &ok), None, "a healthy start is not news");
        let into = transition(&merged(&ok), &stalled).unwrap();
        assert!(into.warning);
        assert_eq!(into.reason, "UpstreamStalled");
        assert_eq!(
            transition(&merged(&stalled), &stalled),
            None,
            "same again: quiet"
        );
        let next = transition(&merged(&stalled), &down).unwrap();
        assert_eq!(
            (next.warning, next.reason.as_str()),
            (true, "UpstreamUnreachable")
        );
        let back = transition(&merged(&down), &ok).unwrap();
        assert_eq!(
            (back.warning, back.reason.as_str()),
            (false, "UpstreamRecovered")
        );
        assert_eq!(transition(&merged(&ok), &ok), None);
        assert!(
            transition(&[], &stalled).unwrap().warning,
            "stalled from the start"
        );
    }
}
