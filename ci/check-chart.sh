#!/usr/bin/env bash
# Checks the dr-stack Helm chart offline, without a helm binary or a cluster:
#   1. lint (strict: warnings fail) and render with Helm's own Go SDK (PyPI helm-python-sdk),
#      with the default values and each value set in charts/dr-stack/ci/*-values.yaml;
#   2. validate every rendered object: built-in kinds against the Kubernetes OpenAPI schemas
#      shipped in PyPI kubernetes-validate (strict: unknown fields fail); the
#      prometheus-operator kinds, which it does not know, against minimal JSON schemas
#      below, and the PromQL of the rules and the dashboard with promtool when present;
#   3. scan everything rendered with checkov (offline); it must be clean, and every
#      skipped check carries a checkov.io/skipN annotation whose reason sits in the
#      template next to the value that needs it (step 2 also checks that the hardening is
#      really there and that the hostNetwork and root skips match what is rendered);
#   4. prove that values.schema.json is strict: a typo anywhere must fail the render; and
#      that every key in the values files is documented with a `##` comment.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${DR_VENV:-target/venv}
python=$venv/bin/python
# ci/install-deps.sh installs ci/requirements*.txt; install what is still missing (e.g. when
# this check runs on its own), pinned by the same file.
if [[ ! -x $python ]] || ! "$python" -c 'import helm_python, kubernetes_validate, jsonschema, yaml' 2>/dev/null ||
  [[ ! -x $venv/bin/checkov ]]; then
  [[ -x $python ]] || python3 -m venv "$venv"
  echo "check-chart: installing ci/requirements-chart.txt into $venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r ci/requirements-chart.txt
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

started=$SECONDS
echo "check-chart: lint, render, validate (helm $("$python" -c 'import helm_python as h; print(h.helm_sdk_version())'))"
CHART=charts/dr-stack OUT=$work "$python" - <<'PY'
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import helm_python as helm
import jsonschema
import kubernetes_validate
from kubernetes_validate.utils import latest_version
import yaml

CHART = pathlib.Path(os.environ["CHART"])
OUT = pathlib.Path(os.environ["OUT"])
RELEASE, NAMESPACE = "etcd-dr", "etcd-dr"
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest whose
# schemas kubernetes-validate ships (offline): an API removed or changed in between fails.
KUBE_VERSIONS = ("1.25.0", latest_version())
KUBE_VERSION = KUBE_VERSIONS[0]
failures = []


def fail(msg):
    failures.append(msg)
    print(f"  FAIL {msg}")


# Minimal schemas for the prometheus-operator kinds that kubernetes-validate does not know.
# They cover the fields this chart sets (names and types as in the operator's CRDs) and
# reject unknown ones, so a misspelt field fails here rather than at install.
DURATION = {"type": "string", "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}
STRMAP = {"type": "object", "additionalProperties": {"type": "string"}}
LABEL_SELECTOR = {"type": "object", "additionalProperties": False, "properties": {
    "matchLabels": STRMAP, "matchExpressions": {"type": "array", "items": {"type": "object"}}}}
METADATA = {"type": "object", "required": ["name", "namespace"], "properties": {
    "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63},
    "namespace": {"type": "string"}, "labels": STRMAP, "annotations": STRMAP}}


# How Alertmanager and Prometheus check a server's certificate (SafeTLSConfig), as set here.
SECRET_KEY = {"type": "object", "required": ["name", "key"], "additionalProperties": False,
              "properties": {"name": {"type": "string", "minLength": 1}, "key": {"type": "string", "minLength": 1}}}
TLS_CONFIG = {"type": "object", "additionalProperties": False, "properties": {
    "ca": {"type": "object", "additionalProperties": False, "properties": {"secret": SECRET_KEY, "configMap": SECRET_KEY}},
    "serverName": {"type": "string"}, "insecureSkipVerify": {"type": "boolean"}}}


def crd(spec):
    return {"type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
            "additionalProperties": False, "properties": {
                "apiVersion": {"type": "string"}, "kind": {"type": "string"},
                "metadata": METADATA, "spec": spec}}


CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): crd({
        "type": "object", "required": ["selector", "endpoints"], "additionalProperties": False,
        "properties": {
            "selector": LABEL_SELECTOR, "jobLabel": {"type": "string"},
            "namespaceSelector": {"type": "object", "additionalProperties": False, "properties": {
                "any": {"type": "boolean"}, "matchNames": {"type": "array", "items": {"type": "string"}}}},
            "endpoints": {"type": "array", "minItems": 1, "items": {
                "type": "object", "additionalProperties": False, "properties": {
                    "port": {"type": "string"}, "path": {"type": "string", "pattern": "^/"},
                    "scheme": {"enum": ["http", "https"]}, "interval": DURATION,
                    "scrapeTimeout": DURATION, "honorLabels": {"type": "boolean"},
                    "tlsConfig": TLS_CONFIG}}}}}),
    ("monitoring.coreos.com/v1", "PrometheusRule"): crd({
        "type": "object", "required": ["groups"], "additionalProperties": False, "properties": {
            "groups": {"type": "array", "items": {
                "type": "object", "required": ["name", "rules"], "additionalProperties": False,
                "properties": {
                    "name": {"type": "string", "minLength": 1}, "interval": DURATION,
                    "rules": {"type": "array", "minItems": 1, "items": {
                        "type": "object", "required": ["expr"], "additionalProperties": False,
                        "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
                        "properties": {
                            "alert": {"type": "string"}, "record": {"type": "string"},
                            "expr": {"type": "string", "minLength": 1}, "for": DURATION,
                            "labels": STRMAP, "annotations": STRMAP}}}}}}}}),
    ("monitoring.coreos.com/v1alpha1", "AlertmanagerConfig"): crd({
        "type": "object", "required": ["route", "receivers"], "additionalProperties": False,
        "properties": {
            "route": {"type": "object", "required": ["receiver"], "additionalProperties": False,
                      "properties": {
                          "receiver": {"type": "string"},
                          "groupBy": {"type": "array", "items": {"type": "string"}},
                          "groupWait": DURATION, "groupInterval": DURATION, "repeatInterval": DURATION,
                          "matchers": {"type": "array", "items": {
                              "type": "object", "required": ["name"], "additionalProperties": False,
                              "properties": {"name": {"type": "string"}, "value": {"type": "string"},
                                             "matchType": {"enum": ["=", "!=", "=~", "!~"]}}}}}},
            "receivers": {"type": "array", "minItems": 1, "items": {
                "type": "object", "required": ["name"], "additionalProperties": False, "properties": {
                    "name": {"type": "string"},
                    "webhookConfigs": {"type": "array", "items": {
                        "type": "object", "required": ["url"], "additionalProperties": False,
                        "properties": {
                            "url": {"type": "string", "pattern": "^https?://"},
                            "sendResolved": {"type": "boolean"},
                            "httpConfig": {"type": "object", "additionalProperties": False, "properties": {
                                "authorization": {
                                    "type": "object", "required": ["credentials"], "additionalProperties": False,
                                    "properties": {
                                        "type": {"type": "string"},
                                        "credentials": {"type": "object", "required": ["name", "key"],
                                                        "additionalProperties": False, "properties": {
                                                            "name": {"type": "string"},
                                                            "key": {"type": "string"}}}}},
                                "tlsConfig": TLS_CONFIG}}}}}}}}}}),
    # cert-manager's Certificate (remediator.https.certManager), the fields this chart sets.
    ("cert-manager.io/v1", "Certificate"): crd({
        "type": "object", "required": ["secretName", "issuerRef"], "additionalProperties": False,
        "properties": {
            "secretName": {"type": "string", "minLength": 1},
            "dnsNames": {"type": "array", "minItems": 1, "items": {"type": "string"}},
            "duration": DURATION, "renewBefore": DURATION,
            "usages": {"type": "array", "items": {"enum": ["server auth", "client auth", "digital signature",
                                                           "key encipherment"]}},
            "privateKey": {"type": "object", "additionalProperties": False, "properties": {
                "algorithm": {"enum": ["RSA", "ECDSA", "Ed25519"]}, "size": {"type": "integer"},
                "rotationPolicy": {"enum": ["Never", "Always"]}}},
            "issuerRef": {"type": "object", "required": ["name"], "additionalProperties": False, "properties": {
                "name": {"type": "string", "minLength": 1}, "kind": {"enum": ["Issuer", "ClusterIssuer"]},
                "group": {"type": "string"}}}}}),
}


