#!/usr/bin/env bash
# Soak test: an origin → relay → edge chain of real syncrelay-node processes on loopback (ephemeral
# ports, temporary folder) under several concurrent writers (through the edge and the origin) and
# readers (through the relay and the edge) for the given time; then every acknowledged entry must be
# listed once and readable at every node.
#
#   scripts/soak.sh [minutes]          (default 10)
#
# Reports entries acknowledged, lost (acknowledged but not readable at every node at the end: must be
# 0) and duplicates (must be 0), and every 30 s the resident memory (VmRSS) and open file descriptors
# of each node. Exit status 1 when something was lost or duplicated. Not part of the test command.
# Environment: SOAK_NICE (default 15) niceness of the build and of everything started;
# SOAK_ARGS extra arguments of the load generator (node/examples/soak.rs, e.g. "--edge-writers 4");
# SOAK_KEEP=1 keeps the temporary folder (node logs) for inspection.
set -euo pipefail
cd "$(dirname "$0")/.."

minutes="${1:-10}"
[[ "$minutes" =~ ^[0-9]+$ ]] || { echo "usage: $0 [minutes]" >&2; exit 2; }
nice_level="${SOAK_NICE:-15}"
run() { nice -n "$nice_level" "$@"; }

echo "== build (release)"
run cargo build --release -p syncrelay-node --bin syncrelay-node --example soak
target_dir="$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
bin="$target_dir/release/syncrelay-node"
soak="$target_dir/release/examples/soak"

tmp="$(mktemp -d -t syncrelay-soak.XXXXXX)"
declare -A pid
sampler=""
load=""
cleanup() {
  local status=$?
  trap - EXIT INT TERM
  for p in $load $sampler; do kill "$p" 2>/dev/null || true; done
  for n in edge relay origin; do
    if [[ -n "${pid[$n]:-}" ]]; then
      kill -TERM "${pid[$n]}" 2>/dev/null || true
    fi
  done
  for n in edge relay origin; do
    if [[ -n "${pid[$n]:-}" ]]; then
      # SIGTERM drains and flushes; SIGKILL after 10 s.
      for _ in $(seq 100); do kill -0 "${pid[$n]}" 2>/dev/null || break; sleep 0.1; done
      kill -KILL "${pid[$n]}" 2>/dev/null || true
    fi
  done
  if [[ "${SOAK_KEEP:-0}" == 1 ]]; then
    echo "kept $tmp"
  else
    rm -rf "$tmp"
  fi
  exit "$status"
}
trap cleanup EXIT INT TERM

# Starts node $1 from $tmp/$1/node.yaml; sets url_$1 from its "listening on" line.
start() {
  local n="$1"
  RUST_LOG="${RUST_LOG:-warn}" nice -n "$nice_level" "$bin" serve --config "$tmp/$n/node.yaml" >"$tmp/$n/stdout" 2>"$tmp/$n/stderr" &
  pid[$n]=$!
  local url=""
  for _ in $(seq 600); do
    url="$(sed -n 's/^listening on //p' "$tmp/$n/stdout" | head -1)"
    [[ -n "$url" ]] && break
    kill -0 "${pid[$n]}" 2>/dev/null || { cat "$tmp/$n/stderr" >&2; echo "$n exited" >&2; exit 1; }
    sleep 0.1
  done
  [[ -n "$url" ]] || { echo "$n did not report its address" >&2; exit 1; }
  printf -v "url_$n" '%s' "$url"
  echo "   $n: $url (pid ${pid[$n]})"
}

echo "== chain in $tmp"
run "$soak" config --dir "$tmp" --node origin
start origin
run "$soak" config --dir "$tmp" --node relay --upstream "$url_origin"
start relay
run "$soak" config --dir "$tmp" --node edge --upstream "$url_relay"
start edge

series="$tmp/series.tsv"
sample() {
  local t="$1" n rss fds
  for n in origin relay edge; do
    rss="$(awk '/^VmRSS:/ {print $2}' "/proc/${pid[$n]}/status" 2>/dev/null || echo '-')"
    fds="$(ls "/proc/${pid[$n]}/fd" 2>/dev/null | wc -l)"
    printf '%s\t%s\t%s\t%s\n' "$t" "$n" "$rss" "$fds" | tee -a "$series"
  done
}

echo "== load for $minutes min (memory: VmRSS KiB; fds: open file descriptors)"
printf 't_s\tnode\trss_kib\tfds\n' | tee "$series"
started=$(date +%s)
(
  nap=""
  trap '[[ -n "$nap" ]] && kill "$nap" 2>/dev/null; exit 0' TERM
  t=0
  while :; do
    sample "$t"
    sleep 30 &
    nap=$!
    wait "$nap"
    t=$(( $(date +%s) - started ))
  done
) &
sampler=$!

# In the background and waited for, so that a signal to this script is handled at once.
# shellcheck disable=SC2086
nice -n "$nice_level" "$soak" run --dir "$tmp" --origin "$url_origin" --relay "$url_relay" \
  --edge "$url_edge" --seconds $(( minutes * 60 )) ${SOAK_ARGS:-} >"$tmp/load.log" 2>&1 &
load=$!
# Shows the load generator's lines as they come; ends once it has exited.
tail -n +1 -f --pid="$load" "$tmp/load.log" &
shown=$!
status=0
wait "$load" || status=$?
load=""
wait "$shown" || true
kill "$sampler" 2>/dev/null || true
wait "$sampler" 2>/dev/null || true
sampler=""
echo "-- after the final check"
sample "end-$(( $(date +%s) - started ))"

echo "== summary"
grep '^SOAK RESULT' "$tmp/load.log" || echo "no result line (load generator failed, status $status)"
echo "memory/fd series (t_s node rss_kib fds):"
column -t "$series" 2>/dev/null || cat "$series"
for n in origin relay edge; do
  if [[ -s "$tmp/$n/stderr" ]]; then
    echo "-- $n stderr (last 5 lines)"
    tail -5 "$tmp/$n/stderr"
  fi
done
exit "$status"
