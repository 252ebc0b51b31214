#!/usr/bin/env bash
# Jenkins "Helm Install": the monitoring stack (kube-prometheus-stack and a Pushgateway,
# pinned) and then dr-stack with the images of this build, on the kind cluster made by
# ci/kind_up.sh; finishes with `helm test`. Pipeline only (needs a Kubernetes API).
set -euo pipefail
cd "$(dirname "$0")/.."

cluster=${KIND_CLUSTER:-etcd-dr}
tag=${IMAGE_TAG:?IMAGE_TAG is not set}
kps_version=${KUBE_PROMETHEUS_STACK_VERSION:-65.1.1}
pushgateway_version=${PUSHGATEWAY_CHART_VERSION:-2.14.0}
context=kind-$cluster
# shellcheck source=ci/lib/require-tool.sh
source ci/lib/require-tool.sh
require_tool helm_install helm kubectl
helm_ns() { helm --kube-context "$context" --namespace "$@"; }

helm repo add prometheus-community https://prometheus-community.github.io/helm-charts --force-update >/dev/null
helm_ns monitoring upgrade --install kps prometheus-community/kube-prometheus-stack \
  --version "$kps_version" --create-namespace --values ci/kind-monitoring-values.yaml \
  --wait --timeout 10m
helm_ns monitoring upgrade --install pushgateway prometheus-community/prometheus-pushgateway \
  --version "$pushgateway_version" --wait --timeout 5m

helm dependency build charts/dr-stack >/dev/null
helm_ns etcd-dr upgrade --install dr charts/dr-stack --create-namespace \
  --values charts/dr-stack/ci/kind-e2e-values.yaml \
  --set "global.image.tag=$tag" \
  --wait --timeout 5m
helm_ns etcd-dr test dr --timeout 3m
echo "helm_install: dr-stack $tag installed and tested on $cluster"
