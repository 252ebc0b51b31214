#!/usr/bin/env bash
# Snapshot + upload to S3, side by side in one run: `dr-remediator --snapshot-once
# --snapshot-store s3://…` (verified snapshot, uploaded as it streams in) against what a
# person would otherwise run, `etcdctl snapshot save` then `aws s3 cp` of the file (the AWS
# CLI from PyPI, in its own venv). Both against the same etcd (Debian's 3.4, filled to about
# --db-mb by dr-loadgen) and the same S3 server (moto, from the project's venv), on
# loopback. Wall time and peak memory (GNU time's maximum RSS; the larger of the two
# commands for the pair) per run, runs alternating which goes first; medians and ratios
# at the end, then one JSON line.
#
#   remediator/bench/snapshot_upload.sh [--db-mb 200] [--runs 3] [--compression zstd]
#
# --compression passes --snapshot-store-compression to dr-remediator (the pair uploads the
# file as it is) and reports the stored object's size. dr-loadgen's values are random
# bytes, so this is compression's worst case: its CPU spent for nothing saved.
#
# Target (issue 16): at most 0.8x the pair's wall time and half its peak memory. Builds
# release binaries unless DR_BIN_DIR points at them. Not run by CI (about 2 minutes).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"

db_mb=200 runs=3 compression=none
while (($#)); do
  case $1 in
    --db-mb) db_mb=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --compression) compression=$2; shift 2 ;;
    -h | --help) sed -n '2,18p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "snapshot_upload.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[[ $db_mb =~ ^[0-9]+$ && $runs =~ ^[1-9][0-9]*$ ]] || {
  echo "snapshot_upload.sh: --db-mb and --runs take whole numbers" >&2
  exit 2
}

