#!/usr/bin/env bash
# The images reach a user through a registry: starts a real one on loopback (Debian's
# docker-registry, in a temp dir, on a free port), pushes the images with
# ci/push-images.sh, drops the local tags, pulls each image back by the digest the push
# printed and runs its --version. Stops the registry it started, by PID.
#
#   ci/check-registry.sh TAG       (images from ci/build-images.sh TAG)
set -euo pipefail
cd "$(dirname "$0")/.."
tag=${1:?usage: ci/check-registry.sh TAG}
command -v docker-registry >/dev/null ||
  { echo "check-registry: docker-registry is not installed (ci/install-deps.sh --debian-only)" >&2; exit 2; }

work=$(mktemp -d)
registry_pid=
pulled=()
cleanup() {
  if [[ -n $registry_pid ]]; then
    kill "$registry_pid" 2>/dev/null || true
    wait "$registry_pid" 2>/dev/null || true
  fi
  ((${#pulled[@]})) && docker rmi --force "${pulled[@]}" >/dev/null 2>&1
  rm -rf "$work"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat >"$work/config.yml" <<EOF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $work/data
http:
  addr: 127.0.0.1:$port
EOF
docker-registry serve "$work/config.yml" >"$work/registry.log" 2>&1 &
registry_pid=$!
for _ in $(seq 100); do
  curl -fsS -o /dev/null "http://127.0.0.1:$port/v2/" && break
  kill -0 "$registry_pid" 2>/dev/null || { cat "$work/registry.log" >&2; exit 1; }
  sleep 0.1
done
curl -fsS -o /dev/null "http://127.0.0.1:$port/v2/" || { echo "check-registry: the registry did not answer in 10 s" >&2; exit 1; }

registry=127.0.0.1:$port
mapfile -t digests < <(bash ci/push-images.sh "$registry" "$tag" | grep '@sha256:')
((${#digests[@]} == 4)) || { echo "check-registry: expected 4 digests, got: ${digests[*]}" >&2; exit 1; }
for ref in "${digests[@]}"; do
  svc=${ref#"$registry"/etcd-dr/dr-}
  svc=${svc%%@*}
  # Only the registry can answer for the digest once the pushed tag is gone here.
  docker rmi "$registry/etcd-dr/dr-$svc:$tag" >/dev/null
  docker pull --quiet "$ref" >/dev/null
  pulled+=("$ref")
  out=$(docker run --rm --network none "$ref" --version)
  [[ $out == "dr-$svc "* ]] || { echo "check-registry: $ref --version printed '$out'" >&2; exit 1; }
  echo "check-registry: $ref pulled back, $out"
done
