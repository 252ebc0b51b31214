#!/usr/bin/env bash
# Containerised smoke test: etcd, dr-remediator, dr-detector and dr-collector from their
# images on one Docker network. An authenticated Alertmanager webhook makes the remediator
# write a verified snapshot; the detector scores a window; the collector scrapes etcd.
# Ports are published on 127.0.0.1 only; everything started here is removed on exit.
#   ci/smoke-containers.sh TAG      (images from ci/build-images.sh TAG ... etcd-test)
set -euo pipefail
cd "$(dirname "$0")/.."
tag=${1:?usage: ci/smoke-containers.sh TAG}

run_id=dr-smoke-$$
work=$(mktemp -d)
containers=()
cleanup() {
  ((${#containers[@]})) && docker rm -f "${containers[@]}" >/dev/null 2>&1
  docker network rm "$run_id" >/dev/null 2>&1
  rm -rf "$work"
}
trap cleanup EXIT
fail() {
  echo "smoke: $*" >&2
  for c in "${containers[@]}"; do
    echo "--- last log lines of $c" >&2
    docker logs --tail 20 "$c" >&2 || true
  done
  exit 1
}
# start NAME [docker run options...] -- IMAGE [args...]
start() {
  local name=$run_id-$1
  shift
  local options=()
  while [[ $1 != -- ]]; do options+=("$1"); shift; done
  shift
  docker run -d --name "$name" --network "$run_id" --network-alias "${name#"$run_id"-}" \
    --read-only --cap-drop ALL --security-opt no-new-privileges "${options[@]}" "$@" >/dev/null
  containers+=("$name")
}
host_port() { docker port "$run_id-$1" "$2/tcp" | head -n 1 | sed 's/.*://'; }
wait_http() { # URL WHAT
  for _ in $(seq 60); do
    curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
    sleep 0.5
  done
  fail "$2 did not answer $1 within 30 s"
}

docker network create "$run_id" >/dev/null

start etcd --tmpfs /tmp:uid=65532,gid=65532 -- "etcd-dr/etcd-test:$tag" \
  --name smoke --data-dir /tmp/etcd \
  --listen-client-urls http://0.0.0.0:2379 --advertise-client-urls http://etcd:2379 \
  --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
  --initial-cluster smoke=http://127.0.0.1:2380 --listen-metrics-urls http://0.0.0.0:2381

token=smoke-$RANDOM-$RANDOM
printf '%s' "$token" >"$work/token"
mkdir "$work/snapshots"
chmod 0644 "$work/token"
chown 65532:65532 "$work/snapshots" 2>/dev/null || chmod 0777 "$work/snapshots"
start remediator -p 127.0.0.1::9312 -v "$work/token:/run/dr/token:ro" -v "$work/snapshots:/snapshots" -- \
  "etcd-dr/dr-remediator:$tag" --etcd-endpoints http://etcd:2379 --snapshot-dir /snapshots \
  --webhook-token-file /run/dr/token --health-wait 1s --cooldown 1m --listen 0.0.0.0:9312
start detector -p 127.0.0.1::9311 -- "etcd-dr/dr-detector:$tag" serve \
  --prometheus-url http://prometheus.invalid:9090 --listen 0.0.0.0:9311

remediator=http://127.0.0.1:$(host_port remediator 9312)
detector=http://127.0.0.1:$(host_port detector 9311)
wait_http "$remediator/healthz" "dr-remediator"
wait_http "$detector/healthz" "dr-detector"

# The collector scrapes etcd in its container; nothing accepts its push, and it must say so.
collector_out=$(docker run --rm --network "$run_id" --read-only --cap-drop ALL \
  "etcd-dr/dr-collector:$tag" --once --etcd-metrics-url http://etcd:2381/metrics \
  --pushgateway-url http://etcd:2381 2>&1) && fail "collector --once pushed to etcd's metrics port?"
[[ $collector_out == *"Pushgateway refused with HTTP"* ]] ||
  fail "collector did not get as far as the push: $collector_out"
echo "smoke: collector scraped etcd in its container ($collector_out)"

# The detector scores a window of the right shape.
window=$(python3 -c 'import json; m = json.load(open("detector/models/default/model.json"))
print(json.dumps({"window": [[0.0] * len(m["features"])] * m["window"]}))')
score=$(curl -fsS -X POST -H 'Content-Type: application/json' --data "$window" "$detector/score") ||
  fail "detector POST /score failed"
[[ $score == *'"score"'* && $score == *'"threshold"'* ]] || fail "detector answered $score"
echo "smoke: detector scored a window: ${score:0:80}..."

# A webhook without the token does nothing; with it, a remediation starts and snapshots.
status=$(curl -s -o /dev/null -w '%{http_code}' -X POST -H 'Content-Type: application/json' \
  --data @fixtures/alertmanager-0.25-webhook-firing.json "$remediator/webhook")
[[ $status == 401 ]] || fail "webhook without a token answered $status, want 401"
answer=$(curl -fsS -X POST -H 'Content-Type: application/json' -H "Authorization: Bearer $token" \
  --data @fixtures/alertmanager-0.25-webhook-firing.json "$remediator/webhook") ||
  fail "authenticated webhook refused"
[[ $answer == *action_id* ]] || fail "webhook did not start a remediation: $answer"
for _ in $(seq 60); do
  compgen -G "$work/snapshots/*.db" >/dev/null && break
  sleep 0.5
done
snapshot=$(compgen -G "$work/snapshots/*.db" | head -n 1) || fail "no snapshot within 30 s"
etcdctl snapshot status "$snapshot" >/dev/null || fail "snapshot $snapshot does not verify"
echo "smoke: webhook led to a verified snapshot $(basename "$snapshot") ($(stat -c %s "$snapshot") bytes)"