def value_sets():
    yield "default", {}
    for path in sorted((CHART / "ci").glob("*-values.yaml")):
        yield path.name.removesuffix("-values.yaml"), yaml.safe_load(path.read_text()) or {}


def lint(name, values):
    report = helm.lint(str(CHART), values or None, strict=True, namespace=NAMESPACE,
                       kube_version=f"v{KUBE_VERSION}")
    for msg in report["messages"]:
        # 1 = info (e.g. "icon is recommended"); 2 = warning and 3 = error fail in strict mode.
        if msg["severity"] >= 2:
            fail(f"[{name}] helm lint: {msg['path']}: {msg['error'].strip()}")
    for err in report["errors"]:
        if not any(err.strip() in m["error"] for m in report["messages"]):
            fail(f"[{name}] helm lint: {err.strip()}")


def render(chart, values):
    manifests = chart.render(values or None, name=RELEASE, namespace=NAMESPACE, is_install=True)
    docs = []
    for template, text in sorted(manifests.items()):
        if template.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc is not None:
                docs.append((template, doc))
    return docs


schema_cache = {}


def validate(name, template, doc):
    kind, api = doc.get("kind"), doc.get("apiVersion")
    where = f"[{name}] {template}: {kind}/{doc.get('metadata', {}).get('name')}"
    if (api, kind) in CRD_SCHEMAS:
        errors = sorted(jsonschema.Draft7Validator(CRD_SCHEMAS[api, kind]).iter_errors(doc), key=str)
        for e in errors:
            fail(f"{where}: {'.'.join(map(str, e.absolute_path))}: {e.message}")
        return "crd-schema"
    for version in KUBE_VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            fail(f"{where}: Kubernetes {version}: {'.'.join(map(str, e.path))}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError:
            fail(f"{where}: no schema for {api} {kind} in Kubernetes {version}; add one to CRD_SCHEMAS")
    return "kubernetes"


def check_release(name, docs):
    """What a schema cannot see: names, namespaces, references between the objects."""
    seen = set()
    by_kind = {}
    for template, doc in docs:
        meta = doc.get("metadata", {})
        key = (doc["kind"], meta.get("namespace"), meta.get("name"))
        if key in seen:
            fail(f"[{name}] {template}: duplicate {key}")
        seen.add(key)
        if not meta.get("namespace"):
            fail(f"[{name}] {template}: {doc['kind']}/{meta.get('name')} has no namespace")
        labels = meta.get("labels") or {}
        for label in ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/managed-by",
                      "app.kubernetes.io/version", "helm.sh/chart"):
            if label not in labels:
                fail(f"[{name}] {template}: {doc['kind']}/{meta.get('name')} lacks label {label}")
        by_kind.setdefault(doc["kind"], []).append(doc)
    services = {d["metadata"]["name"]: d for d in by_kind.get("Service", [])}
    workloads = [d for k in ("Deployment", "DaemonSet") for d in by_kind.get(k, [])]
    for svc in services.values():
        selector = svc["spec"]["selector"]
        if not any(selector.items() <= w["spec"]["template"]["metadata"]["labels"].items() for w in workloads):
            fail(f"[{name}] Service {svc['metadata']['name']} selects no pod of the release")
    for w in workloads:
        pod = w["spec"]["template"]
        if not w["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items():
            fail(f"[{name}] {w['kind']} {w['metadata']['name']}: selector does not match its pod labels")
    for am in by_kind.get("AlertmanagerConfig", []):
        for receiver in am["spec"]["receivers"]:
            for hook in receiver.get("webhookConfigs", []):
                host = re.match(r"https?://([^.:/]+)", hook["url"]).group(1)
                if host not in services or not hook["url"].endswith("/webhook"):
                    fail(f"[{name}] AlertmanagerConfig posts to {hook['url']}, not a /webhook of the release")
    for sm in by_kind.get("ServiceMonitor", []):
        if sm["spec"]["namespaceSelector"].get("matchNames") != [NAMESPACE]:
            continue  # the Pushgateway's, elsewhere
        labels = sm["spec"]["selector"]["matchLabels"].items()
        if not any(labels <= (s["metadata"]["labels"] or {}).items() for s in services.values()):
            fail(f"[{name}] ServiceMonitor {sm['metadata']['name']} selects no Service of the release")
    for w in workloads + by_kind.get("Pod", []):
        check_hardening(name, w)
    return by_kind


def check_hardening(name, obj):
    """The hardened pod, and checkov skips that match what is rendered (none goes stale)."""
    where = f"[{name}] {obj['kind']} {obj['metadata']['name']}"
    spec = obj["spec"]["template"]["spec"] if "template" in obj["spec"] else obj["spec"]
    annotations = obj["metadata"].get("annotations") or {}
    skips = {v.split("=", 1)[0] for k, v in annotations.items() if k.startswith("checkov.io/skip")}
    pod_context = spec.get("securityContext") or {}
    as_root = "CKV_K8S_23" in skips
    if pod_context.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        fail(f"{where}: no RuntimeDefault seccomp profile")
    if spec.get("automountServiceAccountToken") is not False:
        fail(f"{where}: mounts a service account token it does not need")
    if ("CKV_K8S_19" in skips) != bool(spec.get("hostNetwork")):
        fail(f"{where}: hostNetwork and its checkov skip disagree")
    init = spec.get("initContainers") or []
    roots = []
    for c in spec["containers"] + init:
        context = {**pod_context, **(c.get("securityContext") or {})}
        is_init = c in init
        if re.search(r":latest$|^[^:@]+$", c["image"]):
            fail(f"{where}: image {c['image']} is not pinned")
        if context.get("allowPrivilegeEscalation") is not False or context.get("readOnlyRootFilesystem") is not True \
                or context.get("capabilities", {}).get("drop") != ["ALL"] or context.get("privileged"):
            fail(f"{where}: container {c['name']} is not hardened: {context}")
        added = context.get("capabilities", {}).get("add") or []
        # Only an init container may add a capability, and only CHOWN (the remediator's
        # snapshot-dir, handing a root-made hostPath directory to uid 65532).
        if added and (not is_init or added != ["CHOWN"]):
            fail(f"{where}: container {c['name']} adds capabilities {added}")
        if added and "CKV_K8S_25" not in skips:
            fail(f"{where}: container {c['name']} adds {added} but the capabilities skip (CKV_K8S_25) is not set")
        if context.get("runAsUser") == 0:
            # checkov's root checks look at the main containers only: a root init container
            # is allowed only as the one that adds CHOWN, whose skip (CKV_K8S_25) says why.
            if not is_init:
                roots.append(c["name"])
            elif added != ["CHOWN"]:
                fail(f"{where}: init container {c['name']} runs as root without the CHOWN-only reason")
        elif context.get("runAsNonRoot") is not True or context.get("runAsUser") != 65532:
            fail(f"{where}: container {c['name']} must run as the non-root user 65532")
    if as_root != bool(roots):
        fail(f"{where}: containers running as root: {roots or 'none'}, but the root skip (CKV_K8S_23) is "
             f"{'set' if as_root else 'not set'}")
    if "CKV_K8S_25" in skips and not any((c.get("securityContext") or {}).get("capabilities", {}).get("add")
                                         for c in spec["containers"] + init):
        fail(f"{where}: the capabilities skip (CKV_K8S_25) is set but no container adds one")


def promql_checks(name, by_kind):
    """Write the rules, and the dashboard's queries as recording rules, for promtool."""
    groups = []
    for rule in by_kind.get("PrometheusRule", []):
        groups += rule["spec"]["groups"]
    for cm in by_kind.get("ConfigMap", []):
        for key, text in (cm.get("data") or {}).items():
            if not key.endswith(".json"):
                continue
            try:
                dashboard = json.loads(text)
            except json.JSONDecodeError as e:
                fail(f"[{name}] dashboard {key}: {e}")
                continue
            exprs = [t["expr"] for p in dashboard.get("panels", []) for t in p.get("targets", [])]
            if len(exprs) < 3:
                fail(f"[{name}] dashboard {key}: expected panels with queries")
            # Grafana variables are not PromQL: give them a plain value for the parser.
            rules = [{"record": f"dashboard:query_{i}", "expr": re.sub(r"\$\{?(\w+)\}?", r"\1", e)}
                     for i, e in enumerate(exprs)]
            groups.append({"name": f"dashboard-{key}", "rules": rules})
    return groups


def check_monitoring(name, values, by_kind):
    """Everything that reaches the monitoring stack follows global.monitoring: the
    NetworkPolicies admit that namespace and nothing else, the URLs and the Pushgateway's
    ServiceMonitor point into it, and prometheus-operator's objects carry its release label."""
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())["global"]["monitoring"]
    monitoring = {**defaults, **((values.get("global") or {}).get("monitoring") or {})}
    namespace, release = monitoring["namespace"], monitoring["release"]
    for np in by_kind.get("NetworkPolicy", []):
        for rule in np["spec"].get("ingress", []):
            for peer in rule.get("from", []):
                if "namespaceSelector" in peer:
                    if peer["namespaceSelector"] != {"matchLabels": {"kubernetes.io/metadata.name": namespace}}:
                        fail(f"[{name}] NetworkPolicy {np['metadata']['name']} admits namespaces "
                             f"{peer['namespaceSelector']}, not only {namespace!r}")
                elif not (peer.get("podSelector") or {}).get("matchLabels", {}).get("app.kubernetes.io/instance"):
                    fail(f"[{name}] NetworkPolicy {np['metadata']['name']} admits a peer outside the release: {peer}")
    urls = {}
    for w in by_kind.get("Deployment", []) + by_kind.get("DaemonSet", []):
        for c in w["spec"]["template"]["spec"]["containers"]:
            for a in c.get("args", []):
                if a.startswith(("--prometheus-url=", "--pushgateway-url=")):
                    urls[a.split("=", 1)[0]] = a.split("=", 1)[1]
    overridden = {"--prometheus-url": (values.get("detector") or {}).get("prometheusUrl"),
                  "--pushgateway-url": ((values.get("collector") or {}).get("pushgateway") or {}).get("url")}
    wanted = {"--prometheus-url": f"http://{monitoring['prometheusService']}.{namespace}.svc:{monitoring['prometheusPort']}",
              "--pushgateway-url": f"http://{monitoring['pushgatewayService']}.{namespace}.svc:{monitoring['pushgatewayPort']}"}
    for flag, url in urls.items():
        if url != (overridden[flag] or wanted[flag]):
            fail(f"[{name}] {flag}={url}, expected {overridden[flag] or wanted[flag]}")
    for sm in by_kind.get("ServiceMonitor", []):
        if sm["metadata"]["name"].endswith("-pushgateway"):
            pg_namespace = ((values.get("pushgateway") or {}).get("serviceMonitor") or {}).get("namespace") or namespace
            if sm["spec"]["namespaceSelector"].get("matchNames") != [pg_namespace]:
                fail(f"[{name}] the Pushgateway's ServiceMonitor looks in {sm['spec']['namespaceSelector']}, not {pg_namespace}")
    for kind in ("ServiceMonitor", "PrometheusRule", "AlertmanagerConfig"):
        for obj in by_kind.get(kind, []):
            got = (obj["metadata"].get("labels") or {}).get("release")
            if release and got != release:
                fail(f"[{name}] {kind} {obj['metadata']['name']} lacks the label release={release}")


