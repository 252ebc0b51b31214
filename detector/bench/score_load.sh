#!/usr/bin/env bash
# POST /score under load from a separate process, with wrk (Debian's `wrk`, installed if
# missing): the detector's serving benchmark. Starts its own dr-detector on a free loopback
# port (POST /score needs no Prometheus), posts a normal window for the model, prints
# wrk's report and one JSON line: requests/s and latency percentiles.
#
#   detector/bench/score_load.sh [--model DIR] [--connections 16] [--seconds 10] [--threads 1]
#
# The targets (issue: >= 5,000 req/s, p99 < 5 ms on 2 cores) are for a release build; the
# script builds one unless DR_BIN_DIR points at binaries.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"

model="" connections=16 seconds=10 threads=1
while (($#)); do
  case $1 in
    --model) model=$2; shift 2 ;;
    --connections) connections=$2; shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    -h | --help) sed -n '2,11p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "score_load.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

if ! command -v wrk >/dev/null; then
  sudo_cmd=()
  [[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends wrk >/dev/null
fi
bin_dir=${DR_BIN_DIR:-}
if [[ -z $bin_dir ]]; then
  cargo build --release --locked --quiet -p dr-detector
  bin_dir=${CARGO_TARGET_DIR:-$root/target}/release
fi

work=$(mktemp -d)
detector_pid=""
cleanup() {
  if [[ -n $detector_pid ]] && kill -0 "$detector_pid" 2>/dev/null; then
    kill -TERM "$detector_pid"
    wait "$detector_pid" || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
model_args=()
[[ -n $model ]] && model_args=(--model "$model")
"$bin_dir/dr-detector" serve "${model_args[@]}" --prometheus-url http://127.0.0.1:9 \
  --listen "127.0.0.1:$port" --refresh 1h >"$work/detector.log" 2>&1 &
detector_pid=$!
for _ in $(seq 100); do
  curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done

# A normal window: every feature at its training mean (from the served model's metadata).
model_json=${model:+$model/model.json}
model_json=${model_json:-detector/models/default/model.json}
python3 - "$model_json" >"$work/body.json" <<'PY'
import json, sys
meta = json.load(open(sys.argv[1]))
mean = meta["normalisation"]["mean"]
print(json.dumps({"window": [list(mean) for _ in range(meta["window"])]}))
PY
status=$(curl -s -o "$work/first.json" -w '%{http_code}' -H 'Content-Type: application/json' \
  --data @"$work/body.json" "http://127.0.0.1:$port/score")
if [[ $status != 200 ]]; then
  echo "score_load.sh: POST /score answered $status: $(cat "$work/first.json")" >&2
  exit 1
fi
cat >"$work/post.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = io.open("$work/body.json", "r")
wrk.body = f:read("*a")
f:close()
done = function(summary, latency, requests)
  io.write(string.format('{"requests_per_second": %.0f, "p50_ms": %.3f, "p90_ms": %.3f, "p99_ms": %.3f, "errors": %d, "non_2xx": %d}\n',
    summary.requests / (summary.duration / 1e6), latency:percentile(50) / 1e3,
    latency:percentile(90) / 1e3, latency:percentile(99) / 1e3,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.errors.status))
end
LUA
wrk -t "$threads" -c "$connections" -d "${seconds}s" --latency -s "$work/post.lua" \
  "http://127.0.0.1:$port/score"
