#!/usr/bin/env bash
# Runs every test: unit tests (vectors, stores, auth, operator builders), the multi-process tests that
# start real syncrelay-node binaries on loopback ports, and the operator tests against a real
# kube-apiserver + etcd (provided by scripts/control-plane.sh, built and cached on first use).
# Release mode: RSA and Ed25519 are slow unoptimised.
set -euo pipefail
cd "$(dirname "$0")/.."
# Benchmarks are not tests (`cargo bench` runs them): --all-targets would run them too.
cargo test --release --workspace --lib --bins --tests
