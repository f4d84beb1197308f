#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 30) on its corpus and reports executions and
# crashes per target; exits non-zero if any target crashed. Later issues add targets to
# fuzz/Cargo.toml; this script finds them there.
#
#   fuzz/run.sh 60            # every target, 60 s each
#   fuzz/run.sh 10 ticket     # one target
#
# cargo-fuzz drives libFuzzer, which needs nightly-only compiler flags; RUSTC_BOOTSTRAP=1 lets
# the stable toolchain accept them. Targets run without a sanitizer: keywire is safe Rust, so
# what fuzzing finds is panics, which libFuzzer catches as crashes.
set -uo pipefail
cd "$(dirname "$0")"
seconds=${1:-30}
shift || true
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "cargo-fuzz is not installed: cargo install cargo-fuzz --locked" >&2
  exit 2
fi
export RUSTC_BOOTSTRAP=1
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo fuzz list)
fi
failed=0
printf '%-16s %12s %8s %s\n' target executions crashes result
for target in "${targets[@]}"; do
  mkdir -p "corpus/$target" "artifacts/$target"
  log=$(mktemp)
  cargo fuzz run --sanitizer none "$target" "corpus/$target" -- \
    -max_total_time="$seconds" -print_final_stats=1 -artifact_prefix="artifacts/$target/" >"$log" 2>&1
  rc=$?
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  crashes=$(find "artifacts/$target" -type f | wc -l)
  result=ok
  if [ $rc -ne 0 ] || [ "$crashes" -gt 0 ] || [ -z "$execs" ]; then
    result="FAILED (exit $rc); log follows"
    failed=1
  fi
  printf '%-16s %12s %8s %s\n' "$target" "${execs:-?}" "$crashes" "$result"
  if [ "$result" != ok ]; then tail -40 "$log"; fi
  rm -f "$log"
done
exit $failed
