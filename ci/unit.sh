#!/usr/bin/env bash
# Unit and integration tests (against real servers) of the whole workspace, benches in test
# mode, doc tests. With --junit (the Jenkins "Unit" stage) the tests run under
# cargo-nextest and leave a JUnit report at target/nextest/ci/junit.xml.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ ${1:-} == --junit ]]; then
  cargo nextest --version >/dev/null 2>&1 || cargo install --locked cargo-nextest
  cargo nextest run --workspace --locked --profile ci
  cargo test --workspace --locked --benches
else
  cargo test --workspace --all-targets --locked
fi
cargo test --workspace --locked --doc
