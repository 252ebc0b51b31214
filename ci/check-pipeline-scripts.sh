#!/usr/bin/env bash
# The pipeline's scripts refuse bad arguments and a missing tool with exit 2 and a message
# that says what to do (the cluster stages cannot run here; their entry checks can).
# ci/lint.sh runs this after shellcheck.
set -euo pipefail
cd "$(dirname "$0")/.."

failures=0
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# A PATH with the basic tools but none of the cluster ones (kind, kubectl, helm).
mkdir "$work/bin"
for tool in bash dirname mkdir cat grep seq sed head tee cut python3 curl docker; do
  real=$(command -v "$tool" || true)
  [[ -n $real ]] && ln -s "$real" "$work/bin/$tool"
done

# expect CODE TEXT -- COMMAND...: the command exits CODE and its stderr contains TEXT.
expect() {
  local code=$1 text=$2
  shift 3
  local got=0
  "$@" >"$work/out" 2>"$work/err" </dev/null || got=$?
  if [[ $got != "$code" ]] || ! grep -qF -- "$text" "$work/err"; then
    echo "check-pipeline-scripts: FAIL $*: exit $got (want $code), stderr:" >&2
    sed 's/^/    /' "$work/err" >&2
    failures=$((failures + 1))
  else
    echo "check-pipeline-scripts: ok $* -> exit $got: $(grep -F -- "$text" "$work/err" | head -n 1)"
  fi
}

expect 2 "usage: ci/push-images.sh REGISTRY TAG" -- bash ci/push-images.sh
expect 2 "usage: ci/push-images.sh REGISTRY TAG" -- bash ci/push-images.sh registry.example.com
expect 2 "without a scheme" -- bash ci/push-images.sh https://registry.example.com t1
expect 2 "set both REGISTRY_USER and REGISTRY_PASSWORD" -- env REGISTRY_PASSWORD=x bash ci/push-images.sh 127.0.0.1:1 t1
if docker info >/dev/null 2>&1; then
  expect 2 "build it first: ci/build-images.sh no-such-tag collector" -- bash ci/push-images.sh 127.0.0.1:1 no-such-tag
  fi
expect 1 "usage: ci/build-images.sh TAG" -- bash ci/build-images.sh
expect 1 "usage: ci/check-registry.sh TAG" -- bash ci/check-registry.sh
expect 1 "IMAGE_TAG is not set" -- env -u IMAGE_TAG bash ci/kind_up.sh
expect 2 "kind is not installed on this agent; install it with:" -- env PATH="$work/bin" IMAGE_TAG=t bash ci/kind_up.sh
expect 2 "helm is not installed on this agent; install it with:" -- env PATH="$work/bin" IMAGE_TAG=t bash ci/helm_install.sh
expect 2 "kubectl is not installed on this agent; install it with:" -- env PATH="$work/bin" IMAGE_TAG=t bash ci/e2e_k8s.sh

if ((failures)); then
  echo "check-pipeline-scripts: $failures failure(s)" >&2
  exit 1
fi
echo "check-pipeline-scripts: every refusal as documented"
