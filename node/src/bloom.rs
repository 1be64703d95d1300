//! bloom-v1 id summaries, byte-for-byte as the reference builds them (spec §4.6).
//!
//! Hashes run over UTF-16 code units (what JavaScript strings are made of), and bit indexes use exact
//! 64-bit arithmetic, so summaries built here equal the reference's for every id, ASCII or not.

use serde::{Deserialize, Serialize};

use crate::wire::b64;

pub const VERSION: &str = "bloom-v1";
pub const SALT: &str = "mindoodb-bloom-v1";
/// Default false-positive target.
pub const FALSE_POSITIVE_RATE: f64 = 0.01;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BloomSummary {
    pub version: String,
    pub total_ids: u64,
    pub bit_count: u64,
    pub hash_count: u32,
    pub salt: String,
    pub bitset_base64: String,
}

/// `(bitCount, hashCount)` for `n` ids at false-positive rate `p`.
pub fn shape(n: usize, p: f64) -> (u64, u32) {
    if n == 0 {
        return (64, 2);
    }
    let ln2 = std::f64::consts::LN_2;
    let nf = n as f64;
    let bits = (-nf * p.ln() / (ln2 * ln2)).ceil().max(64.0);
    let hashes = ((bits / nf) * ln2 + 0.5).floor().max(1.0);
    (bits as u64, hashes as u32)
}

fn fnv1a(units: impl Iterator<Item = u16>) -> u32 {
    units.fold(0x811C_9DC5u32, |h, u| {
        (h ^ u as u32).wrapping_mul(0x0100_0193)
    })
}

fn djb2(units: impl Iterator<Item = u16>) -> u32 {
    units.fold(5381u32, |h, u| h.wrapping_mul(33).wrapping_add(u as u32))
}

/// `(h1, h2)` of an id under `salt`.
pub fn hashes(id: &str, salt: &str) -> (u32, u32) {
    let h1 = fnv1a(
        salt.encode_utf16()
            .chain([b':' as u16])
            .chain(id.encode_utf16()),
    );
    let h2 = djb2(
        id.encode_utf16()
            .chain([b':' as u16])
            .chain(salt.encode_utf16()),
    );
    (h1, if h2 == 0 { 1 } else { h2 })
}

fn indexes(h1: u32, h2: u32, bit_count: u64, hash_count: u32) -> impl Iterator<Item = u64> {
    (0..hash_count as u64).map(move |i| (h1 as u64 + i * h2 as u64) % bit_count)
}

/// Incrementally built bitset with a fixed shape.
#[derive(Debug, Clone)]
pub struct BloomBuilder {
    bits: Vec<u8>,
    bit_count: u64,
    hash_count: u32,
    total: u64,
}

impl BloomBuilder {
    /// A builder shaped for `expected` ids.
    pub fn with_capacity(expected: usize) -> Self {
        let (bit_count, hash_count) = shape(expected, FALSE_POSITIVE_RATE);
        BloomBuilder {
            bits: vec![0; bit_count.div_ceil(8) as usize],
            bit_count,
            hash_count,
            total: 0,
        }
    }

    pub fn insert(&mut self, id: &str) {
        let (h1, h2) = hashes(id, SALT);
        for index in indexes(h1, h2, self.bit_count, self.hash_count) {
            self.bits[(index / 8) as usize] |= 1 << (index % 8);
        }
        self.total += 1;
    }

    pub fn summary(&self) -> BloomSummary {
        BloomSummary {
            version: VERSION.to_string(),
            total_ids: self.total,
            bit_count: self.bit_count,
            hash_count: self.hash_count,
            salt: SALT.to_string(),
            bitset_base64: b64::encode(&self.bits),
        }
    }
}

/// The summary of exactly these ids.
pub fn build<'a>(ids: impl ExactSizeIterator<Item = &'a str>) -> BloomSummary {
    let mut builder = BloomBuilder::with_capacity(ids.len());
    ids.for_each(|id| builder.insert(id));
    builder.summary()
}

/// A decoded summary for membership tests.
pub struct BloomTester {
    bits: Option<Vec<u8>>,
    bit_count: u64,
    hash_count: u32,
    salt: String,
}

