#!/usr/bin/env bash
# Placeholder while the workspace is laid down; replaced in the same session.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace
