#!/usr/bin/env python3
"""Writes the seed corpus of every fuzz target from the reference vectors.

    python3 fuzz/seed.py [VECTORS_DIR]     (default: ../shared/spec/vectors beside the repository)

Seeds go to fuzz/corpus/<target>/seed-<name>; files of the same name are overwritten, others (a
minimised corpus, say) are left alone. Deterministic: run it again and git sees no change.
"""
import base64
import hashlib
import json
import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
VECTORS = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "..", "..", "shared", "spec", "vectors")
CORPUS = os.path.join(HERE, "corpus")
# Seeds above this size are left out (libFuzzer's -max_len follows the largest seed).
MAX_SEED = 64 * 1024

written = {}


def load(name):
    with open(os.path.join(VECTORS, name), encoding="utf-8") as f:
        return json.load(f)


def compact(value):
    # The reference client's JSON.stringify: no spaces, non-ASCII kept.
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def seed(target, name, data):
    if isinstance(data, str):
        data = data.encode()
    if len(data) > MAX_SEED:
        return
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:60]
    folder = os.path.join(CORPUS, target)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"seed-{safe}-{hashlib.sha1(data).hexdigest()[:8]}")
    with open(path, "wb") as f:
        f.write(data)
    written[target] = written.get(target, 0) + 1


keys = load("keys.json")
auth = load("auth.json")
samples = load("wire-samples.json")["samples"]
sigs = load("entry-signatures.json")
transport = load("transport.json")
bloom = load("bloom-v1.json")
witness = load("witness-receipt.json")
content = load("content-hash.json")

# ------------------------------------------------------------------ wire_requests / wire_responses
for i, s in enumerate(samples):
    req, resp = s["request"], s["response"]
    if isinstance(req.get("body"), dict):
        seed("wire_requests", f"{i}-{s['name']}", compact(req["body"]))
    elif isinstance(req.get("body"), str):
        seed("wire_requests", f"{i}-{s['name']}", req["body"])
    if "bodyJson" in resp and resp["bodyJson"] is not None:
        seed("wire_responses", f"{i}-{s['name']}", compact(resp["bodyJson"]))
seed("wire_requests", "blank", b" \n")
seed("wire_requests", "empty-object", b"{}")
seed("wire_requests", "authenticate", compact(auth["challengeSignature"]["authenticateRequestBody"]))
seed("wire_requests", "binary-put-header", transport["putEntriesBinary"]["headerJsonText"])
seed("wire_requests", "scan-filters", compact({"dbId": "db", "cursor": {"receiptOrder": 3, "id": "x"}, "limit": 2.5,
                                                "filters": {"docId": "d", "entryTypes": ["doc_create"],
                                                            "creationDateFrom": 1, "creationDateUntil": 2}}))
seed("wire_requests", "resolve", compact({"dbId": "db", "startId": "e", "options": {"stopAtEntryType": "doc_snapshot",
                                                                                 "maxDepth": 10, "includeStart": True}}))
for name in ("classic", "sessionKey", "sessionKeyForOtherReader"):
    seed("wire_responses", f"transport-{name}", compact(transport[name]["responseBodyJson"]))
seed("wire_responses", "binary-get-header", transport["getEntriesBinary"]["headerJsonText"])
for s in bloom["sets"]:
    seed("wire_responses", f"bloom-{s['name']}", compact({"summary": s["summary"]}))
seed("wire_responses", "bloom-unknown-version", compact(bloom["unknownVersionSummary"]["summary"]))
seed("wire_responses", "change-event", compact({"dbId": "vectors-db", "storeKind": "docs", "epoch": "e1", "maxReceiptOrder": 7}))

# ------------------------------------------------------------------ entry_metadata
for case in sigs["valid"]:
    seed("entry_metadata", f"valid-{case['name']}", case["wireJson"])
    wire = dict(case["entry"], encryptedData=case["encryptedDataBase64"])
    seed("entry_metadata", f"wire-{case['name']}", compact(wire))
for group in ("tampered", "acceptedTraps"):
    for case in sigs[group]:
        seed("entry_metadata", f"{group}-{case['name']}", compact(case["entry"]))
for frame in transport["getEntriesBinary"]["frames"] + transport["putEntriesBinary"]["frames"]:
    seed("entry_metadata", "frame-meta", frame["metaJsonText"])
seed("entry_metadata", "witness-before", compact(witness["entryBeforeStamping"]))
seed("entry_metadata", "witness-stamped", compact(witness["stampedEntry"]))

# ------------------------------------------------------------------ framing: n ‖ n cuts (u16 LE) ‖ body
bodies = {
    "get": base64.b64decode(transport["getEntriesBinary"]["responseBodyBase64"]),
    "put": base64.b64decode(transport["putEntriesBinary"]["requestBodyBase64"]),
}
for i, s in enumerate(samples):
    if "bodyBase64" in s["request"]:
        bodies[f"sample{i}"] = base64.b64decode(s["request"]["bodyBase64"])
