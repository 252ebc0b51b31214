#!/usr/bin/env bash
# Builds the service images, tagged etcd-dr/dr-<service>:TAG, without pulling anything:
# each image is FROM scratch with a rootfs assembled here from the release binary, the
# shared libraries it links (as ldd reports them), CA certificates and a numeric user.
#
#   ci/build-images.sh TAG [collector detector remediator loadgen etcd-test]
#   ci/build-images.sh --binaries-only      # just the release binaries (Jenkins builds them
#                                           # once, then the images in parallel with
#                                           # DR_SKIP_CARGO_BUILD=1)
#
# etcd-test (the vendored etcd 3.6 server) is for the containerised smoke test only.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

all_services=(collector detector remediator loadgen)
if [[ ${1:-} == --binaries-only ]]; then
  cargo build --release --locked "${all_services[@]/#/--package=dr-}"
  exit 0
fi
tag=${1:?usage: ci/build-images.sh TAG [SERVICE...] | --binaries-only}
shift
services=("$@")
((${#services[@]})) || services=("${all_services[@]}")

if ! docker info >/dev/null 2>&1; then
  echo "build-images: no Docker engine answers; cannot build images" >&2
  exit 2
fi

# busybox gives the remediator's restore commands a /bin/sh; CA certificates let the
# services talk to https endpoints signed by public CAs. ci/install-deps.sh installs them
# (Jenkins' "Set up" stage); installing here would race the parallel image stages for
# dpkg's lock.
missing=()
for pkg in busybox-static ca-certificates etcd-client etcd-server util-linux; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "build-images: missing Debian packages ${missing[*]}; install them with: sudo ci/install-deps.sh --debian-only" >&2
  exit 2
fi

binaries=()
for svc in "${services[@]}"; do
  [[ $svc == etcd-test ]] || binaries+=(-p "dr-$svc")
done
if ((${#binaries[@]})) && [[ ${DR_SKIP_CARGO_BUILD:-0} != 1 ]]; then
  cargo build --release --locked "${binaries[@]}"
fi
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')

# Copies an executable and every library ldd resolves for it, at the same paths.
add_executable() {
  local rootfs=$1 source=$2 dest=$3
  install -D -m 0755 "$source" "$rootfs$dest"
  local lib
  while read -r lib; do
    [[ -n $lib ]] && install -D -m 0755 "$(readlink -f "$lib")" "$rootfs$lib"
  done < <(ldd "$source" 2>/dev/null | grep -oE '(/[^ ]+\.so[^ ]*)' | sort -u || true)
}

base_rootfs() {
  local rootfs=$1
  rm -rf "$rootfs"
  install -d -m 1777 "$rootfs/tmp"
  install -d "$rootfs/etc/ssl/certs"
  install -m 0644 /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$rootfs/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' >"$rootfs/etc/group"
  install -d -o 65532 -g 65532 "$rootfs/home/nonroot"
}

version=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"]=="dr-collector"))')
revision=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
created=$(date -u +%Y-%m-%dT%H:%M:%SZ)

for svc in "${services[@]}"; do
  context=$target_dir/images/$svc
  rootfs=$context/rootfs
  base_rootfs "$rootfs"
  case $svc in
    etcd-test)
      etcd_bin=$(find "${CARGO_HOME:-$HOME/.cargo}/registry/src" -path '*etcd-bin-vendored-linux-amd64-3.6*/bin/etcd' | sort | tail -n 1)
      [[ -n $etcd_bin ]] || { echo "build-images: vendored etcd not found; run cargo test -p dr-testkit first" >&2; exit 1; }
      add_executable "$rootfs" "$etcd_bin" /usr/local/bin/etcd
      image=etcd-dr/etcd-test:$tag
      ;;
    *)
      add_executable "$rootfs" "$target_dir/release/dr-$svc" "/usr/local/bin/dr-$svc"
      image=etcd-dr/dr-$svc:$tag
      ;;
  esac
  if [[ $svc == remediator ]]; then
    # The tools the restore commands (and the kubeadm preset's) call: etcdctl 3.4 for
    # `snapshot restore`, util-linux flock (busybox's lacks it) to see etcd let go of its
    # data, busybox for the shell and the rest.
    add_executable "$rootfs" /usr/bin/etcdctl /usr/local/bin/etcdctl
    # The proof of a stored snapshot restores it with that etcdctl and starts it as a
    # throwaway etcd on loopback: the matching 3.4 server (it reads the snapshots of 3.5
    # to 3.7 clusters too; remediator/tests/proof.rs).
    add_executable "$rootfs" /usr/bin/etcd /usr/local/bin/etcd
    add_executable "$rootfs" /usr/bin/flock /usr/bin/flock
    add_executable "$rootfs" /bin/busybox /bin/busybox
    for applet in sh mv cp rm rmdir mkdir ls cat test [ true sleep seq sed grep head; do
      ln -sf busybox "$rootfs/bin/$applet"
    done
  fi
  echo "build-images: $image"
  DOCKER_BUILDKIT=0 docker build --quiet \
    --build-arg "VERSION=$version" --build-arg "REVISION=$revision" --build-arg "CREATED=$created" \
    -f "docker/$svc/Dockerfile" -t "$image" "$context" >/dev/null
done
