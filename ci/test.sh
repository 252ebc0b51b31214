#!/usr/bin/env bash
# Every test, lint and check, from a fresh machine. `.ci/run` calls this; so can you.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }
started=$SECONDS

step "install what is missing"
bash ci/install-deps.sh
export DR_VENV=${DR_VENV:-$PWD/target/venv}

step "shellcheck"
mapfile -t scripts < <(git ls-files '*.sh' .ci/run)
shellcheck "${scripts[@]}"

step "cargo fmt"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test (unit, integration against real servers, benches in test mode)"
cargo test --workspace --all-targets --locked

for check in ci/check-*.sh; do
  [[ -e $check ]] || continue
  step "$check"
  bash "$check"
done

step "all green in $((SECONDS - started))s"
