#!/usr/bin/env bash
# Compares the collector's exposition parser with Python prometheus_client's text parser
# (prometheus_client.parser.text_string_to_metric_families) on the same page, in one run:
# the median seconds per parse of each over N parses, and the ratio python/rust.
#
# Usage: collector/bench/compare_python.sh [PAGE] [ITERATIONS]
#   PAGE defaults to the etcd 3.4.23 fixture, ITERATIONS to 200.
#   DR_VENV: the Python venv to use (created if missing), default target/venv.
set -euo pipefail

prometheus_client_version="0.21.1"

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
page="${1:-$repo/fixtures/etcd-3.4.23-metrics.txt}"
iterations="${2:-200}"
if [[ ! -f "$page" ]]; then
    echo "compare_python: no page at $page" >&2
    exit 2
fi
page="$(cd "$(dirname "$page")" && pwd)/$(basename "$page")"
cd "$repo"
venv="${DR_VENV:-target/venv}"

if [[ ! -x "$venv/bin/python" ]]; then
    python3 -m venv "$venv"
fi
installed="$("$venv/bin/python" -c \
    'import importlib.metadata as m; print(m.version("prometheus_client"))' 2>/dev/null || true)"
if [[ "$installed" != "$prometheus_client_version" ]]; then
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        "prometheus_client==$prometheus_client_version"
fi

read -r rust rust_families rust_samples < <(
    cargo run --quiet --release -p dr-collector --example parse_timing -- "$page" "$iterations"
)
read -r python python_families python_samples < <(
    "$venv/bin/python" "$here/compare_python.py" "$page" "$iterations"
)

awk -v rust="$rust" -v python="$python" -v n="$iterations" -v version="$prometheus_client_version" \
    -v rf="$rust_families" -v rs="$rust_samples" -v pf="$python_families" -v ps="$python_samples" \
    'BEGIN {
        printf "median of %d parses: rust %.1f us, python prometheus_client %s %.1f us, python/rust = %.0fx (families rust %d / python %d, samples %d / %d)\n",
            n, rust * 1e6, version, python * 1e6, python / rust, rf, pf, rs, ps
    }'
