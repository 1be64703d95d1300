//! Wire conformance against a real `syncrelay-node` process: shapes, status codes, the auth flow,
//! pushes of the reference vectors, paging, bloom, transport formats, SSE and bad input.

mod common;

use common::*;
use ed25519_dalek::Signer;
use serde_json::{json, Value};
use syncrelay_node::bloom::{self, BloomSummary, BloomTester};
use syncrelay_node::crypto::signing::verify_witness;
use syncrelay_node::crypto::transport::{aes_decrypt, hybrid_decrypt, SessionKey};
use syncrelay_node::testdata;
use syncrelay_node::wire::{b64, framing, EntryMetadata};

fn keys_of(v: &Value) -> Vec<String> {
    v.as_object().unwrap().keys().cloned().collect()
}

#[tokio::test]
async fn public_endpoints_and_error_shapes() {
    let node = Node::start("");
    let c = node.client();
    let h = c.get("/health").await;
    assert_eq!(h.status, 200);
    assert_eq!(h.json()["status"], "ok");
    let info = c.get("/.well-known/mindoodb-server-info").await.json();
    let samples = testdata::load("wire-samples.json");
    let recorded = sample(&samples, "server info (.well-known)");
    assert_eq!(
        keys_of(&info),
        keys_of(&recorded["response"]["bodyJson"]),
        "same keys in the same order"
    );
    assert_eq!(
        info["signingPublicKey"],
        keys()["identities"]["server"]["signingPublicKey"]
    );
    assert_eq!(info["maxJsonRequestBodyBytes"], 5_242_880);
    assert_eq!(info["maxJsonRequestBodyLimit"], "5mb");

    for (path, status, error) in [
        (
            "/nosuchtenant/auth/challenge",
            404,
            "Tenant nosuchtenant not found on server CN=server1",
        ),
        (
            "/bad.tenant/auth/challenge",
            400,
            "Invalid tenant ID format",
        ),
        (
            "/vectors/sync/docs/getStoreHead",
            401,
            "Missing or invalid Authorization header",
        ),
    ] {
        let r = c.post(path, json!({"username": "x"})).await;
        assert_eq!(
            (r.status, r.json()["error"].as_str().unwrap()),
            (status, error),
            "{path}"
        );
    }
    let r = c
        .post("/vectors/sync/docs/noSuchOperation", json!({}))
        .await;
    assert_eq!(r.status, 404);
    assert!(r.json()["error"].is_string());
    let metrics = c.get("/metrics").await.text();
    assert!(
        metrics.contains(
            "syncrelay_http_requests_total{endpoint=\"auth/challenge\",status=\"404\"} 1"
        ),
        "{metrics}"
    );
}

fn sample<'a>(samples: &'a Value, name: &str) -> &'a Value {
    samples["samples"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no sample {name}"))
}

