#!/usr/bin/env bash
# Bounded fuzzing of every decoder of syncrelay-node that takes outside bytes (fuzz/, cargo-fuzz):
# installs cargo-fuzz if missing, builds all targets, runs each for SECONDS (default 30) on its
# committed corpus (fuzz/corpus/<target>, read only: new inputs go to a scratch folder), and fails
# if any target crashes, times out or runs out of memory. See RELIABILITY-fuzz.md.
#
#   bash scripts/fuzz.sh [SECONDS-PER-TARGET]
#
# Environment (defaults chosen for a short CI run on 2 cores; see RELIABILITY-fuzz.md):
#   FUZZ_SANITIZER      none (default: libFuzzer coverage only) or address (AddressSanitizer)
#   FUZZ_PROFILE        dev (default: fuzz/Cargo.toml's quick-to-build profile) or release
#   FUZZ_CODEGEN_UNITS  16 by default (cargo-fuzz's own default, 1, builds much slower)
#   FUZZ_TARGETS        a space-separated subset of the targets
#   CARGO_BUILD_JOBS    cargo's own: build jobs
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_TARGET="${1:-30}"
SANITIZER="${FUZZ_SANITIZER:-none}"
start=$(date +%s)

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  cargo install cargo-fuzz --locked --version "${CARGO_FUZZ_VERSION:-0.13.2}"
fi
cargo fuzz --version

# cargo-fuzz passes nightly flags (-Zsanitizer, -Cpasses=sancov-module ...); this machine has only
# a stable toolchain, which accepts them under RUSTC_BOOTSTRAP=1.
export RUSTC_BOOTSTRAP=1
build_args=(--sanitizer "$SANITIZER" --codegen-units "${FUZZ_CODEGEN_UNITS:-16}")
case "${FUZZ_PROFILE:-dev}" in
  dev) build_args+=(--dev) ;;
  release) build_args+=(--release) ;;
  *) echo "FUZZ_PROFILE must be dev or release" >&2; exit 2 ;;
esac

echo "== building the fuzz targets (${build_args[*]})"
cargo fuzz build "${build_args[@]}"
built=$(date +%s)

targets="${FUZZ_TARGETS:-$(cargo fuzz list)}"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
failed=()
for target in $targets; do
  echo "== fuzzing $target for ${SECONDS_PER_TARGET}s"
  mkdir -p "$scratch/$target"
  log="$scratch/$target.log"
  extra=()
  case "$target" in
    wire_requests | wire_responses | entry_metadata | directory_yaml) extra+=(-dict=fuzz/dict/wire.dict) ;;
  esac
  # -timeout: an input slower than 10 s is a failure; -rss_limit_mb: so is one needing 2 GB.
  if cargo fuzz run "${build_args[@]}" "$target" "$scratch/$target" "fuzz/corpus/$target" -- \
      -max_total_time="$SECONDS_PER_TARGET" -timeout=10 -rss_limit_mb=2048 \
      -print_final_stats=1 "${extra[@]}" >"$log" 2>&1; then
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
    echo "   $target: no crash, $execs executions"
  else
    failed+=("$target")
    echo "   $target: FAILED; libFuzzer's report:" >&2
    grep -v '^#[0-9]' "$log" | tail -60 >&2
    for artifact in fuzz/artifacts/"$target"/*; do
      [[ -f "$artifact" ]] || continue
      echo "   reproducer $artifact (base64): $(base64 -w0 "$artifact")" >&2
      echo "   rerun: RUSTC_BOOTSTRAP=1 cargo fuzz run ${build_args[*]} $target $artifact" >&2
    done
  fi
done

end=$(date +%s)
echo "== fuzz: $(wc -w <<<"$targets") targets, ${#failed[@]} crashed; install+build $((built - start))s, total $((end - start))s"
if (( ${#failed[@]} > 0 )); then
  echo "crashed: ${failed[*]}" >&2
  exit 1
fi
