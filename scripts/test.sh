#!/usr/bin/env bash
# Runs every test: unit tests (vectors, stores, auth, operator builders), the multi-process tests that
# start real syncrelay-node binaries on loopback ports (and in network namespaces: netns_faults), and
# the operator tests against a real kube-apiserver + etcd (provided by scripts/control-plane.sh, built
# and cached on first use), and tests/tests/real_pods.rs: a one-node cluster with real containers
# (scripts/cluster.sh, needs root; SYNCRELAY_SKIP_REAL_PODS=1 skips it explicitly), the image from
# the Dockerfile, the chart and the example chain.
# Release mode: RSA and Ed25519 are slow unoptimised.
set -euo pipefail
cd "$(dirname "$0")/.."

# The fault test between hosts needs ip/tc (iproute2) and, on kernels without the netem qdisc,
# nftables to drop packets; the full-disk test mounts a tmpfs. Both need root, as CI runs.
if ! command -v ip >/dev/null 2>&1 || ! command -v nft >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    echo "installing iproute2 and nftables for the fault tests"
    apt-get install -y -qq iproute2 nftables >/dev/null || { apt-get update -qq && apt-get install -y -qq iproute2 nftables >/dev/null; }
  fi
fi
# The Argo CD health checks (examples/argocd) run in Lua 5.1 (the dialect of Argo CD's gopher-lua)
# and 5.4: operator/tests/argocd_health.rs fails without them.
if ! command -v lua5.1 >/dev/null 2>&1 || ! command -v lua5.4 >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    echo "installing lua5.1 and lua5.4 for the Argo CD health checks"
    apt-get install -y -qq lua5.1 lua5.4 >/dev/null || { apt-get update -qq && apt-get install -y -qq lua5.1 lua5.4 >/dev/null; }
  fi
fi
if [ -z "${SYNCRELAY_NETNS_FAULTS:-}" ]; then
  # netem where the kernel has it, else packet loss through nftables (no added delay).
  probe_ns="srprobe$$"
  if ip netns add "$probe_ns" 2>/dev/null; then
    if ip netns exec "$probe_ns" tc qdisc add dev lo root netem delay 1ms 2>/dev/null; then
      export SYNCRELAY_NETNS_FAULTS=netem
    else
      export SYNCRELAY_NETNS_FAULTS=nft
    fi
    ip netns del "$probe_ns" 2>/dev/null || true
  fi
fi

# Benchmarks are not tests (`cargo bench` runs them): --all-targets would run them too.
cargo test --release --workspace --lib --bins --tests
