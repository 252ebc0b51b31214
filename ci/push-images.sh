#!/usr/bin/env bash
# Jenkins "Push": tags etcd-dr/dr-<service>:TAG (from ci/build-images.sh) as
# REGISTRY/etcd-dr/dr-<service>:TAG, pushes it, and prints each image's reference by digest
# (also written to target/reports/image-digests.txt), which is what the chart's
# <service>.image.digest pins.
#
#   ci/push-images.sh REGISTRY TAG [SERVICE...]     (default: collector detector remediator loadgen)
#
# REGISTRY is a host[:port][/path], e.g. registry.example.com/platform. With REGISTRY_USER
# and REGISTRY_PASSWORD in the environment (Jenkins' withCredentials binds them) it logs in
# first; the password reaches docker on stdin, never on a command line. Without them it
# pushes with whatever login docker already has (or none, for a registry that needs none).
set -euo pipefail
cd "$(dirname "$0")/.."

usage="usage: ci/push-images.sh REGISTRY TAG [SERVICE...]"
registry=${1:-}
tag=${2:-}
[[ -n $registry && -n $tag ]] || { echo "push-images: $usage" >&2; exit 2; }
shift 2
if [[ $registry == *://* || $registry == */ ]]; then
  echo "push-images: REGISTRY is a host[:port][/path] without a scheme or a trailing slash, not '$registry'" >&2
  exit 2
fi
services=("$@")
((${#services[@]})) || services=(collector detector remediator loadgen)
if [[ -n ${REGISTRY_USER:-} && -z ${REGISTRY_PASSWORD:-} ]] || [[ -z ${REGISTRY_USER:-} && -n ${REGISTRY_PASSWORD:-} ]]; then
  echo "push-images: set both REGISTRY_USER and REGISTRY_PASSWORD, or neither" >&2
  exit 2
fi

command -v docker >/dev/null || { echo "push-images: docker is not installed (apt-get install docker.io)" >&2; exit 2; }
docker info >/dev/null 2>&1 || { echo "push-images: no Docker engine answers" >&2; exit 2; }

for svc in "${services[@]}"; do
  docker image inspect "etcd-dr/dr-$svc:$tag" >/dev/null 2>&1 ||
    { echo "push-images: no image etcd-dr/dr-$svc:$tag; build it first: ci/build-images.sh $tag $svc" >&2; exit 2; }
done

if [[ -n ${REGISTRY_USER:-} || -n ${REGISTRY_PASSWORD:-} ]]; then
  printf '%s' "$REGISTRY_PASSWORD" | docker login "${registry%%/*}" --username "$REGISTRY_USER" --password-stdin
  trap 'docker logout "${registry%%/*}" >/dev/null 2>&1' EXIT
fi

mkdir -p target/reports
digests=target/reports/image-digests.txt
: >"$digests"
for svc in "${services[@]}"; do
  target_image=$registry/etcd-dr/dr-$svc:$tag
  docker tag "etcd-dr/dr-$svc:$tag" "$target_image"
  docker push --quiet "$target_image" >/dev/null
  # The digest the registry answered with, as docker recorded it for this repository.
  digest=$(docker image inspect --format '{{range .RepoDigests}}{{println .}}{{end}}' "$target_image" |
    grep -F "$registry/etcd-dr/dr-$svc@" | head -n 1)
  [[ -n $digest ]] || { echo "push-images: the registry gave no digest for $target_image" >&2; exit 1; }
  echo "$digest" | tee -a "$digests"
done
