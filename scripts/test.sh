#!/usr/bin/env bash
# Runs every test: unit tests (vectors, stores, auth) and the multi-process tests that start real
# syncrelay-node binaries on loopback ports. Release mode: RSA and Ed25519 are slow unoptimised.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --release --workspace --all-targets