bash ci/install-deps.sh >/dev/null
if [[ ! -x /usr/bin/time ]]; then
  sudo_cmd=()
  [[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends time >/dev/null
fi
target_dir=${CARGO_TARGET_DIR:-$root/target}
# The AWS CLI pins its own botocore, unlike moto's: a venv of its own.
aws_venv=$target_dir/bench-venv
[[ -x $aws_venv/bin/aws ]] || {
  python3 -m venv "$aws_venv"
  "$aws_venv/bin/pip" install -q --disable-pip-version-check awscli==1.46.3
}
bin_dir=${DR_BIN_DIR:-}
if [[ -z $bin_dir ]]; then
  cargo build --release --locked --quiet -p dr-remediator -p dr-loadgen
  bin_dir=$target_dir/release
fi

work=$(mktemp -d)
pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid"
      wait "$pid" 2>/dev/null || true
    fi
  done
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
wait_for() { # URL: until it answers, 10 s at most
  local _
  for _ in $(seq 100); do
    curl -s -o /dev/null "$1" && return 0
    sleep 0.1
  done
  echo "snapshot_upload.sh: $1 did not answer" >&2
  exit 1
}

client_port=$(free_port) peer_port=$(free_port) s3_port=$(free_port)
etcd_url=http://127.0.0.1:$client_port
etcd --name bench --data-dir "$work/etcd" \
  --listen-client-urls "$etcd_url" --advertise-client-urls "$etcd_url" \
  --listen-peer-urls "http://127.0.0.1:$peer_port" \
  --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
  --initial-cluster "bench=http://127.0.0.1:$peer_port" \
  --quota-backend-bytes $((4 * 1024 * 1024 * 1024)) >"$work/etcd.log" 2>&1 &
pids+=($!)
wait_for "$etcd_url/health"
"${DR_VENV:-$target_dir/venv}/bin/moto_server" -H 127.0.0.1 -p "$s3_port" >"$work/moto.log" 2>&1 &
pids+=($!)
s3_url=http://127.0.0.1:$s3_port
wait_for "$s3_url"
curl -fsS -X PUT "$s3_url/bench" >/dev/null

echo "filling etcd with about $db_mb MB of 1 MiB values"
"$bin_dir/dr-loadgen" --endpoints "$etcd_url" bigkey --value-size 1MiB \
  --max-bytes "${db_mb}MiB" --rate 400 --duration 600s >"$work/fill.log" 2>&1
db_bytes=$(ETCDCTL_API=3 etcdctl --endpoints "$etcd_url" endpoint status -w json |
  python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["Status"]["dbSize"])')
echo "db: $((db_bytes / 1024 / 1024)) MiB"

export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1
export AWS_ENDPOINT_URL=$s3_url AWS_ALLOW_HTTP=true

# Each prints "wall_seconds peak_kib".
measure() { # OUT CMD...: GNU time's elapsed and maximum RSS of CMD into OUT
  local out=$1
  shift
  /usr/bin/time -f '%e %M' -o "$out" "$@" >>"$work/commands.log" 2>&1 || {
    echo "snapshot_upload.sh: failed: $*; see below" >&2
    tail -n 20 "$work/commands.log" >&2
    exit 1
  }
}
pair() { # RUN
  rm -f "$work/pair.db"
  measure "$work/save" env ETCDCTL_API=3 etcdctl --endpoints "$etcd_url" snapshot save "$work/pair.db"
  measure "$work/cp" "$aws_venv/bin/aws" --endpoint-url "$s3_url" s3 cp --only-show-errors \
    "$work/pair.db" "s3://bench/pair/run-$1.db"
  read -r save_s save_k <"$work/save"
  read -r cp_s cp_k <"$work/cp"
  python3 -c "print($save_s + $cp_s, max($save_k, $cp_k), $save_s, $cp_s)"
  "$aws_venv/bin/aws" --endpoint-url "$s3_url" s3 rm --only-show-errors --recursive s3://bench/pair/
  rm -f "$work/pair.db"
}
ours() { # RUN
  rm -rf "$work/snapshots"
  mkdir -p "$work/snapshots"
  measure "$work/ours" "$bin_dir/dr-remediator" --snapshot-once --etcd-endpoints "$etcd_url" \
    --snapshot-dir "$work/snapshots" --snapshot-store "s3://bench/dr-remediator/run-$1" \
    --snapshot-store-compression "$compression"
  read -r s k <"$work/ours"
  stored=$(python3 -c 'import json,sys
for line in open(sys.argv[1]):
    try:
        up = json.loads(line)["upload"]["uploaded"]
        print(up["stored_bytes"], up["bytes"])
    except (ValueError, KeyError, TypeError):
        pass' "$work/commands.log" | tail -n 1)
  echo "$s $k $stored"  # stored: the object's bytes, then the snapshot's
  "$aws_venv/bin/aws" --endpoint-url "$s3_url" s3 rm --only-show-errors --recursive s3://bench/dr-remediator/
}

: >"$work/results"
printf '%-4s %-28s %10s %12s\n' run command wall_s peak_MiB
for run in $(seq "$runs"); do
  if ((run % 2)); then
    p=$(pair "$run") o=$(ours "$run")
  else
    o=$(ours "$run") p=$(pair "$run")
  fi
  read -r p_s p_k save_s cp_s <<<"$p"
  read -r o_s o_k o_stored o_bytes <<<"$o"
  printf '%-4s %-28s %10.2f %12.1f   (save %.2f s + upload %.2f s)\n' "$run" "etcdctl save + aws s3 cp" \
    "$p_s" "$(python3 -c "print($p_k / 1024)")" "$save_s" "$cp_s"
  printf '%-4s %-28s %10.2f %12.1f   (stored %.1f MiB of %.1f MiB)\n' "$run" "dr-remediator --snapshot-once" "$o_s" \
    "$(python3 -c "print($o_k / 1024)")" "$(python3 -c "print($o_stored / 1048576)")" "$(python3 -c "print($o_bytes / 1048576)")"
  echo "$p_s $p_k $o_s $o_k $o_stored $o_bytes" >>"$work/results"
done

python3 - "$work/results" "$db_bytes" "$compression" <<'PY'
import json, statistics, sys
rows = [list(map(float, line.split())) for line in open(sys.argv[1])]
med = lambda i: statistics.median(r[i] for r in rows)
pair_s, pair_k, ours_s, ours_k = med(0), med(1), med(2), med(3)
result = {
    "db_bytes": int(sys.argv[2]),
    "compression": sys.argv[3],
    "snapshot_bytes": int(med(5)),
    "stored_bytes": int(med(4)),
    "runs": len(rows),
    "pair_wall_seconds": round(pair_s, 2),
    "pair_peak_mib": round(pair_k / 1024, 1),
    "ours_wall_seconds": round(ours_s, 2),
    "ours_peak_mib": round(ours_k / 1024, 1),
    "wall_ratio": round(ours_s / pair_s, 2),
    "memory_ratio": round(ours_k / pair_k, 2),
}
print(f"\nmedians: wall {ours_s:.2f} s vs {pair_s:.2f} s = {result['wall_ratio']}x (target <= 0.8x); "
      f"peak {ours_k/1024:.1f} MiB vs {pair_k/1024:.1f} MiB = {result['memory_ratio']}x (target <= 0.5x)")
print(json.dumps(result))
PY
