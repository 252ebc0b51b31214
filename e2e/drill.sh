#!/usr/bin/env bash
# The DR drill, etcd-dr's main command: installs what is missing, builds the release
# binaries, and runs the whole loop on the real stack (etcd, Pushgateway, Prometheus,
# Alertmanager, collector, detector, remediator; loopback only), one fresh stack per
# scenario. Prints a timeline; writes target/drill/report.json (or $DR_DRILL_REPORT).
#
#   e2e/drill.sh [--scenario all|nospace|restore|false-alarm|busy-normal|rule-only|member-down|leader|slow-disk|disaster]
#                [--members 1|3]
#                [--etcd 3.4|3.5|3.6|3.7] [--model DIR] [--step 1s] [--mttr-budget 120s]
#
# Exit 0 when every scenario passed, 1 when one failed, 2 when the drill could not run.
# Everything it starts is stopped on exit, failure and Ctrl-C. See docs/drill.md.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

case ${1:-} in
  -h | --help)
    sed -n '2,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    exit 0
    ;;
esac

bash ci/install-deps.sh --debian-only
target_dir=${CARGO_TARGET_DIR:-$root/target}
[[ $target_dir == /* ]] || target_dir=$root/$target_dir
echo "drill: building the release binaries"
cargo build --release --locked --quiet \
  -p dr-collector -p dr-detector -p dr-remediator -p dr-loadgen -p dr-e2e
exec "$target_dir/release/dr-drill" --bin-dir "$target_dir/release" "$@"