#[tokio::test]
async fn auth_flow_and_failures_match_the_reference() {
    let node = Node::start("");
    let mut c = node.client();
    let alice = identity("alice");
    let samples = testdata::load("wire-samples.json");

    // Username + key and key-only challenges both give a token whose sub is the directory username.
    c.login("alice").await;
    let r = c
        .post(
            "/vectors/auth/challenge",
            json!({"signingPublicKey": alice.signing_public_pem}),
        )
        .await;
    let challenge = r.json()["challenge"].as_str().unwrap().to_string();
    let sig = b64::encode(&alice.signing.sign(challenge.as_bytes()).to_bytes());
    let a = c
        .post(
            "/vectors/auth/authenticate",
            json!({"challenge": challenge, "signature": sig}),
        )
        .await;
    let token = a.json()["token"].as_str().unwrap().to_string();
    let payload: Value =
        serde_json::from_slice(&base64_url(token.split('.').nth(1).unwrap())).unwrap();
    assert_eq!(payload["sub"], username("alice"));
    assert!(payload["exp"].as_i64().unwrap() > payload["iat"].as_i64().unwrap());

    // Replay, wrong signature, unknown challenge: 401 {success:false,error} with the reference texts.
    let replay = c
        .post(
            "/vectors/auth/authenticate",
            json!({"challenge": challenge, "signature": sig}),
        )
        .await;
    assert_eq!(
        (replay.status, replay.json()),
        (
            401,
            json!({"success": false, "error": "Challenge already used"})
        )
    );
    let r = c
        .post(
            "/vectors/auth/challenge",
            json!({"username": username("alice")}),
        )
        .await;
    let ch = r.json()["challenge"].as_str().unwrap().to_string();
    let bob_sig = b64::encode(&identity("bob").signing.sign(ch.as_bytes()).to_bytes());
    let wrong = c
        .post(
            "/vectors/auth/authenticate",
            json!({"challenge": ch, "signature": bob_sig}),
        )
        .await;
    assert_eq!(
        wrong.json(),
        sample(&samples, "401 authenticate: wrong signature")["response"]["bodyJson"]
    );
    let unknown = c
        .post(
            "/vectors/auth/authenticate",
            json!({"challenge": "0199-nope", "signature": sig}),
        )
        .await;
    assert_eq!(
        unknown.json(),
        sample(&samples, "401 authenticate: unknown challenge")["response"]["bodyJson"]
    );

    // Challenge errors: exact reference bodies where the reference's wording applies.
    for (name, body) in [
        ("404 challenge without username and key", json!({})),
        (
            "400 username with a control character",
            json!({"username": "a\u{1}b"}),
        ),
        ("400 empty username", json!({"username": ""})),
        (
            "400 authenticate without signature",
            json!({"challenge": "x"}),
        ),
    ] {
        let s = sample(&samples, name);
        let path = s["request"]["path"].as_str().unwrap();
        let r = c.post(path, body).await;
        assert_eq!(
            r.status as i64,
            s["response"]["status"].as_i64().unwrap(),
            "{name}"
        );
        assert_eq!(r.json(), s["response"]["bodyJson"], "{name}");
    }
    let r = c
        .post(
            "/vectors/auth/challenge",
            json!({"username": "CN=nobody/O=vectors"}),
        )
        .await;
    assert_eq!(
        r.json(),
        sample(&samples, "404 challenge for an unknown username")["response"]["bodyJson"]
    );
    let r = c
        .post("/vectors/auth/challenge", json!({"username": username("alice"), "signingPublicKey": identity("bob").signing_public_pem}))
        .await;
    assert_eq!(
        r.json(),
        sample(
            &samples,
            "auth/challenge naming bob's key under alice's username"
        )["response"]["bodyJson"]
    );
    let r = c
        .post(
            "/vectors/auth/challenge",
            json!({"signingPublicKey": identity("outsider").signing_public_pem}),
        )
        .await;
    assert_eq!(
        r.json(),
        sample(&samples, "404 key-only challenge for an unknown key")["response"]["bodyJson"]
    );

    // Tokens: garbage, forged, alg:none → 401 with the reference body.
    let good = c.token.clone().unwrap();
    let parts: Vec<&str> = good.split('.').collect();
    let none = format!("{}.{}.", b64url(br#"{"alg":"none","typ":"JWT"}"#), parts[1]);
    let forged = format!("{}.{}.{}", parts[0], parts[1], b64url(&[7u8; 32]));
    for bad in ["garbage", none.as_str(), forged.as_str()] {
        c.token = Some(bad.to_string());
        let r = c.sync("getStoreHead", json!({"dbId": DB})).await;
        assert_eq!(
            (r.status, r.json()),
            (401, json!({"error": "Invalid or expired token"})),
            "{bad}"
        );
    }
}

fn b64url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn base64_url(text: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .unwrap()
}

#[tokio::test]
async fn capabilities_head_and_empty_store() {
    let node = Node::start("");
    let mut c = node.client();
    c.login("alice").await;
    let samples = testdata::load("wire-samples.json");
    for kind in ["docs", "attachments"] {
        let r = c
            .get(&format!("/vectors/sync/{kind}/capabilities?dbId={DB}"))
            .await;
        let caps = &r.json()["capabilities"];
        let recorded = &sample(&samples, &format!("capabilities ({kind})"))["response"]["bodyJson"]
            ["capabilities"];
        assert_eq!(
            keys_of(caps),
            keys_of(recorded),
            "same fields in the same order"
        );
        assert_eq!(caps["protocolVersion"], "sync-v5");
        for flag in [
            "supportsCursorScan",
            "supportsIdBloomSummary",
            "supportsStoreHead",
            "supportsSessionKeyWrap",
            "supportsBinaryEntries",
            "supportsChangeEvents",
        ] {
            assert_eq!(caps[flag], true, "{flag}");
        }
        assert!(
            (caps["serverTime"].as_i64().unwrap() - syncrelay_node::clock::now_ms()).abs() < 60_000
        );
    }
    let r = c.get("/vectors/sync/docs/capabilities").await;
    assert_eq!(
        (r.status, r.json()),
        (
            400,
            json!({"error": "dbId is required and must be a non-empty string"})
        )
    );
    let head = c.sync("getStoreHead", json!({"dbId": DB})).await.json();
    assert_eq!(head["head"]["maxReceiptOrder"], 0);
    assert_eq!(head["head"]["epoch"].as_str().unwrap().len(), 36);
    let bloom = c.sync("getIdBloomSummary", json!({"dbId": DB})).await;
    assert_eq!(
        bloom.json(),
        sample(&samples, "getIdBloomSummary (empty store)")["response"]["bodyJson"]
    );
    let scan = c
        .sync("scanEntriesSince", json!({"dbId": DB, "cursor": null}))
        .await;
    assert_eq!(
        scan.text(),
        sample(&samples, "scanEntriesSince (empty store, cursor null)")["response"]["bodyText"]
            .as_str()
            .unwrap()
    );
    let comp = c
        .sync("getCompactionStatus", json!({"dbId": DB}))
        .await
        .json();
    let recorded = &sample(&samples, "getCompactionStatus")["response"]["bodyJson"]["status"];
    assert_eq!(keys_of(&comp["status"]), keys_of(recorded));
    // A fresh on-disk store with the default thresholds answers exactly what the reference's
    // fresh store answers: maintenance on, the reference's defaults, nothing done yet.
    assert_eq!(&comp["status"], recorded);
}

#[tokio::test]
async fn pushing_reference_vectors_witnesses_valid_and_rejects_tampered() {
    let node = Node::start("");
    let mut c = node.client();
    c.login("alice").await;
    let sigs = testdata::load("entry-signatures.json");
    let with_payload = |case: &Value| {
        let mut e = case["entry"].clone();
        e["encryptedData"] = case["encryptedDataBase64"].clone();
        e
    };
    // Tampered first: every one rejected with the reference's reason, nothing stored.
    let tampered: Vec<Value> = sigs["tampered"]
        .as_array()
        .unwrap()
        .iter()
        .map(with_payload)
        .collect();
    let r = c
        .sync("putEntries", json!({"dbId": DB, "entries": tampered}))
        .await;
    assert_eq!(r.status, 200);
    let body = r.json();
    assert_eq!(body["receipts"], json!([]));
    let rejected = body["rejected"].as_array().unwrap();
    assert_eq!(rejected.len(), tampered.len());
    for (got, case) in rejected.iter().zip(sigs["tampered"].as_array().unwrap()) {
        let expected = case["serverRejectionReason"].as_str().unwrap();
        let reason = got["reason"].as_str().unwrap();
        // A re-wrapped author PEM is the same key here (lookups ignore whitespace), so it fails on the
        // signature instead of on trust; both are rejections of the entry.
        if expected.ends_with("was not signed by a trusted user")
            && case["name"]
                .as_str()
                .unwrap()
                .contains("createdByPublicKey")
        {
            assert!(
                reason.ends_with("has an invalid author signature"),
                "{reason}"
            );
        } else {
            assert_eq!(reason, expected, "{}", case["name"]);
        }
    }
    assert_eq!(
        c.sync("getStoreHead", json!({"dbId": DB})).await.json()["head"]["maxReceiptOrder"],
        0
    );
    let metrics = node.client().get("/metrics").await.text();
    assert!(metrics.contains("syncrelay_verification_failures_total{reason=\"invalid_signature\"}"));

    // Valid entries (authored by alice and bob): receipts are full records; entryVersion ones are
    // witnessed by the node's key over this dbId.
    let valid: Vec<Value> = sigs["valid"]
        .as_array()
        .unwrap()
        .iter()
        .map(with_payload)
        .collect();
    let r = c
        .sync("putEntries", json!({"dbId": DB, "entries": valid}))
        .await
        .json();
    assert_eq!(r["rejected"], json!([]));
    let receipts = r["receipts"].as_array().unwrap();
    assert_eq!(receipts.len(), valid.len());
    let server_pem = keys()["identities"]["server"]["signingPublicKey"].clone();
    for (receipt, case) in receipts.iter().zip(sigs["valid"].as_array().unwrap()) {
        let meta: EntryMetadata = serde_json::from_value(receipt.clone()).unwrap();
        if case["entry"].get("entryVersion").is_some() {
            assert_eq!(receipt["receivedByPublicKey"], server_pem);
            assert!(verify_witness(&meta, DB), "{}", case["name"]);
        } else {
            assert!(
                receipt.get("receivedAt").is_none(),
                "no receipt without entryVersion"
            );
        }
        assert_eq!(receipt["signature"], case["entry"]["signature"]);
    }
    // Stored records pass signed fields through byte-for-byte (recipients key order included).
    for case in sigs["valid"].as_array().unwrap() {
        let stored = c
            .sync(
                "getEntryMetadata",
                json!({"dbId": DB, "id": case["entry"]["id"]}),
            )
            .await
            .json();
        for field in [
            "createdByPublicKey",
            "recipients",
            "provenance",
            "attachmentRefs",
            "metadataSignature",
        ] {
            assert_eq!(
                stored["entry"].get(field),
                case["entry"].get(field),
                "{field} of {}",
                case["name"]
            );
        }
        if let Some(rec) = case["entry"].get("recipients") {
            assert_eq!(
                serde_json::to_string(&stored["entry"]["recipients"]).unwrap(),
                serde_json::to_string(rec).unwrap()
            );
        }
    }
    // Re-push: acknowledged with the stored record (original receipt), not re-stamped.
    let again = c
        .sync("putEntries", json!({"dbId": DB, "entries": valid}))
        .await
        .json();
    assert_eq!(
        again["receipts"][0]["receivedAt"],
        receipts[0]["receivedAt"]
    );
    assert_eq!(again["receipts"][0]["receiptOrder"], 1);
    let head = c.sync("getStoreHead", json!({"dbId": DB})).await.json();
    assert_eq!(head["head"]["maxReceiptOrder"], valid.len());

    // An untrusted author (outsider) is rejected per entry while the rest of the batch is stored.
    let mut outsider = signed_entry("outsider", "6b054a3bf2ec2041e4760c00", 0, 64);
    outsider.metadata.id = "outsider-entry".into();
    let good = signed_entry("alice", "6b054a3bf2ec2041e4760c01", 0, 64);
    let r = c
        .sync(
            "putEntries",
            json!({"dbId": DB, "entries": wire_entries(&[outsider, good.clone()])}),
        )
        .await
        .json();
    assert_eq!(
        r["rejected"],
        json!([{"id": "outsider-entry", "reason": "Entry outsider-entry was not signed by a trusted user"}])
    );
    assert_eq!(r["receipts"].as_array().unwrap().len(), 1);
    assert_eq!(r["receipts"][0]["id"].as_str().unwrap(), good.metadata.id);
}

#[tokio::test]
async fn cursor_paging_bloom_and_transport_formats() {
    let node = Node::start("");
    let mut c = node.client();
    c.login("alice").await;
    let entries: Vec<_> = (0..2500)
        .map(|n| signed_entry("alice", &format!("doc{}", n % 7), n, 200))
        .collect();
    for chunk in entries.chunks(500) {
        let r = c
            .sync(
                "putEntries",
                json!({"dbId": DB, "entries": wire_entries(chunk)}),
            )
            .await
            .json();
        assert_eq!(r["rejected"], json!([]));
    }
    // Three pages of 1000/1000/500 (a larger limit is clamped), in receiptOrder, then an empty page
    // that echoes the cursor.
    let mut cursor = Value::Null;
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let page = c
            .sync(
                "scanEntriesSince",
                json!({"dbId": DB, "cursor": cursor, "limit": 5000}),
            )
            .await
            .json();
        let items = page["entries"].as_array().unwrap();
        pages += 1;
        for e in items {
            seen.push((
                e["receiptOrder"].as_u64().unwrap(),
                e["id"].as_str().unwrap().to_string(),
            ));
        }
        if !page["hasMore"].as_bool().unwrap() {
            let tail = c
                .sync(
                    "scanEntriesSince",
                    json!({"dbId": DB, "cursor": page["nextCursor"]}),
                )
                .await
                .json();
            assert_eq!(tail["entries"], json!([]));
            assert_eq!(tail["nextCursor"], page["nextCursor"]);
            break;
        }
        assert_eq!(items.len(), 1000);
        cursor = page["nextCursor"].clone();
    }
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 2500);
    assert!(
        seen.windows(2).all(|w| w[0].0 + 1 == w[1].0),
        "gap-free, strictly increasing"
    );
    assert_eq!(seen[0].0, 1);
    let filtered = c
        .sync(
            "scanEntriesSince",
            json!({"dbId": DB, "filters": {"docId": "doc3", "entryTypes": ["doc_change"]}}),
        )
        .await
        .json();
    assert!(filtered["entries"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["docId"] == "doc3"));
    assert_eq!(filtered["entries"].as_array().unwrap().len(), 357);

    // Bloom: exactly the reference summary of all ids; every id tests present.
    let summary: BloomSummary = serde_json::from_value(
        c.sync("getIdBloomSummary", json!({"dbId": DB}))
            .await
            .json()["summary"]
            .clone(),
    )
    .unwrap();
    let ids: Vec<String> = seen.iter().map(|(_, id)| id.clone()).collect();
    assert_eq!(summary, bloom::build(ids.iter().map(String::as_str)));
    let tester = BloomTester::new(&summary);
    assert!(ids.iter().all(|id| tester.might_contain(id)));

    // Transport formats, decrypted with alice's private key.
    let alice = identity("alice");
    let want: Vec<&str> = ids.iter().take(3).map(String::as_str).collect();
    let payload_of = |id: &str| {
        entries
            .iter()
            .find(|e| e.metadata.id == id)
            .unwrap()
            .encrypted_data
            .clone()
    };
    let classic = c
        .sync("getEntries", json!({"dbId": DB, "ids": want}))
        .await
        .json();
    for e in classic["entries"].as_array().unwrap() {
        let env = b64::decode(e["rsaEncryptedPayload"].as_str().unwrap()).unwrap();
        assert_eq!(
            hybrid_decrypt(&alice.encryption, &env).unwrap(),
            payload_of(e["id"].as_str().unwrap())
        );
    }
    let session = c
        .sync(
            "getEntries",
            json!({"dbId": DB, "ids": want, "sessionKeyWrap": true}),
        )
        .await
        .json();
    let key = SessionKey::unwrap(
        &alice.encryption,
        &b64::decode(session["wrappedSessionKey"].as_str().unwrap()).unwrap(),
    )
    .unwrap();
    assert_eq!(session["entries"].as_array().unwrap().len(), 3);
    for e in session["entries"].as_array().unwrap() {
        let iv = b64::decode(e["iv"].as_str().unwrap()).unwrap();
        let ct = b64::decode(e["sessionEncryptedPayload"].as_str().unwrap()).unwrap();
        assert_eq!(
            aes_decrypt(&key, &iv, &ct).unwrap(),
            payload_of(e["id"].as_str().unwrap())
        );
    }
    let bin = c
        .sync("getEntriesBinary", json!({"dbId": DB, "ids": want}))
        .await;
    assert_eq!(bin.headers["content-type"], "application/octet-stream");
    let framed = framing::decode(&bin.body).unwrap();
    let header: Value = serde_json::from_slice(framed.header).unwrap();
    assert_eq!(header["format"], "mdb-entries-v2");
    let key = SessionKey::unwrap(
        &alice.encryption,
        &b64::decode(header["wrappedSessionKey"].as_str().unwrap()).unwrap(),
    )
    .unwrap();
    assert_eq!(framed.frames.len(), 3);
    for (meta, payload) in framed.frames {
        let meta: Value = serde_json::from_slice(meta).unwrap();
        let plain = aes_decrypt(
            &key,
            &b64::decode(meta["iv"].as_str().unwrap()).unwrap(),
            payload,
        )
        .unwrap();
        assert_eq!(plain, payload_of(meta["id"].as_str().unwrap()));
    }
    // A large binary response (written in many buffers) has its exact length announced and
    // carries every entry asked for, in order.
    let many: Vec<&str> = ids.iter().take(1000).map(String::as_str).collect();
    let bin = c
        .sync("getEntriesBinary", json!({"dbId": DB, "ids": many}))
        .await;
    assert!(bin.body.len() > 1_000_000, "{} bytes", bin.body.len());
    assert_eq!(
        bin.headers["content-length"].to_str().unwrap(),
        bin.body.len().to_string()
    );
    assert!(bin.headers.get("transfer-encoding").is_none());
    let framed = framing::decode(&bin.body).unwrap();
    let header: Value = serde_json::from_slice(framed.header).unwrap();
    let key = SessionKey::unwrap(
        &alice.encryption,
        &b64::decode(header["wrappedSessionKey"].as_str().unwrap()).unwrap(),
    )
    .unwrap();
    let mut order = Vec::new();
    for (meta, payload) in framed.frames {
        let meta: Value = serde_json::from_slice(meta).unwrap();
        let id = meta["id"].as_str().unwrap().to_string();
        let iv = b64::decode(meta["iv"].as_str().unwrap()).unwrap();
        assert_eq!(aes_decrypt(&key, &iv, payload).unwrap(), payload_of(&id));
        order.push(id);
    }
    assert_eq!(order, many);
    // Bob's response is wrapped to bob's key: alice cannot open it.
    let mut bob = node.client();
    bob.login("bob").await;
    let other = bob
        .sync(
            "getEntries",
            json!({"dbId": DB, "ids": want, "sessionKeyWrap": true}),
        )
        .await
        .json();
    let wrapped = b64::decode(other["wrappedSessionKey"].as_str().unwrap()).unwrap();
    assert!(SessionKey::unwrap(&alice.encryption, &wrapped).is_err());
    assert!(SessionKey::unwrap(&identity("bob").encryption, &wrapped).is_ok());

    // Binary push of new entries.
    let fresh: Vec<_> = (3000..3003)
        .map(|n| signed_entry("alice", "bin", n, 100))
        .collect();
    let mut writer = framing::FrameWriter::new(
        br#"{"format":"mdb-put-v2","tenantId":"vectors","dbId":"vectors-db"}"#,
        0,
    );
    for e in &fresh {
        writer.push(&serde_json::to_vec(&e.metadata).unwrap(), &e.encrypted_data);
    }
    let r = c
        .send(
            "POST",
            "/vectors/sync/docs/putEntriesBinary",
            Some(writer.finish()),
            "application/octet-stream",
        )
        .await;
    assert_eq!(r.json()["receipts"].as_array().unwrap().len(), 3);
    let has = c
        .sync(
            "hasEntries",
            json!({"dbId": DB, "ids": ["nope", fresh[1].metadata.id]}),
        )
        .await
        .json();
    assert_eq!(has["ids"], json!([fresh[1].metadata.id]));
    let all = c
        .get(&format!(
            "/vectors/sync/docs/getAllIds?tenantId=vectors&dbId={DB}"
        ))
        .await
        .json();
    assert_eq!(all["ids"].as_array().unwrap().len(), 2503);
    let newer = c
        .sync(
            "findNewEntries",
            json!({"dbId": DB, "haveIds": all["ids"].as_array().unwrap()[..2500]}),
        )
        .await
        .json();
    assert_eq!(newer["entries"].as_array().unwrap().len(), 3);
}

