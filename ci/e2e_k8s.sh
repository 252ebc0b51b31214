#!/usr/bin/env bash
# Jenkins "E2E": on the kind cluster with dr-stack installed, seeds etcd with known keys,
# injects dr-loadgen's big-value storm (overwriting the same keys, so compaction and defrag
# can reclaim the space) until etcd raises NOSPACE, then waits for etcd-dr to repair it. It
# passes when, within E2E_MTTR_BUDGET_SECONDS (120) of the injection, the node is Ready, the
# API server's /readyz answers ok, etcd is healthy, writable and without alarm, every seeded
# key is intact, and the remediator's audit shows the repair it made (a finished,
# non-dry-run remediation whose NOSPACE disarm succeeded). Writes $REPORT_DIR/e2e-k8s.json.
# Pipeline only (needs a Kubernetes API).
set -euo pipefail
cd "$(dirname "$0")/.."

cluster=${KIND_CLUSTER:-etcd-dr}
tag=${IMAGE_TAG:?IMAGE_TAG is not set}
# shellcheck source=ci/lib/require-tool.sh
source ci/lib/require-tool.sh
require_tool e2e_k8s kubectl curl
report_dir=${REPORT_DIR:-target/reports}
budget=${E2E_MTTR_BUDGET_SECONDS:-120}
deadline_seconds=${E2E_DEADLINE_SECONDS:-420}
context=kind-$cluster
node=$cluster-control-plane
mkdir -p "$report_dir"
k() { kubectl --context "$context" "$@"; }

pki=/etc/kubernetes/pki/etcd
etcdctl() {
  k -n kube-system exec "etcd-$node" -- etcdctl --endpoints https://127.0.0.1:2379 \
    --cacert "$pki/ca.crt" --cert "$pki/healthcheck-client.crt" --key "$pki/healthcheck-client.key" \
    --command-timeout 10s "$@"
}
log() { printf 't+%3ds %s\n' "$((SECONDS - started))" "$*"; }
started=$SECONDS

# 1. Known keys and their checksum.
seeded=200
for i in $(seq -w 1 "$seeded"); do
  etcdctl put "/dr-e2e/seed/$i" "value-$i-$(printf '%064d' "$i")" >/dev/null
done
seed_sum() { etcdctl get --prefix /dr-e2e/seed/ --print-value-only | sha256sum | cut -d' ' -f1; }
before=$(seed_sum)
log "seeded $seeded keys, checksum ${before:0:12}"

# 2. The storm, as a Job next to etcd (hostNetwork on the control plane, etcd's client
# certificates from the node; the keys are root-only, hence uid 0 for this Job alone).
k -n etcd-dr delete job dr-e2e-storm --ignore-not-found >/dev/null
k -n etcd-dr apply -f - <<YAML
apiVersion: batch/v1
kind: Job
metadata:
  name: dr-e2e-storm
spec:
  backoffLimit: 0
  activeDeadlineSeconds: 300
  template:
    spec:
      restartPolicy: Never
      hostNetwork: true
      nodeSelector:
        node-role.kubernetes.io/control-plane: ""
      tolerations:
        - key: node-role.kubernetes.io/control-plane
          operator: Exists
          effect: NoSchedule
      containers:
        - name: loadgen
          image: etcd-dr/dr-loadgen:$tag
          imagePullPolicy: IfNotPresent
          args: ["--endpoints", "https://127.0.0.1:2379",
                 "--cacert", "/pki/ca.crt", "--cert", "/pki/healthcheck-client.crt",
                 "--key", "/pki/healthcheck-client.key",
                 "bigkey", "--overwrite", "--duration", "240s", "--json"]
          securityContext:
            runAsUser: 0
            allowPrivilegeEscalation: false
            readOnlyRootFilesystem: true
            capabilities: {drop: [ALL]}
          volumeMounts:
            - {name: pki, mountPath: /pki, readOnly: true}
      volumes:
        - name: pki
          hostPath: {path: $pki, type: Directory}
YAML
injected_at=$SECONDS
log "storm injected"

