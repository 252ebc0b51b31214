#!/usr/bin/env bash
# With a Docker engine: builds every image (ci/build-images.sh), runs each binary's
# --version inside its container, pushes them to a real registry on loopback and pulls them
# back by digest (ci/check-registry.sh), then the containerised smoke test
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

# Every tool the restore commands call is in the remediator's image and works there: the
# kubeadm preset's flock wait, its token read from the manifest, etcdctl's restore.
docker run --rm --network none --user 0:0 --entrypoint /bin/sh "etcd-dr/dr-remediator:$tag" -c '
  set -e
  cd /tmp && : >db && flock -n db true
  printf "    - --initial-cluster-token=tok-1\n" >m.yaml
  [ "$(sed -n "s/.*--initial-cluster-token=\([^\" ]*\).*/\1/p" m.yaml | head -n 1)" = tok-1 ]
  [ "$(seq 3 | grep -c .)" = 3 ] && mkdir d && rmdir d
  ETCDCTL_API=3 etcdctl snapshot restore --help >/dev/null
' || { echo "check-images: the remediator image lacks a tool its restore commands call" >&2; exit 1; }
echo "check-images: the remediator image runs the restore commands' tools"

bash ci/check-registry.sh "$tag"
bash ci/smoke-containers.sh "$tag"
