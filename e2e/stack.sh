#!/usr/bin/env bash
# Start and stop the real stack (etcd, Pushgateway, Prometheus, Alertmanager) on loopback.
#
#   e2e/stack.sh up [--members 1|3] [--etcd 3.4|3.5|3.6|3.7] [--quota BYTES] [--tls] [--pushgateway]
#                   [--prometheus] [--prometheus-config FILE] [--rules FILE ...]
#                   [--alertmanager-config FILE]
#   e2e/stack.sh env | down | wait-healthy | stop-member N | start-member N
#
# State lives in $DR_STACK_DIR (default: target/stack in the repo): stack.env (source it),
# pids, logs, data. `down` stops exactly the recorded processes. Cleaning up on exit
# (a trap calling `down`) is the caller's business.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dir=${DR_STACK_DIR:-$root/target/stack}
target_dir=${CARGO_TARGET_DIR:-$root/target}
[[ $target_dir == /* ]] || target_dir=$PWD/$target_dir

usage() {
  sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

if (($# == 0)); then
  usage >&2
  exit 2
fi

cmd=$1
shift
case $cmd in
  up | down | env | stop-member | start-member | wait-healthy) ;;
  -h | --help | help)
    usage
    exit 0
    ;;
  *)
    echo "stack.sh: unknown command '$cmd'" >&2
    usage >&2
    exit 2
    ;;
esac

if [[ ${DR_STACK_SKIP_BUILD:-0} != 1 ]]; then
  cargo build -q --manifest-path "$root/Cargo.toml" -p dr-testkit --bin dr-stack
fi

mkdir -p "$dir"
exec "$target_dir/debug/dr-stack" "$cmd" --dir "$dir" "$@"
