#!/usr/bin/env bash
# Fuzzes every parser that sees untrusted bytes with libFuzzer and AddressSanitizer (docs/reliability.md).
#
#   scripts/fuzz.sh                          every target for 60 s each
#   scripts/fuzz.sh --runs 3000 --seed 1     what the test suite runs: each target briefly and
#                                            reproducibly (fixed seed, fixed count), so the harness stays alive
#   scripts/fuzz.sh --runs 10000000 --jobs 2 frame-parser http-head
#
# Seeds come from ../shared/captures and Tests/Regressions; the corpus each target grows is kept in
# .build-fuzz/corpus/<target> so later runs go on from it. An input that crashes, hangs or leaks is
# copied to Tests/Regressions/<target>/ (commit it: `swift test` replays every kept input) and the
# script exits 1. The table at the end has the figures docs/reliability.md reports.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

seconds=60
runs=-1
jobs=1
seed=0
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds="$2"; shift 2 ;;
    --runs) runs="$2"; seconds=0; shift 2 ;;
    --jobs) jobs="$2"; shift 2 ;;
    --seed) seed="$2"; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    -*) echo "fuzz.sh: unknown option $1 (see --help)" >&2; exit 64 ;;
    *) targets+=("$1"); shift ;;
  esac
done

"$root/scripts/setup.sh"
captures="$root/../shared/captures"
if [ ! -d "$captures" ]; then
  echo "fuzz.sh: the reference captures are missing ($captures); they seed the corpora" >&2
  exit 1
fi

# The replaying build (no sanitizer) writes the seeds; the libFuzzer build does the fuzzing.
swift build --product wstap-fuzz >/dev/null
swift build -c release --product wstap-fuzz --scratch-path .build-fuzz \
  --sanitize=fuzzer --sanitize=address -Xswiftc -DWSTAP_LIBFUZZER \
  -Xswiftc -sanitize-coverage=edge,inline-8bit-counters,pc-table,trace-cmp >/dev/null
fuzzer="$root/.build-fuzz/release/wstap-fuzz"

# A folder per run, so that a second run started beside a long one does not take its logs away.
work="$root/.build-fuzz/work/$$"
rm -rf "$work"
mkdir -p "$work/seeds" "$work/artifacts" "$work/logs"
"$root/.build/debug/wstap-fuzz" seeds "$work/seeds" "$captures" "$root/Tests/Regressions" >/dev/null
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <("$root/.build/debug/wstap-fuzz" list | cut -f1)
fi

run_target() {
  local target="$1"
  local max_len
  max_len=$("$root/.build/debug/wstap-fuzz" list | awk -F'\t' -v t="$target" '$1 == t {print $2}')
  if [ -z "$max_len" ]; then echo "fuzz.sh: no fuzz target named $target" >"$work/logs/$target.log"; return; fi
  local corpus="$root/.build-fuzz/corpus/$target"
  mkdir -p "$corpus" "$work/artifacts/$target"
  local limit=(-seed="$seed")
  if [ "$runs" -ge 0 ]; then limit+=(-runs="$runs"); else limit+=(-max_total_time="$seconds"); fi
  # -timeout: an input that takes 10 s is a hang; -rss_limit_mb: memory that grows without bound.
  # SWIFT_BACKTRACE off: Swift's own crash reporter reads memory ASan has poisoned and reports itself.
  # malloc_context_size=0: no allocation stacks (a third of the time of allocation-heavy targets);
  # a finding is replayed with .build/debug/wstap-fuzz run for its stack.
  WSTAP_FUZZ_TARGET="$target" ASAN_OPTIONS=detect_leaks=1:malloc_context_size=0 SWIFT_BACKTRACE=enable=no \
    "$fuzzer" "$corpus" "$work/seeds/$target" \
    "${limit[@]}" -max_len="$max_len" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$work/artifacts/$target/" >"$work/logs/$target.log" 2>&1 || true
}

running=0
for target in "${targets[@]}"; do
  run_target "$target" &
  running=$((running + 1))
  if [ "$running" -ge "$jobs" ]; then wait -n; running=$((running - 1)); fi
done
wait

status=0
printf '| target | executions | seconds | executions/s | corpus | findings |\n|---|---:|---:|---:|---:|---|\n'
for target in "${targets[@]}"; do
  log="$work/logs/$target.log"
  executed=$(grep -o 'stat::number_of_executed_units:[[:space:]]*[0-9]*' "$log" | tail -1 | awk '{print $2}' || true)
  took=$(grep -o 'Done [0-9]* runs in [0-9]* second' "$log" | tail -1 | awk '{print $5}' || true)
  per_second=$(grep -o 'stat::average_exec_per_sec:[[:space:]]*[0-9]*' "$log" | tail -1 | awk '{print $2}' || true)
  # A run that stopped on a finding prints no final statistics; its last status line has the count.
  if [ -z "$executed" ]; then
    executed=$(grep -o '^#[0-9]*' "$log" | tail -1 | tr -d '#' || true)
  fi
  corpus=$(find "$root/.build-fuzz/corpus/$target" -type f | wc -l)
  findings=()
  for artifact in "$work/artifacts/$target"/*; do
    [ -e "$artifact" ] || continue
    kept="$root/Tests/Regressions/$target/$(basename "$artifact")"
    mkdir -p "$(dirname "$kept")"
    cp "$artifact" "$kept"
    findings+=("$(basename "$artifact")")
    status=1
  done
  if [ -z "$executed" ]; then
    findings+=("the fuzzer did not run: see $log")
    status=1
  fi
  printf '| %s | %s | %s | %s | %s | %s |\n' "$target" "${executed:-?}" "${took:-?}" "${per_second:-?}" "$corpus" \
    "$([ ${#findings[@]} -eq 0 ] && echo none || echo "${findings[*]}")"
done
if [ "$status" -ne 0 ]; then
  echo "fuzz.sh: findings were copied to Tests/Regressions/ (logs in $work/logs); replay one with" >&2
  echo "  .build/debug/wstap-fuzz run TARGET Tests/Regressions/TARGET/FILE" >&2
fi
exit "$status"
