//! Binary entry framing of `getEntriesBinary` / `putEntriesBinary` (spec §4.10): the whole-body
//! decoder `wire::framing::decode`, the chunked one `decode_chunks` (as a connection delivers the
//! body), and `split_iv` on each frame's metadata.
//!
//! Input layout: `n` (one byte, `n % 8` cuts) ‖ `n` cut positions (u16 LE each, taken modulo the
//! body's length + 1, so empty and repeated chunks happen) ‖ the body. The seeds (`seed.py`) write
//! the reference bodies this way.
//!
//! Invariants: both decoders agree on success, on the error and on every block; a decoded body
//! re-encodes with `FrameWriter` to the same bytes (the framing has exactly one encoding); the IV
//! split out of a frame's metadata and spliced back in splits out again.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use syncrelay_node::wire::framing::{decode, decode_chunks, frame_size, split_iv, with_iv};

fn chunks(body: &[u8], cuts: &mut [usize]) -> Vec<Bytes> {
    cuts.sort_unstable();
    let mut out = Vec::with_capacity(cuts.len() + 1);
    let mut at = 0;
    for &cut in cuts.iter().chain([body.len()].iter()) {
        out.push(Bytes::copy_from_slice(&body[at..cut]));
        at = cut;
    }
    out
}

fn check_split_iv(meta: &[u8]) {
    let Ok((iv, rest)) = split_iv(meta) else {
        return;
    };
    // Only an object is spliced back (split_iv does not validate the rest of a metadata text).
    let Ok(object) = serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&rest)
    else {
        return;
    };
    let framed = with_iv(&iv, &rest);
    let (iv2, rest2) = split_iv(&framed).unwrap_or_else(|e| {
        panic!(
            "with_iv output does not split: {e}: {}",
            String::from_utf8_lossy(&framed)
        )
    });
    assert_eq!(iv2, iv, "iv changed");
    let object2: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&rest2).expect("the rest stays an object");
    assert_eq!(object2, object, "metadata changed");
}

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = (n % 8) as usize;
    if rest.len() < 2 * n {
        return;
    }
    let (cut_bytes, body) = rest.split_at(2 * n);
    let mut cuts: Vec<usize> = cut_bytes
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]) as usize % (body.len() + 1))
        .collect();

    let whole = decode(body);
    let chunked = decode_chunks(chunks(body, &mut cuts));
    match (&whole, &chunked) {
        (Ok(whole), Ok(chunked)) => {
            assert_eq!(chunked.header.as_ref(), whole.header);
            assert_eq!(chunked.frames.len(), whole.frames.len());
            for ((m1, p1), (m2, p2)) in chunked.frames.iter().zip(&whole.frames) {
                assert_eq!(m1.as_ref(), *m2);
                assert_eq!(p1.as_ref(), *p2);
            }
        }
        (Err(a), Err(b)) => assert_eq!(a, b, "the decoders refuse differently"),
        _ => panic!(
            "the decoders disagree: whole {:?}, chunked {:?}",
            whole.as_ref().map(|_| ()),
            chunked.as_ref().map(|_| ())
        ),
    }

    let Ok(framed) = whole else { return };
    // Every block lies inside the body, in order, and the body re-encodes to itself.
    let mut writer = syncrelay_node::wire::framing::FrameWriter::new(framed.header, body.len());
    let mut size = 4 + framed.header.len();
    for (meta, payload) in &framed.frames {
        writer.push(meta, payload);
        size += frame_size(meta.len(), payload.len());
        check_split_iv(meta);
    }
    assert_eq!(size, body.len());
    assert_eq!(
        writer.finish(),
        body,
        "the body does not re-encode to itself"
    );
    // A body cut anywhere before its end but after a whole frame is still well-formed or refused,
    // never a panic (what a client sees when a connection drops).
    let _ = decode(&body[..body.len() / 2]);
});
