//! Link states and replication delay with real `syncrelay-node` processes on loopback (issue 18,
//! items 1 and 2): an origin, and a relay whose upstream is a small proxy in this test. The proxy
//! forwards every request to the origin, or, when told to, refuses every entry transfer
//! (`getEntries*`) while it keeps answering heads and scans: the relay is then behind, its upstream
//! answers, nothing moves — `stalled` in `/status` and `/metrics`; then it recovers to `current`;
//! and once the proxy is gone, `down`. The entries' delays (relay storage time − origin receipt
//! time) are checked against the histogram and the test's own clock.
//!
//! A second test takes the upstream away behind a gateway (the proxy answers 502 to everything)
//! while entries are written at the origin, then brings it back with slow entry transfers: the
//! link is never `current` while the relay still lacks those entries.

mod common;

use std::time::{Duration, Instant};

use common::cluster::Cluster;
use common::proxy::Proxy;
use common::{eventually, signed_entry, Client, DB};
use serde_json::Value;

/// How long a link may go without movement before it is stalled, in this test.
const STALL_AFTER_MS: u64 = 2_000;
const SYNC: &str = "sync: {intervalMs: 300, backoffBaseMs: 50, maxAttempts: 2, forwardTimeoutMs: 3000, requestTimeoutMs: 5000, stallAfterMs: 2000}\n";

/// The relay's one link in its `/status`.
async fn link(relay: &Client) -> Value {
    let r = relay.get("/status").await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["links"][0].clone()
}

/// A sample's value in the text exposition, by name and label set in any order (`None`: absent).
fn sample(text: &str, name: &str, labels: &str) -> Option<f64> {
    let mut want: Vec<&str> = labels.split(',').filter(|l| !l.is_empty()).collect();
    want.sort_unstable();
    text.lines().find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (metric, got) = match series.split_once('{') {
            Some((m, rest)) => (m, rest.strip_suffix('}')?),
            None => (series, ""),
        };
        let mut got: Vec<&str> = got.split(',').filter(|l| !l.is_empty()).collect();
        got.sort_unstable();
        (metric == name && got == want).then(|| value.parse().unwrap())
    })
}

async fn metrics(relay: &Client) -> String {
    relay.get("/metrics").await.text()
}

