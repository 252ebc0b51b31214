#!/usr/bin/env bash
# Every test, lint and check, from a fresh machine. `.ci/run` calls this; so can you.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }
started=$SECONDS
# A clean checkout gains nothing from incremental caches; they only cost disk.
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}
df -h . | sed 's/^/disk: /'

step "install what is missing"
bash ci/install-deps.sh
export DR_VENV=${DR_VENV:-$PWD/target/venv}

step "lint: shellcheck, rustfmt, clippy, Dockerfiles, Helm chart, Jenkinsfile"
bash ci/lint.sh

step "tests: unit, integration against real servers, benches in test mode"
bash ci/unit.sh

step "detector: numpy reference forward pass agrees with dr-detector"
bash ci/check-detector-reference.sh

# Built once here for the notebook (its evaluation of every test recording takes minutes
# in a debug build), the images and the drill.
step "release binaries"
bash ci/build-images.sh --binaries-only
target_dir=${CARGO_TARGET_DIR:-target}
[[ $target_dir == /* ]] || target_dir=$PWD/$target_dir

step "notebook: runs headless, numpy agrees with dr-detector"
DR_DETECTOR_BIN=$target_dir/release/dr-detector bash ci/check-notebook.sh

step "images: build, --version in each container"
bash ci/check-images.sh

# rule-only and member-down add about 2.5 min and need no model verdict on a new incident;
# busy-normal (about 4 min) proves ten times the load is not an incident. leader and
# slow-disk depend on the model firing (and slow-disk on the disk) and run from
# `e2e/drill.sh --scenario all`.
step "the DR drill on the real stack: nospace, restore, busy-normal, rule-only, member-down"
bash e2e/drill.sh --scenario nospace,restore,busy-normal,rule-only,member-down

step "all green in $((SECONDS - started))s"
