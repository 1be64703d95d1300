//! The on-disk store's readers (`store::disk_store::fuzz_hooks`): `record_parts`, which finds
//! a stored record's metadata JSON and inline payload, and `decode_id_list`, which reads a
//! batch-index value (each id = one length byte ‖ its bytes). Both read whatever is in the database
//! file, so a damaged file must give `None`, never a panic or a range outside the value.
//!
//! Input: `selector` (1 byte) ‖ rest. The rest is read as a raw record and as a raw id list, and
//! also built into well-formed values (an inline and a shared record, an id list) from which the
//! readers must recover what was written.
#![no_main]

use libfuzzer_sys::fuzz_target;
use syncrelay_node::store::disk_store::fuzz_hooks::{decode_id_list, record_parts};

fn check_record(raw: &[u8]) -> Option<(std::ops::Range<usize>, Option<std::ops::Range<usize>>)> {
    let (json, payload) = record_parts(raw)?;
    assert!(
        json.start <= json.end && json.end <= raw.len(),
        "json {json:?} outside {} bytes",
        raw.len()
    );
    assert!(
        json.start == 8 || json.start == 12,
        "json at {}",
        json.start
    );
    assert_eq!(raw[json.start], b'{', "metadata JSON starts with an object");
    match &payload {
        Some(payload) => {
            assert_eq!(json.start, 12);
            assert_eq!(payload.start, json.end);
            assert_eq!(payload.end, raw.len());
            let len = u32::from_be_bytes(raw[8..12].try_into().unwrap()) as usize;
            assert_eq!(json.len(), len);
        }
        None => {
            assert_eq!(json.start, 8);
            assert_eq!(json.end, raw.len());
        }
    }
    Some((json, payload))
}

fn encode_ids(ids: &[&str]) -> Vec<u8> {
    let mut out = Vec::new();
    for id in ids {
        out.push(id.len() as u8);
        out.extend_from_slice(id.as_bytes());
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };

    // Raw values, as a damaged file may hold them.
    check_record(rest);
    if let Some(ids) = decode_id_list(rest) {
        assert_eq!(encode_ids(&ids), rest, "an id list re-encodes to itself");
    }

    // Well-formed values built from the input: receiptOrder ‖ …, metadata JSON starting with `{`.
    let ro = (selector as u64).wrapping_mul(0x0101_0101_0101_0101);
    let split = if rest.is_empty() {
        0
    } else {
        selector as usize % (rest.len() + 1)
    };
    let (json_tail, payload) = rest.split_at(split);
    let json = [b"{".as_slice(), json_tail].concat();
    // Inline: ro ‖ u32be json length ‖ json ‖ payload.
    let mut inline = ro.to_be_bytes().to_vec();
    inline.extend_from_slice(&(json.len() as u32).to_be_bytes());
    inline.extend_from_slice(&json);
    inline.extend_from_slice(payload);
    let (j, p) = check_record(&inline).expect("an inline record reads");
    assert_eq!(&inline[j], json.as_slice());
    assert_eq!(&inline[p.expect("inline has a payload")], payload);
    // Shared: ro ‖ json (at least `{}` long, as every stored JSON object is).
    if json.len() >= 2 {
        let shared = [&ro.to_be_bytes()[..], &json].concat();
        let (j, p) = check_record(&shared).expect("a shared record reads");
        assert_eq!(&shared[j], json.as_slice());
        assert!(p.is_none());
    }
    // An id list of ids cut from the input (each at most 255 bytes, UTF-8).
    let text = String::from_utf8_lossy(rest);
    let ids: Vec<&str> = text
        .split(|c: char| c == ',' || c.is_ascii_whitespace())
        .filter(|id| id.len() <= 255)
        .collect();
    let encoded = encode_ids(&ids);
    assert_eq!(decode_id_list(&encoded), Some(ids), "an id list reads back");
});
