#!/usr/bin/env bash
# Jenkins "Push" (main only): tags etcd-dr/dr-<service>:TAG as $DR_REGISTRY/etcd-dr/... and
# pushes it. Credentials come from the environment (REGISTRY_USER, REGISTRY_PASSWORD, bound
# by withCredentials) and reach docker on stdin, never on a command line.
set -euo pipefail
tag=${1:?usage: ci/push-images.sh TAG}
registry=${DR_REGISTRY:?DR_REGISTRY is not set (e.g. registry.example.com)}
: "${REGISTRY_USER:?REGISTRY_USER is not set}" "${REGISTRY_PASSWORD:?REGISTRY_PASSWORD is not set}"

printf '%s' "$REGISTRY_PASSWORD" | docker login "$registry" --username "$REGISTRY_USER" --password-stdin
trap 'docker logout "$registry" >/dev/null 2>&1' EXIT

for svc in collector detector remediator loadgen; do
  source_image=etcd-dr/dr-$svc:$tag
  target_image=$registry/etcd-dr/dr-$svc:$tag
  docker tag "$source_image" "$target_image"
  docker push "$target_image"
done
