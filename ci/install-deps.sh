#!/usr/bin/env bash
# Installs what the tests need on a fresh machine (Rust, Python 3.11, gcc and git are
# assumed): the real servers from Debian, protoc for etcd-client, shellcheck, and a Python
# venv under target/ for the Python-side checks. Installs only what is missing.
#   ci/install-deps.sh [--debian-only]     (--debian-only: the servers and tools, no venv)
set -euo pipefail
cd "$(dirname "$0")/.."
debian_only=0
[[ ${1:-} == --debian-only ]] && debian_only=1

debian_packages=(
  etcd-server etcd-client                       # etcd 3.4 and etcdctl
  prometheus prometheus-pushgateway prometheus-alertmanager
  protobuf-compiler libprotobuf-dev             # etcd-client compiles etcd's protobufs (and imports google/protobuf/*.proto)
  shellcheck
  groovy                                        # parses the Jenkinsfile
  curl procps                                   # tests: https checks, kill(1) by PID
  strace                                        # dr_testkit::SlowDisk: a disk that stalls etcd's syncs
  iproute2 iptables                             # fault drills: a network namespace, delay and loss on its loopback
  busybox-static ca-certificates util-linux     # what ci/build-images.sh puts in the images
  docker-registry                               # ci/check-registry.sh: a real registry on loopback
)

missing=()
for pkg in "${debian_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "install-deps: installing ${missing[*]}"
  sudo_cmd=()
  [[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Debian's packages would start their services under systemd; no test wants those, and on
# machines without systemd nothing was started. Tests start their own, on free ports.

# etcd 3.5 and 3.7 beside Debian's 3.4 and the workspace's 3.6.
bash ci/install-etcd-versions.sh

((debian_only)) && exit 0

venv=${DR_VENV:-target/venv}
if [[ ! -x $venv/bin/python ]]; then
  python3 -m venv "$venv"
fi
# Every requirements file the project has; the venv is rebuilt when any of them changes.
requirements=()
for file in ci/requirements*.txt detector/reference/requirements.txt notebooks/requirements.txt; do
  [[ -f $file ]] && requirements+=("$file")
done
stamp=$venv/.requirements.sha256
wanted=$(cat "${requirements[@]}" | sha256sum | cut -d' ' -f1)
if [[ ! -f $stamp || $(cat "$stamp") != "$wanted" ]]; then
  echo "install-deps: installing Python packages into $venv"
  for file in "${requirements[@]}"; do
    "$venv/bin/pip" install -q --disable-pip-version-check -r "$file"
  done
  echo "$wanted" >"$stamp"
fi
