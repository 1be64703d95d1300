//! JSON bodies a node reads from its upstream when it syncs as a client (relay, edge cache,
//! passthrough): the response types of `node/src/wire/mod.rs`, the unparsed page shape a relay
//! checks before passing bytes on, SSE change events, and the bloom summary it tests ids against.
//!
//! Invariants: whatever parses re-serialises and parses again to the same JSON; a page accepted as
//! a `ScanPage` is accepted by `ScanPageShape` with the same counts; a bloom summary from outside
//! never panics a membership test and its cost is bounded by what the summary says.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde::Serialize;
use syncrelay_node::bloom::{self, BloomTester};
use syncrelay_node::wire;

fn check<T: DeserializeOwned + Serialize>(data: &[u8]) -> Option<T> {
    let value = serde_json::from_slice::<T>(data).ok()?;
    let text = serde_json::to_vec(&value).expect("a parsed body serialises");
    let again: T = serde_json::from_slice(&text).unwrap_or_else(|e| {
        panic!(
            "own serialisation does not parse: {e}: {}",
            String::from_utf8_lossy(&text)
        )
    });
    let text2 = serde_json::to_vec(&again).unwrap();
    assert!(
        same_json(&text2, &text),
        "serialisation is not stable: {} / {}",
        String::from_utf8_lossy(&text),
        String::from_utf8_lossy(&text2)
    );
    Some(value)
}

/// Membership tests cost one pass over at most `hashCount` bit positions: cap what the fuzzer may
/// ask for so that a large `hashCount` does not read as a hang (it is bounded by the summary, which
/// the upstream chose).
const MAX_HASHES_TESTED: u32 = 1 << 16;

fn bloom(summary: &bloom::BloomSummary) {
    if summary.hash_count > MAX_HASHES_TESTED {
        return;
    }
    let tester = BloomTester::new(summary);
    for id in ["", "a", "6b054a3bf2ec2041e4760b53_d_0_x", "\u{1F600}"] {
        let _ = tester.might_contain(id);
    }
}

/// JSON texts equal but for floats a few ULPs apart: serde_json's default float parsing is not
/// exact (no `float_roundtrip` feature), so `2.2222222222222983e20` re-parses one ULP off
/// (fuzz/artifacts-found/wire_requests-float-round-trip). Harmless in these bodies (numeric
/// parameters); `entry_metadata` keeps the strict check, where it matters.
fn same_json(a: &[u8], b: &[u8]) -> bool {
    fn same(a: &serde_json::Value, b: &serde_json::Value) -> bool {
        use serde_json::Value::*;
        match (a, b) {
            (Number(x), Number(y)) if x.is_f64() && y.is_f64() => {
                let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
                x == y || (x.to_bits() as i64 - y.to_bits() as i64).abs() <= 4
            }
            (Array(x), Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y)),
            (Object(x), Object(y)) => {
                x.len() == y.len() && x.iter().zip(y).all(|((k, x), (l, y))| k == l && same(x, y))
            }
            _ => a == b,
        }
    }
    a == b
        || match (
            serde_json::from_slice::<serde_json::Value>(a),
            serde_json::from_slice::<serde_json::Value>(b),
        ) {
            (Ok(x), Ok(y)) => same(&x, &y),
            _ => false,
        }
}

fuzz_target!(|data: &[u8]| {
    let _ = check::<wire::ErrorBody>(data);
    let _ = check::<wire::ChallengeResponse>(data);
    let _ = check::<wire::AuthenticateResponse>(data);
    let _ = check::<wire::CapabilitiesResponse>(data);
    let _ = check::<wire::StoreHeadResponse>(data);
    if let Some(r) = check::<wire::BloomResponse>(data) {
        bloom(&r.summary);
    }
    if let Some(s) = check::<bloom::BloomSummary>(data) {
        bloom(&s);
    }
    let _ = check::<wire::IdsResponse>(data);
    let _ = check::<wire::EntriesResponse>(data);
    let _ = check::<wire::MetadataResponse>(data);
    let _ = check::<wire::CompactionResponse>(data);
    let _ = check::<wire::ClassicEntriesResponse>(data);
    let _ = check::<wire::SessionEntriesResponse>(data);
    let _ = check::<wire::BinaryGetHeader>(data);
    let _ = check::<wire::PutEntriesResponse>(data);
    let _ = check::<wire::ServerInfo>(data);
    let _ = check::<wire::ChangeEventData>(data);
    let page = check::<wire::ScanPage>(data);
    let shape = serde_json::from_slice::<wire::ScanPageShape>(data).ok();
    if let Some(page) = &page {
        let shape = shape.as_ref().expect("a ScanPage has the ScanPageShape");
        assert_eq!(shape.entries.len(), page.entries.len());
        assert_eq!(shape.has_more, page.has_more);
        assert_eq!(shape.next_cursor, page.next_cursor);
        // The page a relay assembles from the serialised entries is the typed page.
        let parts: Vec<Vec<u8>> = page
            .entries
            .iter()
            .map(|m| serde_json::to_vec(m).unwrap())
            .collect();
        let assembled = wire::scan_page_json(
            parts.iter().map(Vec::as_slice),
            page.next_cursor.as_ref(),
            page.has_more,
        );
        assert_eq!(assembled, serde_json::to_vec(page).unwrap());
    }
});