async fn raw(c: &Client, op: &str, body: &[u8], ct: &str) -> Reply {
    c.send(
        "POST",
        &format!("/vectors/sync/docs/{op}"),
        Some(body.to_vec()),
        ct,
    )
    .await
}

#[tokio::test]
async fn bad_input_is_refused_and_nothing_is_stored() {
    let node = Node::start("");
    let mut c = node.client();
    c.login("alice").await;
    let samples = testdata::load("wire-samples.json");
    let good = signed_entry("alice", "d", 0, 64);
    let mut wire = wire_entries(std::slice::from_ref(&good));
    let r = raw(&c, "getStoreHead", b"{not json", "application/json").await;
    assert_eq!(
        (r.status, r.json()),
        (
            400,
            sample(&samples, "400 unparseable JSON")["response"]["bodyJson"].clone()
        )
    );
    let r = c.sync("getStoreHead", json!({"dbId": "../etc"})).await;
    assert_eq!(
        r.json(),
        sample(&samples, "400 invalid dbId")["response"]["bodyJson"]
    );
    let r = c.sync("getStoreHead", json!({})).await;
    assert_eq!(
        r.json(),
        sample(&samples, "400 missing dbId")["response"]["bodyJson"]
    );
    for traversal in ["..", "a/../../b", "%2e%2e", "a\\b", ".hidden"] {
        assert_eq!(
            c.sync("getStoreHead", json!({"dbId": traversal}))
                .await
                .status,
            400,
            "{traversal}"
        );
    }
    assert_eq!(
        c.post("/..%2f..%2fetc/sync/docs/getStoreHead", json!({"dbId": DB}))
            .await
            .status,
        400
    );
    let r = c.sync("getEntryMetadata", json!({"dbId": DB})).await;
    assert_eq!(
        r.json(),
        sample(&samples, "400 getEntryMetadata without id")["response"]["bodyJson"]
    );
    let r = c
        .sync("findNewEntriesForDoc", json!({"dbId": DB, "haveIds": []}))
        .await;
    assert_eq!(
        r.json(),
        sample(&samples, "400 findNewEntriesForDoc without docId")["response"]["bodyJson"]
    );

    // Wrong field types and bad base64 in an entry: 400, nothing stored.
    wire[0]["createdAt"] = json!("yesterday");
    assert_eq!(
        c.sync("putEntries", json!({"dbId": DB, "entries": wire}))
            .await
            .status,
        400
    );
    let mut wire = wire_entries(std::slice::from_ref(&good));
    wire[0]["encryptedData"] = json!("!!!not-base64_");
    assert_eq!(
        c.sync("putEntries", json!({"dbId": DB, "entries": wire}))
            .await
            .status,
        400
    );
    let mut wire = wire_entries(std::slice::from_ref(&good));
    wire[0].as_object_mut().unwrap().remove("signature");
    assert_eq!(
        c.sync("putEntries", json!({"dbId": DB, "entries": wire}))
            .await
            .status,
        400
    );
    assert_eq!(
        c.sync("hasEntries", json!({"dbId": DB, "ids": "x"}))
            .await
            .status,
        400
    );

    // Binary: wrong content type, wrong format, truncated framing.
    let r = raw(&c, "putEntriesBinary", b"{}", "application/json").await;
    assert_eq!(
        r.json(),
        sample(&samples, "400 putEntriesBinary sent as JSON")["response"]["bodyJson"]
    );
    let mut w = framing::FrameWriter::new(br#"{"format":"mdb-put-v1","dbId":"vectors-db"}"#, 0);
    w.push(b"{}", b"");
    let r = c
        .send(
            "POST",
            "/vectors/sync/docs/putEntriesBinary",
            Some(w.finish()),
            "application/octet-stream",
        )
        .await;
    assert_eq!(
        r.json(),
        sample(&samples, "400 putEntriesBinary with an unknown format")["response"]["bodyJson"]
    );
    let r = raw(
        &c,
        "putEntriesBinary",
        b"\0\0\0\x10{}",
        "application/octet-stream",
    )
    .await;
    assert_eq!(r.status, 400);

    // Oversized bodies: 413 with the reference body, JSON and binary.
    let big = vec![b' '; 5 * 1024 * 1024 + 10];
    for (op, ct) in [
        ("hasEntries", "application/json"),
        ("putEntriesBinary", "application/octet-stream"),
    ] {
        let r = c
            .send(
                "POST",
                &format!("/vectors/sync/docs/{op}"),
                Some(big.clone()),
                ct,
            )
            .await;
        assert_eq!(
            (r.status, r.json()),
            (413, json!({"error": "Request body too large"})),
            "{op}"
        );
    }
    // A content hash that lies and a payload swapped after signing are rejected per entry.
    let mut lying = signed_entry("alice", "d", 1, 64);
    lying.encrypted_data[0] ^= 1;
    let r = c
        .sync(
            "putEntries",
            json!({"dbId": DB, "entries": wire_entries(&[lying])}),
        )
        .await
        .json();
    assert!(r["rejected"][0]["reason"]
        .as_str()
        .unwrap()
        .ends_with("content hash does not match its payload"));
    assert_eq!(
        c.sync("getStoreHead", json!({"dbId": DB})).await.json()["head"]["maxReceiptOrder"],
        0,
        "nothing stored"
    );
}

#[tokio::test]
async fn sse_change_events_after_a_put() {
    let node = Node::start("");
    let mut c = node.client();
    let token = c.login("alice").await;
    let mut events = EventStream::open(&node.url, &token).await;
    assert_eq!(
        events.next_message().await,
        "event: hello\ndata: {\"protocolVersion\":\"sync-v5\"}"
    );
    let entry = signed_entry("alice", "d", 0, 32);
    c.sync(
        "putEntries",
        json!({"dbId": "otherdb", "entries": wire_entries(&[entry])}),
    )
    .await;
    let change = events.next_message().await;
    let data: Value =
        serde_json::from_str(change.strip_prefix("event: change\ndata: ").expect(&change)).unwrap();
    assert_eq!(data["dbId"], "otherdb");
    assert_eq!(data["storeKind"], "docs");
    assert_eq!(data["maxReceiptOrder"], 1);
}

#[tokio::test]
async fn revocation_takes_effect_on_the_next_request() {
    let node = Node::start("");
    let mut c = node.client();
    c.login("alice").await;
    assert_eq!(
        c.sync("getStoreHead", json!({"dbId": DB})).await.status,
        200
    );
    let path = node.dir.join("directory.yaml");
    std::fs::write(&path, serde_yaml::to_string(&directory(true)).unwrap()).unwrap();
    let r = c.sync("getStoreHead", json!({"dbId": DB})).await;
    assert_eq!(
        (r.status, r.json()),
        (401, json!({"error": "Invalid or expired token"}))
    );
    let r = c
        .post(
            "/vectors/auth/challenge",
            json!({"username": username("alice")}),
        )
        .await;
    assert_eq!(r.status, 403);
    // A push of alice's entries by bob is now refused per entry: her key is no longer trusted.
    let mut bob = node.client();
    bob.login("bob").await;
    let r = bob
        .sync(
            "putEntries",
            json!({"dbId": DB, "entries": wire_entries(&[signed_entry("alice", "d", 0, 8)])}),
        )
        .await
        .json();
    assert!(r["rejected"][0]["reason"]
        .as_str()
        .unwrap()
        .ends_with("was not signed by a trusted user"));
    // Reinstated: works again without a restart.
    std::fs::write(&path, serde_yaml::to_string(&directory(false)).unwrap()).unwrap();
    c.login("alice").await;
    assert_eq!(
        c.sync("getStoreHead", json!({"dbId": DB})).await.status,
        200
    );
}

#[tokio::test]
async fn rate_limits_answer_429_with_headers() {
    let node = Node::start("limits:\n  authPerMinute: 3\n");
    let c = node.client();
    for _ in 0..3 {
        assert_eq!(
            c.post(
                "/vectors/auth/challenge",
                json!({"username": username("alice")})
            )
            .await
            .status,
            200
        );
    }
    let r = c
        .post(
            "/vectors/auth/challenge",
            json!({"username": username("alice")}),
        )
        .await;
    assert_eq!(
        (r.status, r.json()),
        (
            429,
            json!({"error": "Too many authentication attempts, please try again later"})
        )
    );
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry));
}
