#!/usr/bin/env bash
# Jenkins "Kind Up": a kind cluster (ci/kind-config.yaml) with the freshly built images
# side-loaded into its nodes. Needs docker, kind and kubectl on the agent; no Kubernetes
# API server can run on the development machines, so this runs in the pipeline only.
set -euo pipefail
cd "$(dirname "$0")/.."

cluster=${KIND_CLUSTER:-etcd-dr}
tag=${IMAGE_TAG:?IMAGE_TAG is not set (the images to load)}
# shellcheck source=ci/lib/require-tool.sh
source ci/lib/require-tool.sh
require_tool kind_up docker kind kubectl

if kind get clusters 2>/dev/null | grep -qx "$cluster"; then
  echo "kind_up: cluster $cluster exists already; deleting it first"
  kind delete cluster --name "$cluster"
fi
kind create cluster --name "$cluster" --config ci/kind-config.yaml --wait 180s

for svc in collector detector remediator loadgen; do
  kind load docker-image --name "$cluster" "etcd-dr/dr-$svc:$tag"
done

kubectl --context "kind-$cluster" wait --for=condition=Ready nodes --all --timeout=180s
kubectl --context "kind-$cluster" -n kube-system wait --for=condition=Ready \
  pod -l component=etcd --timeout=120s
echo "kind_up: cluster $cluster ready with images tagged $tag"
