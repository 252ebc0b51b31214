#!/usr/bin/env bash
# Peak resident memory of a running dr-collector (release build) scraping a real etcd and
# pushing to a real Pushgateway every second. Usage: collector/bench/rss.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=${1:-30}

cargo build -q --release -p dr-collector
stack_dir=$(mktemp -d)
export DR_STACK_DIR=$stack_dir
collector_pid=
cleanup() {
  [[ -n $collector_pid ]] && kill "$collector_pid" 2>/dev/null && wait "$collector_pid" 2>/dev/null
  bash e2e/stack.sh down >/dev/null 2>&1 || true
  rm -rf "$stack_dir"
}
trap cleanup EXIT

bash e2e/stack.sh up --etcd 3.4 --pushgateway >/dev/null
# shellcheck source=/dev/null
source "$stack_dir/stack.env"

target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
"$target_dir/release/dr-collector" --etcd-metrics-url "$ETCD_METRICS_URLS" \
  --pushgateway-url "$PUSHGATEWAY_URL" --interval 1s --timeout 900ms \
  --listen 127.0.0.1:0 >"$stack_dir/collector.log" 2>&1 &
collector_pid=$!
sleep "$seconds"
pushes=$(grep -c '"pushed"\|pushed' "$stack_dir/collector.log" || true)
hwm=$(awk '/VmHWM/ {print $2}' "/proc/$collector_pid/status")
rss=$(awk '/VmRSS/ {print $2}' "/proc/$collector_pid/status")
echo "dr-collector after ${seconds}s (${pushes} pushes): VmRSS ${rss} kB, peak VmHWM ${hwm} kB"
