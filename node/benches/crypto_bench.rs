//! The per-entry cryptography of ingest and serving, the candidate implementations side by side in
//! one run (ratios matter; absolute figures drift on a shared machine). It is the measurement behind
//! the choice of implementation in `crypto::keys::FastSigner` and `crypto::transport::AesKey`.
//! Run: `cargo bench -p syncrelay-node --bench crypto_bench`.

use std::hint::black_box;
use std::time::Instant;

use aws_lc_rs::signature;
use ed25519_dalek::{Signer, SigningKey};
use syncrelay_node::crypto::keys::FastSigner;
use syncrelay_node::crypto::transport::{aes_encrypt, AesKey};

const N: usize = 20_000;

/// Microseconds per call of `f` over `N` calls.
fn per_call(mut f: impl FnMut(usize)) -> f64 {
    let started = Instant::now();
    for i in 0..N {
        f(i);
    }
    started.elapsed().as_secs_f64() / N as f64 * 1e6
}

fn main() {
    // Witness-receipt-sized messages (the signed layout of a stored entry is ~340 bytes).
    let messages: Vec<Vec<u8>> = (0..N).map(|i| format!("{i:0>340}").into_bytes()).collect();
    let dalek = SigningKey::from_bytes(&[7u8; 32]);
    let fast = FastSigner::new(&dalek);
    let signatures: Vec<_> = messages.iter().map(|m| dalek.sign(m)).collect();
    assert_eq!(
        fast.sign(&messages[0]),
        signatures[0].to_bytes(),
        "both implementations sign identical bytes"
    );

    let dalek_sign = per_call(|i| {
        black_box(dalek.sign(&messages[i]));
    });
    let fast_sign = per_call(|i| {
        black_box(fast.sign(&messages[i]));
    });

    let verifying = dalek.verifying_key();
    let dalek_verify = per_call(|i| {
        verifying
            .verify_strict(&messages[i], &signatures[i])
            .unwrap()
    });
    let batch = 256;
    let started = Instant::now();
    for (msgs, sigs) in messages.chunks(batch).zip(signatures.chunks(batch)) {
        let msgs: Vec<&[u8]> = msgs.iter().map(Vec::as_slice).collect();
        let keys = vec![verifying; msgs.len()];
        ed25519_dalek::verify_batch(&msgs, sigs, &keys).unwrap();
    }
    let dalek_batch = started.elapsed().as_secs_f64() / N as f64 * 1e6;
    let started = Instant::now();
    for (msgs, sigs) in messages.chunks(batch).zip(signatures.chunks(batch)) {
        let msgs: Vec<&[u8]> = msgs.iter().map(Vec::as_slice).collect();
        assert!(syncrelay_node::crypto::signing::verify_batch_one_key(
            &verifying, &msgs, sigs
        ));
    }
    let one_key_batch = started.elapsed().as_secs_f64() / N as f64 * 1e6;
    let aws_public =
        signature::UnparsedPublicKey::new(&signature::ED25519, verifying.as_bytes().to_vec());
    let aws_verify = per_call(|i| {
        aws_public
            .verify(&messages[i], &signatures[i].to_bytes())
            .unwrap()
    });

    let payload = vec![5u8; 1024];
    let key = [9u8; 32];
    let iv = [1u8; 12];
    let prepared = AesKey::new(&key);
    let crate_seal = per_call(|_| {
        use aes_gcm::aead::{Aead, KeyInit};
        let cipher = aes_gcm::Aes256Gcm::new(&key.into());
        black_box(cipher.encrypt(&iv.into(), payload.as_slice()).unwrap());
    });
    let aws_seal_one_off = per_call(|_| {
        black_box(aes_encrypt(&key, &iv, &payload));
    });
    let aws_seal = per_call(|_| {
        black_box(prepared.seal(&iv, &payload));
    });

    println!("Ed25519 sign, 340 B message      ed25519-dalek {dalek_sign:6.2} µs   aws-lc-rs {fast_sign:6.2} µs   ratio {:.2}", dalek_sign / fast_sign);
    println!("Ed25519 verify, 340 B message    ed25519-dalek {dalek_verify:6.2} µs   in batches of {batch} {dalek_batch:6.2} µs   one key's batch {one_key_batch:6.2} µs   aws-lc-rs {aws_verify:6.2} µs");
    println!("AES-256-GCM seal, 1 KiB          aes-gcm crate {crate_seal:6.2} µs   aws-lc-rs {aws_seal_one_off:6.2} µs (key per call), {aws_seal:6.2} µs (prepared key)   ratio {:.2}", crate_seal / aws_seal);
}
