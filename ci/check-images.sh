#!/usr/bin/env bash
# With a Docker engine: builds every image (ci/build-images.sh), runs each binary's
# --version inside its container, then the containerised smoke test
# (ci/smoke-containers.sh). Without an engine it says so and skips only this part.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! docker info >/dev/null 2>&1; then
  echo "check-images: no Docker engine on this machine; skipping the image build and container checks"
  exit 0
fi

tag=ci-$(git rev-parse --short HEAD 2>/dev/null || echo local)
services=(collector detector remediator loadgen)
bash ci/build-images.sh "$tag" "${services[@]}" etcd-test

for svc in "${services[@]}"; do
  image=etcd-dr/dr-$svc:$tag
  out=$(docker run --rm --network none "$image" --version)
  [[ $out == "dr-$svc "* ]] || { echo "check-images: $image --version printed '$out'" >&2; exit 1; }
  user=$(docker inspect --format '{{.Config.User}}' "$image")
  [[ $user == 65532:65532 ]] || { echo "check-images: $image runs as '$user', want 65532:65532" >&2; exit 1; }
  echo "check-images: $image ok ($out, user $user)"
done

bash ci/smoke-containers.sh "$tag"