node_ready() {
  [[ $(k get node "$node" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null) == True ]]
}
apiserver_ready() { [[ $(k get --raw /readyz 2>/dev/null) == ok ]]; }
etcd_ready() {
  [[ -z $(etcdctl alarm list 2>/dev/null || echo unreachable) ]] &&
    etcdctl endpoint health >/dev/null 2>&1 && etcdctl put /dr-e2e/probe "$(date +%s)" >/dev/null 2>&1
}
# GET /actions wants the webhook token, which the API server's service proxy cannot carry
# (it drops the Authorization header once it has authenticated the caller): read it from the
# chart's Secret and reach the Service through a port-forward, stopped by its PID on exit.
token=$(k -n etcd-dr get secret dr-remediator-webhook -o jsonpath='{.data.token}' | base64 -d)
forward_port=${E2E_FORWARD_PORT:-19312}
k -n etcd-dr port-forward svc/dr-remediator "$forward_port:9312" >"$report_dir/e2e-port-forward.log" 2>&1 &
forward_pid=$!
trap 'kill "$forward_pid" 2>/dev/null || true' EXIT
remediator_actions() {
  curl -fsS --max-time 5 -H "Authorization: Bearer $token" "http://127.0.0.1:$forward_port/actions" 2>/dev/null ||
    echo '{"actions": []}'
}
# A finished remediation that was not a dry run and whose NOSPACE disarm succeeded.
repaired() {
  remediator_actions | python3 -c '
import json, sys
actions = json.load(sys.stdin).get("actions", [])
def done(a):
    steps = {(e["step"], e["phase"]) for e in a.get("events", [])}
    return (a.get("kind") == "remediation" and not a.get("dry_run")
            and ("disarm_nospace", "ok") in steps and any(s == "finished" for s, _ in steps))
sys.exit(0 if any(done(a) for a in actions) else 1)'
}

# 3. Follow the loop, once a second: NOSPACE raised, then everything healthy again.
incident_at=
healthy_at=
while ((SECONDS - started < deadline_seconds)); do
  if [[ -z $incident_at ]]; then
    if [[ $(etcdctl alarm list 2>/dev/null) == *NOSPACE* ]]; then
      incident_at=$SECONDS
      log "NOSPACE raised, $((incident_at - injected_at))s after the injection"
    fi
  elif etcd_ready && node_ready && apiserver_ready && repaired; then
    healthy_at=$SECONDS
    log "node Ready, API server ready, etcd healthy and writable with no alarm, the remediator's repair in its audit"
    break
  fi
  sleep 1
done

after=$(seed_sum || echo unreadable)
actions=$(remediator_actions)
k -n etcd-dr logs job/dr-e2e-storm >"$report_dir/e2e-storm.log" 2>&1 || true
k -n etcd-dr delete job dr-e2e-storm --ignore-not-found >/dev/null || true

recovery=null
mttr=null
to_nospace=null
passed=false
[[ -n $incident_at ]] && to_nospace=$((incident_at - injected_at))
if [[ -n $healthy_at ]]; then
  recovery=$((healthy_at - injected_at))
  mttr=$((healthy_at - incident_at))
  ((recovery <= budget)) && [[ $after == "$before" ]] && passed=true
fi
# Keys missing, or (when none is missing but the checksum moved) counted as all suspect.
present=$(etcdctl get --prefix /dr-e2e/seed/ --count-only -w json 2>/dev/null | grep -o '"count":[0-9]*' | cut -d: -f2 || true)
keys_lost=$((seeded - ${present:-0}))
[[ $keys_lost -eq 0 && $after != "$before" ]] && keys_lost=$seeded
cat >"$report_dir/e2e-k8s.json" <<JSON
{"scenario": "k8s-nospace", "recovery_seconds_from_injection": $recovery,
 "seconds_to_nospace": $to_nospace, "mttr_seconds_from_alarm": $mttr, "budget_seconds": $budget,
 "keys_checked": $seeded, "keys_lost": $keys_lost, "passed": $passed,
 "actions": $actions}
JSON
log "report: $report_dir/e2e-k8s.json (passed: $passed, recovered ${recovery}s after the injection, budget ${budget}s)"
[[ $passed == true ]]