def check_images(name, values, by_kind):
    """Every etcd-dr container pulls from the registry and tag the user set."""
    image = (values.get("global") or {}).get("image") or {}
    registry, tag = image.get("registry"), image.get("tag")
    for kind in ("Deployment", "DaemonSet"):
        for w in by_kind.get(kind, []):
            for c in w["spec"]["template"]["spec"]["containers"]:
                ref = c["image"]
                if "etcd-dr/dr-" not in ref:
                    continue
                if registry and not ref.startswith(f"{registry}/etcd-dr/dr-"):
                    fail(f"[{name}] {kind} {w['metadata']['name']}: image {ref} is not from {registry}")
                if tag and not re.search(rf":{re.escape(tag)}(@|$)", ref):
                    fail(f"[{name}] {kind} {w['metadata']['name']}: image {ref} is not tagged {tag}")


def merged(values, chart):
    """A subchart's values as the render sees them: its defaults, then the user's."""
    def merge(base, over):
        out = dict(base)
        for k, v in (over or {}).items():
            out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        return out
    defaults = yaml.safe_load((CHART / "charts" / chart / "values.yaml").read_text())
    return merge(defaults, values.get(chart))


def check_remediator(name, values, by_kind):
    """The remediator's listener, token and detector URL, as the values ask."""
    remediator = merged(values, "remediator")
    if not remediator["enabled"] or not (values.get("remediator") or {}).get("enabled", True):
        return
    glob = {**yaml.safe_load((CHART / "values.yaml").read_text())["global"], **(values.get("global") or {})}
    [deployment] = [d for d in by_kind.get("Deployment", []) if d["metadata"]["name"].endswith("-remediator")]
    pod = deployment["spec"]["template"]
    [container] = pod["spec"]["containers"]
    args = dict(a.split("=", 1) for a in container["args"] if "=" in a)
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    service = next(s for s in by_kind["Service"] if s["metadata"]["name"].endswith("-remediator"))
    server_name = f"{service['metadata']['name']}.{NAMESPACE}.svc"
    https = remediator["https"]["enabled"]
    tls_secret = remediator["https"]["secretName"] or f"{service['metadata']['name']}-tls"

    # The listener: HTTPS from the Secret's files, probed over HTTPS.
    if https:
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        if args.get("--tls-cert-file") != f"{mounts.get('https')}/tls.crt" or \
                args.get("--tls-key-file") != f"{mounts.get('https')}/tls.key" or \
                volumes.get("https", {}).get("secret", {}).get("secretName") != tls_secret:
            fail(f"[{name}] remediator: HTTPS on, but --tls-cert-file/--tls-key-file do not read {tls_secret}")
    elif "--tls-cert-file" in args or "https" in volumes:
        fail(f"[{name}] remediator: HTTPS off, but the pod is given a certificate")
    for probe in ("livenessProbe", "readinessProbe"):
        if container[probe]["httpGet"].get("scheme") != ("HTTPS" if https else "HTTP"):
            fail(f"[{name}] remediator: {probe} is not {'HTTPS' if https else 'HTTP'}")
    wanted_tls = {"ca": {"secret": {"name": tls_secret, "key": remediator["https"]["caKey"]}}, "serverName": server_name}
    # Alertmanager: https to the Service, the certificate checked against the CA and name.
    for am in by_kind.get("AlertmanagerConfig", []):
        for receiver in am["spec"]["receivers"]:
            for hook in receiver.get("webhookConfigs", []):
                tls = hook.get("httpConfig", {}).get("tlsConfig")
                if https and (not hook["url"].startswith(f"https://{server_name}:") or tls != wanted_tls):
                    fail(f"[{name}] remediator HTTPS: Alertmanager posts to {hook['url']} with tlsConfig {tls}, "
                         f"want https://{server_name} and {wanted_tls}")
                if not https and (not hook["url"].startswith("http://") or tls):
                    fail(f"[{name}] remediator HTTP: Alertmanager posts to {hook['url']} with tlsConfig {tls}")
                credentials = hook["httpConfig"]["authorization"]["credentials"]["name"]
                if credentials != volumes["webhook-token"]["secret"]["secretName"]:
                    fail(f"[{name}] Alertmanager sends the token of {credentials}, the remediator reads another")
    for sm in by_kind.get("ServiceMonitor", []):
        if sm["metadata"]["name"] == service["metadata"]["name"]:
            [endpoint] = sm["spec"]["endpoints"]
            if https and (endpoint.get("scheme") != "https" or endpoint.get("tlsConfig") != wanted_tls):
                fail(f"[{name}] remediator HTTPS: its ServiceMonitor scrapes {endpoint}")
            if not https and (endpoint.get("scheme", "http") != "http" or "tlsConfig" in endpoint):
                fail(f"[{name}] remediator HTTP: its ServiceMonitor scrapes {endpoint}")
    certificates = by_kind.get("Certificate", [])
    if https and remediator["https"]["certManager"]["enabled"]:
        if [c["spec"]["secretName"] for c in certificates] != [tls_secret] or \
                server_name not in certificates[0]["spec"]["dnsNames"]:
            fail(f"[{name}] remediator HTTPS: no Certificate writes {tls_secret} for {server_name}")
    elif certificates:
        fail(f"[{name}] a Certificate without remediator.https.certManager.enabled")

    # The generated token: created once at install, kept, never re-rendered by an upgrade.
    secrets = {s["metadata"]["name"]: s for s in by_kind.get("Secret", [])}
    token_secret = volumes["webhook-token"]["secret"]["secretName"]
    existing = remediator["webhook"]["existingSecret"]
    if existing:
        if token_secret != existing or existing in secrets:
            fail(f"[{name}] webhook.existingSecret {existing}: the remediator reads {token_secret}, "
                 f"and the chart must not render it")
    else:
        notes = (secrets.get(token_secret) or {}).get("metadata", {}).get("annotations") or {}
        if notes.get("helm.sh/hook") != "pre-install" or notes.get("helm.sh/resource-policy") != "keep":
            fail(f"[{name}] the generated token Secret {token_secret} is not a kept pre-install hook: {notes}")

    # The detector's port is one value: its Service and the remediator's default URL.
    detector = next((s for s in by_kind.get("Service", []) if s["metadata"]["name"].endswith("-detector")), None)
    if detector:
        port = glob["detectorServicePort"]
        if [p["port"] for p in detector["spec"]["ports"]] != [port]:
            fail(f"[{name}] the detector's Service port is not global.detectorServicePort ({port})")
        if remediator["detector"]["confirm"] and not remediator["detector"]["url"]:
            want = f"http://{detector['metadata']['name']}.{NAMESPACE}.svc:{port}"
            if args.get("--detector-url") != want:
                fail(f"[{name}] --detector-url={args.get('--detector-url')}, want {want}")