impl BloomTester {
    /// A summary of an unknown version or with a malformed bitset answers "maybe present" for every id.
    pub fn new(summary: &BloomSummary) -> Self {
        let bits = (summary.version == VERSION && summary.bit_count > 0)
            .then(|| b64::decode(&summary.bitset_base64).ok())
            .flatten()
            .filter(|b| b.len() as u64 * 8 >= summary.bit_count);
        BloomTester {
            bits,
            bit_count: summary.bit_count,
            hash_count: summary.hash_count,
            salt: summary.salt.clone(),
        }
    }

    pub fn might_contain(&self, id: &str) -> bool {
        let Some(bits) = &self.bits else { return true };
        let (h1, h2) = hashes(id, &self.salt);
        indexes(h1, h2, self.bit_count, self.hash_count)
            .all(|index| bits[(index / 8) as usize] & (1 << (index % 8)) != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata;
    use sha2::{Digest, Sha256};

    fn ids(v: &serde_json::Value) -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn spec_table() {
        let s = build(std::iter::empty());
        assert_eq!(
            (s.bit_count, s.hash_count, s.bitset_base64.as_str()),
            (64, 2, "AAAAAAAAAAA=")
        );
        let s = build(["a"].into_iter());
        assert_eq!(
            (s.bit_count, s.hash_count, s.bitset_base64.as_str()),
            (64, 44, "VVVVVVVVVVU=")
        );
        let s = build(["a", "b", "c"].into_iter());
        assert_eq!(
            (s.bit_count, s.hash_count, s.bitset_base64.as_str()),
            (64, 15, "JXUBXVkD18E=")
        );
        let s = build(["doc1_d_0_abc"].into_iter());
        assert_eq!(s.bitset_base64, "nud5z/M873k=");
        let many: Vec<String> = (0..1000).map(|i| format!("id-{i}")).collect();
        let s = build(many.iter().map(String::as_str));
        assert_eq!((s.bit_count, s.hash_count), (9586, 7));
        let bits = b64::decode(&s.bitset_base64).unwrap();
        assert_eq!(bits.len(), 1199);
        assert_eq!(
            hex::encode(Sha256::digest(&bits)),
            "5c1a309572a9d35b5f2d41e11b709d466500b225967b49b1e6ef4ce16d9377b2"
        );
        assert_eq!(shape(100_000, FALSE_POSITIVE_RATE), (958_506, 7));
    }

    #[test]
    fn spec_example_hashes_and_indexes() {
        let doc = testdata::load("bloom-v1.json");
        let ex = &doc["specExample"];
        let (h1, h2) = hashes(ex["id"].as_str().unwrap(), ex["salt"].as_str().unwrap());
        assert_eq!(h1 as u64, ex["h1"].as_u64().unwrap());
        assert_eq!(h2 as u64, ex["h2"].as_u64().unwrap());
        let got: Vec<u64> = indexes(
            h1,
            h2,
            ex["bitCount"].as_u64().unwrap(),
            ex["hashCount"].as_u64().unwrap() as u32,
        )
        .collect();
        let want: Vec<u64> = ex["indexes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn vector_sets_byte_for_byte_and_membership() {
        let doc = testdata::load("bloom-v1.json");
        for set in doc["sets"].as_array().unwrap() {
            let name = set["name"].as_str().unwrap();
            let members = ids(&set["ids"]);
            let built = build(members.iter().map(String::as_str));
            let expected: BloomSummary = serde_json::from_value(set["summary"].clone()).unwrap();
            assert_eq!(built, expected, "{name}");
            let tester = BloomTester::new(&expected);
            for id in ids(&set["mustTestPresent"]) {
                assert!(tester.might_contain(&id), "{name}: {id}");
            }
            for probe in set["probesNotInSet"].as_array().unwrap() {
                let id = probe["id"].as_str().unwrap();
                assert_eq!(
                    tester.might_contain(id),
                    probe["mightContain"].as_bool().unwrap(),
                    "{name}: probe {id}"
                );
            }
            if let Some(fp) = set.get("falsePositiveExample").and_then(|f| f.get("id")) {
                assert!(
                    tester.might_contain(fp.as_str().unwrap()),
                    "{name}: false positive"
                );
            }
        }
        let unknown = &doc["unknownVersionSummary"];
        let summary: BloomSummary = serde_json::from_value(unknown["summary"].clone()).unwrap();
        assert!(BloomTester::new(&summary).might_contain(unknown["anyId"].as_str().unwrap()));
    }
}
