#!/usr/bin/env bash
# etcd 3.5 and 3.7 for the tests and the drill (3.4 is Debian's, 3.6 the workspace's own
# vendored crate): each from its crates.io `etcd-bin-vendored-linux-amd64` line, through a
# one-file crate outside the workspace (ci/etcd-versions/<v>/), copied to
# target/etcd/<v>/etcd, where the testkit looks first. Only what is missing is fetched.
#   ci/install-etcd-versions.sh [3.5 3.7]
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ $(uname -s)/$(uname -m) != Linux/x86_64 ]]; then
  echo "install-etcd-versions: the vendored binaries are linux/amd64 only; skipping"
  exit 0
fi
target_dir=${CARGO_TARGET_DIR:-$PWD/target}
[[ $target_dir == /* ]] || target_dir=$PWD/$target_dir
versions=("$@")
((${#versions[@]})) || versions=(3.5 3.7)
for v in "${versions[@]}"; do
  out=$target_dir/etcd/$v/etcd
  [[ -x $out ]] && continue
  manifest=ci/etcd-versions/$v/Cargo.toml
  [[ -f $manifest ]] || { echo "install-etcd-versions: no $manifest" >&2; exit 2; }
  path=$(CARGO_TARGET_DIR=$target_dir/etcd-versions cargo run --quiet --locked --manifest-path "$manifest")
  mkdir -p "$(dirname "$out")"
  cp "$path" "$out.tmp"
  chmod 0755 "$out.tmp"
  mv "$out.tmp" "$out"
  echo "install-etcd-versions: etcd $("$out" --version | head -n 1 | awk '{print $3}') at $out"
done