# Objects a pod reads that its process reads again when they change: no checksum for them.
HOT_RELOADED = re.compile(r"-(remediator-webhook|remediator-tls|etcd-client)$")


def check_checksums(name, docs):
    """A ConfigMap or Secret the chart renders and a pod reads at start only must roll the
    pod when it changes: a `checksum/<name>` annotation on the pod template with the sha256
    of its data. What the process reads again (HOT_RELOADED) carries none: a rotation must
    not restart anything. A Secret made by a hook is never re-rendered, so it needs none."""
    import hashlib
    rendered = {(d["kind"], d["metadata"]["name"]): d for _, d in docs if d["kind"] in ("ConfigMap", "Secret")}
    for _, w in docs:
        if w["kind"] not in ("Deployment", "DaemonSet"):
            continue
        pod = w["spec"]["template"]
        sums = {k.split("/", 1)[1]: v for k, v in (pod["metadata"].get("annotations") or {}).items()
                if k.startswith("checksum/")}
        refs = set()
        for v in pod["spec"].get("volumes", []):
            if "secret" in v:
                refs.add(("Secret", v["secret"]["secretName"]))
            if "configMap" in v:
                refs.add(("ConfigMap", v["configMap"]["name"]))
        for c in pod["spec"]["containers"]:
            for source in c.get("envFrom", []):
                for kind, key in (("Secret", "secretRef"), ("ConfigMap", "configMapRef")):
                    if key in source:
                        refs.add((kind, source[key]["name"]))
        for kind, ref in sorted(refs):
            doc = rendered.get((kind, ref))
            hot = HOT_RELOADED.search(ref)
            hook = doc and "helm.sh/hook" in (doc["metadata"].get("annotations") or {})
            if hot and ref in sums:
                fail(f"[{name}] {w['kind']} {w['metadata']['name']}: checksum/{ref} would restart the pod "
                     f"for a {kind} its process reads again")
            if doc and not hot and not hook:
                data = json.dumps({k: doc.get(k) for k in ("data", "stringData", "binaryData")}, sort_keys=True)
                if sums.get(ref) != hashlib.sha256(data.encode()).hexdigest():
                    fail(f"[{name}] {w['kind']} {w['metadata']['name']}: reads {kind} {ref} at start "
                         f"but no checksum/{ref} of its data rolls it")
        for ref in sums:
            if ("ConfigMap", ref) not in refs and ("Secret", ref) not in refs:
                fail(f"[{name}] {w['kind']} {w['metadata']['name']}: checksum/{ref} of nothing it reads")


