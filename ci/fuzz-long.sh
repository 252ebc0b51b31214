#!/usr/bin/env bash
# The long run of the bad-input property tests, outside CI: a million generated inputs
# (PROPTEST_CASES, default 1000000) for each of
#   - the collector's exposition parser and filter (collector/tests/exposition_props.rs):
#     arbitrary text and bytes, token soup, the real etcd page mutated byte by byte and
#     line by line; no panic, refusals one line, what is pushed bounded and parsing back;
#   - the remediator's webhook body parser (remediator/src/webhook.rs, mod props): bytes,
#     any JSON, payload-shaped JSON, the real Alertmanager body mutated; no panic, every
#     refusal a typed PayloadError in one bounded line;
#   - the detector's POST /score through its router (detector/src/serving/http.rs, mod
#     props): bytes, any JSON, windows of any numbers, test and shipped model; never a
#     5xx, every 4xx a JSON {"error": ...}, every 200 a finite score.
# The normal test suite runs the same tests with 256-512 cases each (seconds).
#
# Usage: ci/fuzz-long.sh [collector|remediator|detector ...]   (default: all three)
# Env:   PROPTEST_CASES (default 1000000); FUZZ_PROFILE=release to build optimised (the
#        default dev profile reuses the normal test build; dependencies are optimised
#        there too). A million cases take hours per suite on one core: run it on a spare
#        machine or overnight. A failure prints proptest's minimal failing input.
set -euo pipefail
cd "$(dirname "$0")/.."

export PROPTEST_CASES=${PROPTEST_CASES:-1000000}
profile=()
if [[ ${FUZZ_PROFILE:-dev} == release ]]; then
  profile=(--release)
fi

suites=("$@")
if [[ ${#suites[@]} -eq 0 ]]; then
  suites=(collector remediator detector)
fi

run() {
  local name=$1
  shift
  local started=$SECONDS
  echo "== $name: $PROPTEST_CASES cases per property"
  cargo test --locked "${profile[@]}" "$@"
  echo "== $name: passed in $((SECONDS - started)) s"
}

for suite in "${suites[@]}"; do
  case $suite in
    collector) run collector -p dr-collector --test exposition_props ;;
    remediator) run remediator -p dr-remediator --lib webhook::props ;;
    detector) run detector -p dr-detector --lib serving::http::props ;;
    *)
      echo "unknown suite $suite: want collector, remediator or detector" >&2
      exit 2
      ;;
  esac
done
