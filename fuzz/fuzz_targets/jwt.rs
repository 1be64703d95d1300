//! Bearer tokens (`auth::verify_token`, HS256 JWTs, spec §2.4–2.5) from arbitrary text.
//!
//! Input: `mode` (1 byte) ‖ `now` (i64 LE, seconds) ‖ rest. Modes:
//! - 0: the rest is the token, as text (a forgery attempt);
//! - 1: the rest is `header JSON ‖ 0xFF ‖ claims JSON`, base64url-encoded and signed here with the
//!   key (so the fuzzer reaches the header and claims parsing behind a valid MAC);
//! - 2: the rest is the token, its last `.` segment replaced by the key's MAC of what precedes it.
//!
//! Invariants: a token that verifies carries the key's HMAC-SHA-256 of its signing input (nothing
//! else is ever accepted), names HS256, is not expired at `now`, does not verify under another key,
//! and its claims re-signed with `auth::sign_token` verify to the same claims.
#![no_main]

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, URL_SAFE_NO_PAD};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use libfuzzer_sys::fuzz_target;
use sha2::Sha256;
use syncrelay_node::auth::{sign_token, verify_token};

const KEY: &[u8] = b"fuzz-token-key-0123456789abcdef!";
const OTHER_KEY: &[u8] = b"fuzz-token-key-0123456789abcdef?";

/// Any base64url a JWT library could read: padding optional, trailing bits allowed.
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

fn mac(input: &str) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(KEY).expect("HMAC takes any key");
    mac.update(input.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

fn token(mode: u8, rest: &[u8]) -> Option<String> {
    Some(match mode % 3 {
        0 => std::str::from_utf8(rest).ok()?.to_string(),
        1 => {
            let split = rest.iter().position(|&b| b == 0xFF)?;
            let (header, claims) = (&rest[..split], &rest[split + 1..]);
            let input = format!(
                "{}.{}",
                URL_SAFE_NO_PAD.encode(header),
                URL_SAFE_NO_PAD.encode(claims)
            );
            let sig = URL_SAFE_NO_PAD.encode(mac(&input));
            format!("{input}.{sig}")
        }
        _ => {
            let text = std::str::from_utf8(rest).ok()?;
            let input = text.rsplit_once('.').map_or(text, |(input, _)| input);
            let sig = URL_SAFE_NO_PAD.encode(mac(input));
            format!("{input}.{sig}")
        }
    })
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 9 {
        return;
    }
    let mode = data[0];
    let now = i64::from_le_bytes(data[1..9].try_into().unwrap());
    let Some(token) = token(mode, &data[9..]) else {
        return;
    };
    let Some(claims) = verify_token(&token, KEY, now) else {
        return;
    };

    // Accepted: it must be signed with the key.
    let (input, sig) = token
        .rsplit_once('.')
        .expect("an accepted token has a signature segment");
    let sig = LENIENT
        .decode(sig)
        .unwrap_or_else(|e| panic!("accepted a signature that is not base64url ({e}): {token}"));
    assert_eq!(
        sig,
        mac(input),
        "accepted a token not signed with the key: {token}"
    );
    let (header, _) = input
        .split_once('.')
        .expect("an accepted token has a header segment");
    let header: serde_json::Value = serde_json::from_slice(
        &LENIENT
            .decode(header)
            .expect("an accepted header is base64url"),
    )
    .expect("an accepted header is JSON");
    assert_eq!(
        header["alg"], "HS256",
        "accepted another algorithm: {token}"
    );
    assert!(claims.exp >= now, "accepted an expired token");
    assert!(
        verify_token(&token, OTHER_KEY, now).is_none(),
        "a token verifies under two keys: {token}"
    );

    // The claims re-signed verify to themselves.
    let resigned = sign_token(&claims, KEY);
    assert_eq!(verify_token(&resigned, KEY, now), Some(claims.clone()));
    assert!(verify_token(&resigned, OTHER_KEY, now).is_none());
});