def check_no_lookup():
    """`lookup` asks the cluster: under `helm template` and GitOps renders it answers
    nothing, so no template may call it (comments may name it)."""
    for path in sorted(CHART.rglob("templates/**/*")):
        if path.is_file():
            code = re.sub(r"/\*.*?\*/", "", path.read_text(), flags=re.S)
            if re.search(r"\blookup\b", code):
                fail(f"{path}: calls lookup")


check_no_lookup()


# --- 1 and 2: lint, render, validate every value set ------------------------------------
def render_fresh(values):
    """Render from a freshly loaded chart: the SDK's dependency processing drops disabled
    subcharts from the loaded chart, which would leak into the next render."""
    with helm.Chart.load(str(CHART)) as chart:
        return render(chart, values)


checked = {"kubernetes": 0, "crd-schema": 0}
rule_groups = {}
(OUT / "rendered").mkdir()
for name, values in value_sets():
    lint(name, values)
    try:
        docs = render_fresh(values)
    except helm.HelmError as e:
        fail(f"[{name}] render: {e}")
        continue
    kinds = sorted({d["kind"] for _, d in docs})
    print(f"  {name}: {len(docs)} objects ({', '.join(kinds)})")
    for template, doc in docs:
        checked[validate(name, template, doc)] += 1
    by_kind = check_release(name, docs)
    check_monitoring(name, values, by_kind)
    check_images(name, values, by_kind)
    check_remediator(name, values, by_kind)
    check_checksums(name, docs)
    groups = promql_checks(name, by_kind)
    if groups:
        rule_groups[name] = groups
    (OUT / "rendered" / f"{name}.yaml").write_text(yaml.safe_dump_all([d for _, d in docs], sort_keys=False))