for name, body in bodies.items():
    seed("framing", f"{name}-whole", b"\x00" + body)
    cuts = [3, len(body) // 2, len(body) - 1]
    seed("framing", f"{name}-cut3", bytes([len(cuts)]) + b"".join(struct.pack("<H", c) for c in cuts) + body)
seed("framing", "header-only", b"\x00" + struct.pack(">I", 2) + b"{}")

# ------------------------------------------------------------------ b64_keys
for name, ident in keys["identities"].items():
    seed("b64_keys", f"{name}-signing-pem", ident["signingPublicKey"])
    seed("b64_keys", f"{name}-encryption-pem", ident["encryptionPublicKey"])
    der = base64.b64decode("".join(ident["encryptionPublicKey"].splitlines()[1:-1]))
    seed("b64_keys", f"{name}-encryption-der", der)
    der = base64.b64decode("".join(ident["signingPublicKey"].splitlines()[1:-1]))
    seed("b64_keys", f"{name}-signing-der", der)
seed("b64_keys", "signature-b64", auth["challengeSignature"]["signatureBase64"])
seed("b64_keys", "signature-raw", base64.b64decode(auth["challengeSignature"]["signatureBase64"]))
for case in content["cases"]:
    seed("b64_keys", f"payload-{case['name']}", case["payloadBase64"])
seed("b64_keys", "unpadded-whitespace", " aG\nk ")
seed("b64_keys", "base64url", "a-_b")

# ------------------------------------------------------------------ jwt: mode ‖ now (i64 LE, s) ‖ rest
jwt = auth["jwtKnownSecret"]
now = jwt["nowMs"] // 1000
NOW = struct.pack("<q", now)
seed("jwt", "known-token", b"\x00" + NOW + jwt["token"].encode())
seed("jwt", "known-signed-here", b"\x01" + NOW + jwt["headerJson"].encode() + b"\xff" + jwt["payloadJson"].encode())
seed("jwt", "known-resigned", b"\x02" + NOW + jwt["token"].encode())
for name, live in auth["liveTokens"].items():
    seed("jwt", f"live-{name}", b"\x00" + NOW + live["token"].encode())
    seed("jwt", f"live-{name}-signed-here", b"\x01" + NOW + compact(live["header"]) + b"\xff" + compact(live["payload"]))
seed("jwt", "alg-none", b"\x01" + NOW + b'{"alg":"none","typ":"JWT"}\xff' + jwt["payloadJson"].encode())
seed("jwt", "alg-hs384", b"\x01" + NOW + b'{"alg":"HS384","typ":"JWT"}\xff' + jwt["payloadJson"].encode())

# ------------------------------------------------------------------ directory_yaml
def user(name, username=None, revoked=None):
    ident = keys["identities"][name]
    out = {"username": username or ident["username"], "signingPublicKey": ident["signingPublicKey"],
           "encryptionPublicKey": ident["encryptionPublicKey"]}
    if revoked is not None:
        out["revoked"] = revoked
    return out


def block(text, indent):
    pad = " " * indent
    return "|-\n" + "\n".join(pad + line for line in text.splitlines())


def yaml_user(u, indent, dash):
    pad = " " * indent
    lines = []
    first = True
    for k, v in u.items():
        lead = (pad[:-2] + "- ") if (dash and first) else pad
        first = False
        if isinstance(v, bool):
            lines.append(f"{lead}{k}: {'true' if v else 'false'}")
        elif "\n" in v:
            lines.append(f"{lead}{k}: {block(v, indent + 2)}")
        else:
            lines.append(f"{lead}{k}: {v}")
    return "\n".join(lines)


server = keys["identities"]["server"]
full = "\n".join([
    "tenants:",
    "  vectors:",
    "    requireMetadataSignatureSince: 1767225600000",
    "    admin:",
    yaml_user(user("bob"), 6, False),
    "    users:",
    yaml_user(user("alice"), 8, True),
    yaml_user(user("outsider", revoked=True), 8, True),
    "    trustedServers:",
    yaml_user({"name": server["username"], "signingPublicKey": server["signingPublicKey"],
               "encryptionPublicKey": server["encryptionPublicKey"]}, 8, True),
]) + "\n"
seed("directory_yaml", "vectors-full", full)
# JSON is YAML too: the same directory in flow style.
seed("directory_yaml", "vectors-flow", compact({"tenants": {"acme": {"users": [user("alice"), user("alice", "CN=alice-2")]},
                                                            "other": {"users": [user("bob")]}}}))
seed("directory_yaml", "empty", "tenants: {}\n")
seed("directory_yaml", "anchors", "tenants:\n  a: &t {users: []}\n  b: *t\n")

# ------------------------------------------------------------------ sled_records: selector ‖ value
meta = sigs["valid"][0]["wireJson"].encode()
payload = base64.b64decode(sigs["valid"][0]["encryptedDataBase64"])
ro = struct.pack(">Q", 7)
seed("sled_records", "inline", b"\x05" + ro + struct.pack(">I", len(meta)) + meta + payload)
seed("sled_records", "shared", b"\x05" + ro + meta)
ids = [c["entry"]["id"].encode() for c in sigs["valid"][:4]] + [b""]
seed("sled_records", "id-list", b"\x00" + b"".join(bytes([len(i)]) + i for i in ids))

for target, n in sorted(written.items()):
    print(f"{target}: {n} seeds")
