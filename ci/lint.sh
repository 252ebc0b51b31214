#!/usr/bin/env bash
# Every static check: shell scripts, Rust formatting and lints, Dockerfiles, the Helm chart,
# docs/operations.md against the chart, the Jenkinsfile's syntax. The Jenkins "Lint" stage
# runs this; so does ci/test.sh.
# Needs ci/install-deps.sh to have run (DR_VENV points at its venv).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${DR_VENV:-target/venv}

step() { printf '\n--> %s\n' "$*"; }

step "shellcheck"
mapfile -t scripts < <(git ls-files '*.sh' .ci/run)
shellcheck "${scripts[@]}"
bash ci/check-pipeline-scripts.sh

step "cargo fmt"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "Dockerfiles (checkov, offline)"
BC_SKIP_MAPPING=TRUE "$venv/bin/checkov" --quiet --compact --skip-download \
  --framework dockerfile --directory docker

step "Helm chart (and every flag it passes, against the binaries' --help)"
# The debug binaries are what the unit tests build anyway; building them here costs nothing.
cargo build --workspace --bins --locked --quiet
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
DR_BIN_DIR=$target_dir/debug bash ci/check-chart.sh

step "docs/operations.md against the chart (values, rendered objects, paths, flags)"
DR_BIN_DIR=$target_dir/debug bash ci/check-docs.sh

step "Jenkinsfile parses as Groovy"
# Debian's groovy looks for /usr/lib/jvm/default-java, absent when another JDK satisfied it.
java_bin=$(readlink -f "$(command -v java)")
JAVA_HOME=${JAVA_HOME:-${java_bin%/bin/java}} groovy ci/parse-groovy.groovy Jenkinsfile