# --- flags: every flag and DR_* variable a container passes, its binary knows --------------
# With DR_BIN_DIR (a directory holding the built dr-* binaries, as ci/test.sh gives), each
# rendered etcd-dr container's `--flag`s and `DR_*` env names are looked up in the binary's
# own --help (of the subcommand, when the first argument is one), so a renamed flag fails
# here instead of in a CrashLoopBackOff.
bin_dir = os.environ.get("DR_BIN_DIR")
if bin_dir:
    helps, flags_checked = {}, 0

    def help_text(binary, sub):
        key = (binary, sub)
        if key not in helps:
            cmd = [str(binary)] + ([sub] if sub else []) + ["--help"]
            helps[key] = subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout
        return helps[key]

    for path in sorted((OUT / "rendered").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc:
                continue
            spec = doc.get("spec", {})
            pod = spec.get("template", {}).get("spec", {}) if doc["kind"] != "Pod" else spec
            for c in pod.get("containers", []) + pod.get("initContainers", []):
                m = re.search(r"etcd-dr/dr-([a-z]+)", c.get("image", ""))
                if not m:
                    continue
                binary = pathlib.Path(bin_dir) / f"dr-{m[1]}"
                args = [str(a) for a in c.get("args", [])]
                sub = args[0] if args and not args[0].startswith("-") else None
                text = help_text(binary, sub)
                names = [a.split("=", 1)[0] for a in args if a.startswith("--")]
                names += [e["name"] for e in c.get("env", []) if e["name"].startswith("DR_")]
                for name in names:
                    flags_checked += 1
                    wanted = f"{name} " if name.startswith("--") else f"[env: {name}="
                    if wanted not in text and not (name.startswith("--") and f"{name}\n" in text):
                        fail(f"[{path.stem}] {c['name']}: {name} is not a {binary.name}{' ' + sub if sub else ''} option")
    print(f"  flags: {flags_checked} flags and DR_* variables found in the binaries' --help")
else:
    print("  flags: DR_BIN_DIR not set; container flags not checked against the binaries")

default_kinds = {d["kind"] for d in yaml.safe_load_all((OUT / "rendered" / "default.yaml").read_text())}
for wanted in ("DaemonSet", "Deployment", "Service", "PodDisruptionBudget",
               "NetworkPolicy", "Secret", "ServiceMonitor", "PrometheusRule",
               "AlertmanagerConfig", "ConfigMap", "Pod"):
    if wanted not in default_kinds:
        fail(f"[default] renders no {wanted}")
# A plain kubeadm cluster has no StorageClass: the default install claims no volume, and
# the remediator keeps its snapshots in a hostPath on its control-plane node, handed to its
# non-root user by the init container; the pvc option still renders and mounts its claim.
if "PersistentVolumeClaim" in default_kinds:
    fail("[default] renders a PersistentVolumeClaim, which stays unbound without a StorageClass")


def remediator_pod(set_name):
    docs = yaml.safe_load_all((OUT / "rendered" / f"{set_name}.yaml").read_text())
    [d] = [d for d in docs if d and d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-remediator")]
    return d["spec"]["template"]["spec"]


pod = remediator_pod("default")
snapshots = {v["name"]: v for v in pod["volumes"]}["snapshots"]
wanted_path = merged({}, "remediator")["snapshots"]["hostPath"]
if snapshots.get("hostPath") != {"path": wanted_path, "type": "DirectoryOrCreate"}:
    fail(f"[default] the remediator's snapshot volume is not a hostPath {wanted_path} (DirectoryOrCreate): {snapshots}")
init = {c["name"]: c for c in pod.get("initContainers", [])}.get("snapshot-dir")
if not init or {"name": "snapshots", "mountPath": "/var/lib/etcd-dr/snapshots"} not in init["volumeMounts"] \
        or "chown 65532:65532" not in init["command"][-1]:
    fail(f"[default] no init container hands the hostPath snapshot directory to uid 65532: {init}")
if any(c.get("initContainers") for c in [remediator_pod("kubeadm-restore")]):
    fail("[kubeadm-restore] the remediator runs as root and needs no snapshot-dir init container")
pvc_docs = [d for d in yaml.safe_load_all((OUT / "rendered" / "snapshots-pvc.yaml").read_text()) if d]
claims = [d["metadata"]["name"] for d in pvc_docs if d["kind"] == "PersistentVolumeClaim"]
pod = remediator_pod("snapshots-pvc")
claimed = {v["name"]: v for v in pod["volumes"]}["snapshots"].get("persistentVolumeClaim", {}).get("claimName")
if len(claims) != 1 or claimed != claims[0] or pod.get("initContainers"):
    fail(f"[snapshots-pvc] remediator.snapshots.type=pvc must render one claim and mount it: claims {claims}, "
         f"mounted {claimed}, init containers {pod.get('initContainers')}")
print(f"  remediator snapshots: default hostPath {wanted_path} with no claim; type=pvc renders and mounts {claims}")
# kubeadm ships no metrics-server: an HPA only when asked for (all-options asks).
if "HorizontalPodAutoscaler" in default_kinds:
    fail("[default] renders a HorizontalPodAutoscaler, which needs a metrics-server kubeadm does not have")
all_options_kinds = {d["kind"] for d in yaml.safe_load_all((OUT / "rendered" / "all-options.yaml").read_text()) if d}
if "HorizontalPodAutoscaler" not in all_options_kinds:
    fail("[all-options] renders no HorizontalPodAutoscaler")
# The out-of-the-box install samples at one step (global.step, the default model's): the
# collector pushes and Prometheus scrapes the Pushgateway every step, or the detector's
# windows do not fill.
step = yaml.safe_load((CHART / "values.yaml").read_text())["global"]["step"]
default_docs = [d for d in yaml.safe_load_all((OUT / "rendered" / "default.yaml").read_text()) if d]
intervals = {
    f"{d['kind']} {d['metadata']['name']} --interval": a.split("=", 1)[1]
    for d in default_docs if d["kind"] in ("DaemonSet", "Deployment")
    for c in d["spec"]["template"]["spec"]["containers"] for a in c.get("args", [])
    if a.startswith("--interval=")
}
intervals.update({
    f"ServiceMonitor {d['metadata']['name']} interval": e.get("interval")
    for d in default_docs if d["kind"] == "ServiceMonitor" and d["spec"]["namespaceSelector"].get("matchNames") != [NAMESPACE]
    for e in d["spec"]["endpoints"]
})
if len(intervals) != 2 or set(intervals.values()) != {step}:
    fail(f"[default] the collector's interval and the Pushgateway's scrape must both be global.step ({step}): {intervals}")
# A monitoring stack elsewhere leaves no trace of the default namespace.
elsewhere = (OUT / "rendered" / "monitoring-namespace.yaml").read_text()
for trace in (".monitoring.svc", "kubernetes.io/metadata.name: monitoring", "- monitoring\n"):
    if trace in elsewhere:
        fail(f"[monitoring-namespace] the render still names the default namespace: {trace!r}")
print(f"  validated {checked['kubernetes']} objects against Kubernetes {' and '.join(KUBE_VERSIONS)} (strict), "
      f"{checked['crd-schema']} prometheus-operator and cert-manager objects against the minimal CRD schemas")
https_sets = [n for n, v in value_sets() if merged(v, "remediator")["https"]["enabled"]]
if len(https_sets) < 2:
    fail(f"the remediator's HTTPS is rendered by too few value sets: {https_sets}")
print(f"  remediator: listener, token Secret and detector URL checked; HTTPS in {', '.join(https_sets)}; "
      f"no template calls lookup; checksums only for what is read at start")

if shutil.which("promtool"):
    for name, groups in rule_groups.items():
        path = OUT / f"rules-{name}.yaml"
        path.write_text(yaml.safe_dump({"groups": groups}))
        run = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True)
        if run.returncode:
            fail(f"[{name}] promtool check rules:\n{run.stdout}{run.stderr}")
    print(f"  promtool: PromQL of the rules and the dashboard parses ({len(rule_groups)} value sets)")
    # Unit tests of the safety net (the default values' rules, written above).
    unit = pathlib.Path("ci/promtool/dr-stack-rules.test.yaml")
    shutil.copy(unit, OUT / unit.name)
    run = subprocess.run(["promtool", "test", "rules", str(OUT / unit.name)],
                         capture_output=True, text=True)
    if run.returncode:
        fail(f"promtool test rules {unit}:\n{run.stdout}{run.stderr}")
    else:
        print(f"  promtool: the alert rules' unit tests pass ({unit})")
else:
    print("  promtool not found (Debian package prometheus): PromQL not parsed")

# --- 4: the schemas are strict -----------------------------------------------------------
typos = {
    "top level": {"prometheusRules": {"enabled": True}},
    "global": {"global": {"imageRegistry": "x"}},
    "parent nested": {"metrics": {"serviceMonitor": {"intervall": "1m"}}},
    "collector": {"collector": {"pushgatway": {"url": "http://pg:9091"}}},
    "detector": {"detector": {"autoscaling": {"maxReplica": 3}}},
    "remediator": {"remediator": {"restore": {"kubeadmPresets": True}}},
    "wrong type": {"detector": {"replicaCount": "two"}},
    "bad enum": {"collector": {"mode": "sidecar"}},
    "latest tag": {"global": {"image": {"tag": "latest"}}},
    "bad compression": {"remediator": {"snapshots": {"store": {"compression": "gzip"}}}},
}
for what, values in typos.items():
    try:
        render_fresh(values)
        fail(f"values.schema.json accepts a typo ({what}): {values}")
    except helm.HelmValuesError:
        pass
# Values that pass the schema but do not fit together stop the render with a message.
misfits = {
    "deployment mode without targets": {"collector": {"mode": "deployment"}},
    "confirmation without a detector": {"detector": {"enabled": False}},
    "tls without a secret": {"collector": {"tls": {"enabled": True}}},
    "a detector selector that misses the collector's job": {"collector": {"pushgateway": {"job": "etcd-main"}}},
    "cert-manager without an issuer": {"remediator": {"https": {"enabled": True, "certManager": {"enabled": True}}}},
}
for what, values in misfits.items():
    try:
        render_fresh(values)
        fail(f"renders despite {what}: {values}")
    except helm.HelmRenderError:
        pass
print(f"  values.schema.json rejects {len(typos)} kinds of typo; {len(misfits)} misfits stop the render")


# --- 4b: every value is documented --------------------------------------------------------
def undocumented(values_file, schema_file):
    """Keys that the schema closes (additionalProperties: false) need a `##` line above."""
    schema = json.loads(schema_file.read_text())
    missing, stack, documented = [], [], False
    for line in values_file.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("##"):
            documented = True
            continue
        m = re.match(r"^(\s*)([A-Za-z0-9_.\-]+):", line)
        if not m or stripped.startswith("#"):
            if stripped and not stripped.startswith("#"):
                documented = False
            continue
        indent = len(m.group(1))
        stack = [(i, k) for i, k in stack if i < indent] + [(indent, m.group(2))]
        node = schema
        for _, key in stack[:-1]:
            node = (node.get("properties") or {}).get(key, {})
        # Kubernetes' own ResourceRequirements (requests/limits) explain themselves.
        in_resources = len(stack) > 1 and stack[-2][1] == "resources"
        if node.get("additionalProperties") is False and not documented and not in_resources:
            missing.append(".".join(k for _, k in stack))
        documented = False
    return missing


for values_file in [CHART / "values.yaml", *sorted(CHART.glob("charts/*/values.yaml"))]:
    for key in undocumented(values_file, values_file.with_name("values.schema.json")):
        fail(f"{values_file}: {key} has no ## comment")

if failures:
    print(f"check-chart: {len(failures)} problem(s)", file=sys.stderr)
    sys.exit(1)
PY

# --- 3: checkov, offline --------------------------------------------------------------------
# No API key, no download of guidelines, severities or external checks (--skip-download), no
# guideline mapping call (BC_SKIP_MAPPING): a plain local scan, which also runs with the
# network cut off (checked with `unshare -n`).
echo "check-chart: checkov (offline) over every rendered value set"
# No --quiet: its JSON would drop the passed and skipped checks, which are reported below.
checkov_args=(--framework kubernetes --compact --skip-download --output json)
for rendered in "$work"/rendered/*.yaml; do
  checkov_args+=(-f "$rendered")
done
set +e
BC_SKIP_MAPPING=TRUE LOG_LEVEL=WARNING "$venv/bin/checkov" "${checkov_args[@]}" >"$work/checkov.json" 2>"$work/checkov.err"
checkov_rc=$?
set -e
"$python" - "$work/checkov.json" "$checkov_rc" "$work/checkov.err" <<'PY'
import collections
import json
import sys

path, rc, err = sys.argv[1], int(sys.argv[2]), sys.argv[3]
try:
    report = json.load(open(path))
except json.JSONDecodeError:
    sys.exit(f"checkov gave no report (exit {rc}):\n{open(err).read()[-3000:]}")
reports = report if isinstance(report, list) else [report]
failed, skipped, passed = [], collections.Counter(), 0
for r in reports:
    if r.get("summary", {}).get("parsing_errors"):
        sys.exit(f"checkov could not parse some rendered files: {r['results'].get('parsing_errors')}")
    results = r.get("results", {})
    failed += results.get("failed_checks", [])
    passed += len(results.get("passed_checks", []))
    for s in results.get("skipped_checks", []):
        skipped[(s["check_id"], s.get("check_result", {}).get("suppress_comment", ""))] += 1
for f in failed:
    print(f"  FAIL {f['check_id']} {f['check_name']}: {f['resource']} ({f['file_path']})")
print(f"  checkov: {passed} passed, {len(failed)} failed, {sum(skipped.values())} skipped by annotation:")
for (check, reason), n in sorted(skipped.items()):
    print(f"    {check} x{n}: {reason}")
if not passed:
    sys.exit("checkov checked nothing: did the rendered files reach it?")
if failed or rc not in (0, 1):
    sys.exit(1)
PY
echo "check-chart: ok in $((SECONDS - started))s"