/// Polls the relay's link until `done` holds; fails after `within`.
async fn until_link(relay: &Client, within: Duration, what: &str, done: impl Fn(&Value) -> bool) {
    let deadline = Instant::now() + within;
    loop {
        let l = link(relay).await;
        if done(&l) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {l}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Entries the relay's pull passes have transferred from the link, once counted.
async fn pulled(relay: &Client) -> Option<f64> {
    sample(
        &metrics(relay).await,
        "syncrelay_sync_entries_total",
        r#"direction="pull",link="origin""#,
    )
}

fn state(l: &Value) -> &str {
    l["state"].as_str().unwrap_or("")
}

async fn relay_entries(relay: &Client) -> u64 {
    let r = relay.get("/status").await;
    r.json()["entries"].as_u64().unwrap_or(0)
}

/// An origin, and a relay carrying [`DB`] whose upstream is a [`Proxy`] to it; the relay's
/// client, and a client logged in to the origin as alice. Keep the cluster alive.
async fn origin_and_relay_behind_proxy() -> (Cluster, Proxy, Client, Client) {
    let mut c = Cluster::new(&["origin", "relay"]);
    c.configure(0, "role: origin\n");
    c.start(0);
    let proxy = Proxy::start(&c.url(0));
    c.configure_sync(
        1,
        SYNC,
        &format!(
            "role: relay\nupstreams: [{{name: origin, url: '{}'}}]\ndatabases: [{{tenant: vectors, db: {DB}}}]\n",
            proxy.url
        ),
    );
    c.start(1);
    let relay = c.client(1);
    let mut writer = c.client(0);
    writer.login("alice").await;
    (c, proxy, relay, writer)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_link_that_answers_but_moves_nothing_is_stalled_then_current_then_down() {
    let started = Instant::now();
    let (_c, mut proxy, relay, writer) = origin_and_relay_behind_proxy().await;

    // 1. Forwarding: 20 entries reach the relay; the link is current; every stored entry was
    //    timed, and no delay is below 0 or above the time this test has run.
    let first: Vec<_> = (0..20)
        .map(|n| signed_entry("alice", "doc-a", n, 256))
        .collect();
    writer.push(DB, &first).await;
    // The pass is over when its transfers are counted (entries are visible as they are stored).
    eventually("20 entries pulled by the relay", || async {
        pulled(&relay).await == Some(20.0)
    })
    .await;
    until_link(
        &relay,
        Duration::from_secs(20),
        "current with 20 pulled",
        |l| state(l) == "current" && l["lag"] == 0,
    )
    .await;
    assert_eq!(relay_entries(&relay).await, 20);
    let text = metrics(&relay).await;
    let pulled_total = sample(
        &text,
        "syncrelay_sync_entries_total",
        r#"direction="pull",link="origin""#,
    );
    let timed = sample(
        &text,
        "syncrelay_replication_delay_seconds_count",
        r#"link="origin""#,
    );
    assert_eq!(pulled_total, Some(20.0), "{text}");
    assert_eq!(timed, Some(20.0), "every pulled entry is timed: {text}");
    let sum = sample(
        &text,
        "syncrelay_replication_delay_seconds_sum",
        r#"link="origin""#,
    )
    .unwrap();
    let elapsed = started.elapsed().as_secs_f64();
    assert!(
        sum >= 0.0 && sum <= 20.0 * elapsed,
        "sum {sum}, {elapsed} s"
    );
    assert_eq!(
        sample(
            &text,
            "syncrelay_replication_clock_skew_total",
            r#"link="origin""#
        ),
        None,
        "one host, one clock: no negative delay"
    );
    let l = link(&relay).await;
    let delay = &l["delay"];
    assert_eq!(delay["samples"], 20, "{l}");
    let (p50, p99, max) = (
        delay["p50Seconds"].as_f64().unwrap(),
        delay["p99Seconds"].as_f64().unwrap(),
        delay["maxSeconds"].as_f64().unwrap(),
    );
    assert!(0.0 <= p50 && p50 <= p99 && p99 <= max, "{delay}");
    assert!(max <= started.elapsed().as_secs_f64(), "{delay}");
    println!("delay of 20 entries written at the origin, stored at the relay: {delay}");
    assert_eq!(
        sample(
            &text,
            "syncrelay_link_state",
            r#"link="origin",state="current""#
        ),
        Some(1.0)
    );

    // 2. Transfers refused: heads and scans still answered. The relay falls behind, nothing
    //    moves; `stalled` comes no sooner than stallAfterMs, and not much later.
    proxy.refuse_transfers(true);
    let second: Vec<_> = (0..10)
        .map(|n| signed_entry("alice", "doc-b", n, 256))
        .collect();
    let refused_from = Instant::now();
    writer.push(DB, &second).await;
    until_link(&relay, Duration::from_secs(5), "behind by 10", |l| {
        l["lag"] == 10
    })
    .await;
    until_link(&relay, Duration::from_secs(20), "stalled", |l| {
        state(l) == "stalled"
    })
    .await;
    let detected = refused_from.elapsed();
    assert!(
        detected >= Duration::from_millis(STALL_AFTER_MS),
        "stalled after {detected:?}, before stallAfterMs"
    );
    assert!(proxy.refused() > 0);
    println!(
        "stall detected {:.2} s after the transfers were refused (stallAfterMs {STALL_AFTER_MS})",
        detected.as_secs_f64()
    );
    let l = link(&relay).await;
    assert_eq!(l["lag"], 10, "{l}");
    assert!(
        l["stalledSeconds"].as_u64().unwrap() >= STALL_AFTER_MS / 1000,
        "{l}"
    );
    let reason = l["stateReason"].as_str().unwrap();
    assert!(
        reason.contains("10 entries behind") && reason.contains("refused"),
        "{reason}"
    );
    assert_eq!(relay_entries(&relay).await, 20, "nothing moved");
    let text = metrics(&relay).await;
    for (s, want) in [
        ("current", 0.0),
        ("catching-up", 0.0),
        ("stalled", 1.0),
        ("down", 0.0),
    ] {
        assert_eq!(
            sample(
                &text,
                "syncrelay_link_state",
                &format!(r#"link="origin",state="{s}""#)
            ),
            Some(want),
            "{s}"
        );
    }
    assert!(
        sample(&text, "syncrelay_link_stalled_seconds", r#"link="origin""#).unwrap()
            >= (STALL_AFTER_MS / 1000) as f64
    );

    // 3. Forwarding again: the 10 come through, the link is current, and their delays show the
    //    time they were held up.
    let stalled_for = refused_from.elapsed().as_secs_f64();
    proxy.refuse_transfers(false);
    eventually("30 entries pulled by the relay", || async {
        pulled(&relay).await == Some(30.0)
    })
    .await;
    until_link(&relay, Duration::from_secs(20), "current again", |l| {
        state(l) == "current" && l["lag"] == 0
    })
    .await;
    assert_eq!(relay_entries(&relay).await, 30);
    let text = metrics(&relay).await;
    assert_eq!(
        sample(
            &text,
            "syncrelay_sync_entries_total",
            r#"direction="pull",link="origin""#
        ),
        Some(30.0)
    );
    assert_eq!(
        sample(
            &text,
            "syncrelay_replication_delay_seconds_count",
            r#"link="origin""#
        ),
        Some(30.0)
    );
    let within_one_second = sample(
        &text,
        "syncrelay_replication_delay_seconds_bucket",
        r#"link="origin",le="1""#,
    )
    .unwrap();
    assert!(
        within_one_second <= 20.0,
        "the 10 held-up entries were {stalled_for:.1} s late, not under 1 s: {within_one_second}"
    );
    assert_eq!(
        sample(&text, "syncrelay_link_stalled_seconds", r#"link="origin""#),
        Some(0.0)
    );
    let l = link(&relay).await;
    let max = l["delay"]["maxSeconds"].as_f64().unwrap();
    println!(
        "delay after 10 entries were held up {stalled_for:.2} s: {}",
        l["delay"]
    );
    assert!(
        max >= (STALL_AFTER_MS / 1000) as f64 && max <= started.elapsed().as_secs_f64(),
        "{l}"
    );

    // 4. The upstream gone (nothing listens at its address any more): down, not stalled.
    proxy.stop();
    let gone_at = Instant::now();
    writer
        .push(DB, &[signed_entry("alice", "doc-c", 0, 256)])
        .await;
    until_link(&relay, Duration::from_secs(20), "down", |l| {
        state(l) == "down"
    })
    .await;
    println!(
        "down detected {:.2} s after the upstream went away",
        gone_at.elapsed().as_secs_f64()
    );
    let l = link(&relay).await;
    assert!(
        l["stateReason"]
            .as_str()
            .unwrap()
            .starts_with("unreachable"),
        "{l}"
    );
    let text = metrics(&relay).await;
    assert_eq!(
        sample(
            &text,
            "syncrelay_link_state",
            r#"link="origin",state="down""#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            "syncrelay_link_state",
            r#"link="origin",state="stalled""#
        ),
        Some(0.0)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_link_back_from_an_outage_is_not_current_until_the_missed_entries_arrived() {
    let (_c, proxy, relay, writer) = origin_and_relay_behind_proxy().await;

    // 1. In sync: 5 entries, the link current.
    let first: Vec<_> = (0..5)
        .map(|n| signed_entry("alice", "doc-a", n, 256))
        .collect();
    writer.push(DB, &first).await;
    eventually("5 entries at the relay", || async {
        relay_entries(&relay).await == 5
    })
    .await;
    until_link(&relay, Duration::from_secs(20), "current", |l| {
        state(l) == "current" && l["lag"] == 0
    })
    .await;

    // 2. The upstream gone behind its gateway; 10 entries written at the origin meanwhile.
    proxy.set_down(true);
    until_link(&relay, Duration::from_secs(20), "down", |l| {
        state(l) == "down"
    })
    .await;
    let second: Vec<_> = (0..10)
        .map(|n| signed_entry("alice", "doc-b", n, 256))
        .collect();
    writer.push(DB, &second).await;
    assert_eq!(relay_entries(&relay).await, 5);

    // 3. Back, with slow entry transfers: the pass that brings the 10 takes a while. Until they
    //    are all stored the link must not say `current` (the lag it knew before the outage was
    //    0, and a pass of another store finishing first proves nothing about this one).
    proxy.delay_transfers(Duration::from_millis(1_500));
    proxy.set_down(false);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    loop {
        // State first, then entries: entries only grow, so a `current` read before a count
        // under 15 was `current` while entries were missing.
        let l = link(&relay).await;
        let entries = relay_entries(&relay).await;
        let s = state(&l).to_string();
        if seen.last() != Some(&s) {
            seen.push(s.clone());
        }
        assert!(
            s != "current" || entries == 15,
            "current with {entries} of 15 entries: {l}"
        );
        if entries == 15 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the 10 missed entries did not arrive: {l}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Which states show in between depends on which store's pass ends first: not asserted.
    println!("states while catching up after the outage: {seen:?}");
    until_link(
        &relay,
        Duration::from_secs(20),
        "current after the catch-up",
        |l| state(l) == "current" && l["lag"] == 0,
    )
    .await;
}
