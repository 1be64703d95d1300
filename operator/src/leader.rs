//! Leader election through a `coordination.k8s.io/v1` Lease, so that two operator replicas can run:
//! only the holder reconciles (the others requeue). The holder renews every `RENEW`; a Lease not
//! renewed for `DURATION` may be taken over. Updates use the Lease's resourceVersion, so two
//! contenders cannot both win.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, ObjectMeta, PostParams};
use kube::Client;

pub const LEASE_NAME: &str = "syncrelay-operator";
const DURATION: Duration = Duration::from_secs(15);
const RENEW: Duration = Duration::from_secs(2);

/// Whether `lease` is free for `me` at `now`: no holder, held by me, or expired.
pub fn can_take(lease: &LeaseSpec, me: &str, now: Timestamp) -> bool {
    match lease.holder_identity.as_deref() {
        None | Some("") => true,
        Some(holder) if holder == me => true,
        Some(_) => {
            let duration = lease
                .lease_duration_seconds
                .unwrap_or(DURATION.as_secs() as i32);
            match &lease.renew_time {
                Some(MicroTime(renewed)) => {
                    *renewed + SignedDuration::from_secs(duration as i64) < now
                }
                None => true,
            }
        }
    }
}

fn spec_for(me: &str, old: Option<&LeaseSpec>, now: Timestamp) -> LeaseSpec {
    let taking_over = old.and_then(|o| o.holder_identity.as_deref()) != Some(me);
    let transitions = old.and_then(|o| o.lease_transitions).unwrap_or(0);
    LeaseSpec {
        holder_identity: Some(me.into()),
        lease_duration_seconds: Some(DURATION.as_secs() as i32),
        acquire_time: if taking_over {
            Some(MicroTime(now))
        } else {
            old.and_then(|o| o.acquire_time.clone())
        },
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(if taking_over && old.is_some() {
            transitions + 1
        } else {
            transitions
        }),
        ..LeaseSpec::default()
    }
}

/// One round: try to acquire or renew; returns whether this replica holds the Lease.
async fn round(api: &Api<Lease>, me: &str) -> Result<bool, kube::Error> {
    let now = Timestamp::now();
    match api.get_opt(LEASE_NAME).await? {
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(LEASE_NAME.into()),
                    ..ObjectMeta::default()
                },
                spec: Some(spec_for(me, None, now)),
            };
            match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
        Some(mut lease) => {
            let spec = lease.spec.clone().unwrap_or_default();
            if !can_take(&spec, me, now) {
                return Ok(false);
            }
            lease.spec = Some(spec_for(me, Some(&spec), now));
            // resourceVersion from the read: a concurrent update makes this a 409.
            match api
                .replace(LEASE_NAME, &PostParams::default(), &lease)
                .await
            {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
    }
}

/// Keeps `flag` equal to "this replica holds the Lease" until the task is dropped.
pub async fn run(client: Client, namespace: String, me: String, flag: Arc<AtomicBool>) {
    let api: Api<Lease> = Api::namespaced(client, &namespace);
    loop {
        let held = match round(&api, &me).await {
            Ok(held) => held,
            Err(e) => {
                tracing::warn!(error = %e, "leader election round failed");
                false
            }
        };
        if held != flag.swap(held, Ordering::SeqCst) {
            if held {
                tracing::info!(%me, "acquired the leader Lease");
            } else {
                tracing::info!(%me, "not the leader");
            }
        }
        tokio::time::sleep(RENEW).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_is_taken_only_when_free_mine_or_expired() {
        let now: Timestamp = "2026-01-01T00:01:00Z".parse().unwrap();
        let held = |by: &str, secs_ago: i64| LeaseSpec {
            holder_identity: Some(by.into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(now - SignedDuration::from_secs(secs_ago))),
            ..LeaseSpec::default()
        };
        assert!(can_take(&LeaseSpec::default(), "a", now));
        assert!(can_take(&held("a", 5), "a", now));
        assert!(!can_take(&held("b", 5), "a", now));
        assert!(can_take(&held("b", 16), "a", now));
        let taken = spec_for("a", Some(&held("b", 16)), now);
        assert_eq!(taken.lease_transitions, Some(1));
        assert_eq!(taken.holder_identity.as_deref(), Some("a"));
    }
}
