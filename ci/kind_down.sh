#!/usr/bin/env bash
# Jenkins post step: deletes the pipeline's kind cluster if it exists. Never fails the
# build: a missing kind or cluster means there is nothing to clean.
set -uo pipefail
cluster=${KIND_CLUSTER:-etcd-dr}
if ! command -v kind >/dev/null; then
  echo "kind_down: kind not installed; nothing to delete"
  exit 0
fi
if kind get clusters 2>/dev/null | grep -qx "$cluster"; then
  mkdir -p "${REPORT_DIR:-target/reports}"
  kind export logs --name "$cluster" "${REPORT_DIR:-target/reports}/kind-logs" >/dev/null 2>&1 || true
  kind delete cluster --name "$cluster"
else
  echo "kind_down: no cluster $cluster"
fi
exit 0
