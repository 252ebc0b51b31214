#!/usr/bin/env bash
# Checks docs/operations.md against what the chart renders, from the doc alone, offline
# (Helm's Go SDK, PyPI helm-python-sdk, as ci/check-chart.sh; no helm binary, no cluster):
#   1. values: every chart value the doc names exists in charts/dr-stack/values.yaml or, under
#      collector./detector./remediator., in that subchart's values.yaml. A value is named by
#      the key of a `--set KEY=VALUE` in any command, or by an inline code span that is only
#      a dotted path whose first part is a top-level key of charts/dr-stack/values.yaml
#      (`global.monitoring.namespace`, `remediator.https.*`, `x.y=VALUE`); below a map whose
#      default is {} (labels, selectors) any key is accepted. A dotted span that is a value
#      only below a top-level key (`etcd.tls.source`) fails: it must be written in full;
#   2. renders: the documented `helm install` is rendered with exactly its --set values, each
#      `helm upgrade` with those values and its own (it must keep them: --reuse-values or
#      -f, and name its release and chart, not `helm upgrade ... --set`); every render must
#      succeed (the schema rejects unknown keys);
#   3. objects: what a kubectl command names (TYPE NAME, TYPE/NAME) in the install's
#      namespace, a `<prefix>-NAME` in prose, an inline span `RELEASE-NAME`, an alert `Etcd...`, a "Kind labelled `k: "v"`"
#      and `helm test` are rendered by the documented install (a port-forward's port is a
#      port of the Service); an object the doc has the user create (`kubectl create secret`
#      or `configmap`) is not rendered but is mounted, under that name and in that
#      namespace, by the render of the next helm command, with the keys the doc creates;
#   4. paths and flags: every repo path in code exists, and every --flag given to a ci/
#      script appears in it; with DR_BIN_DIR (built dr-* binaries), every --flag given to a
#      dr-* binary (of its subcommand) and every inline span made of --flags alone is in the
#      binary's --help.
# Prints one line per problem (FILE:LINE: what) and a summary of what was checked.
#   ci/check-docs.sh [DOC]        (default docs/operations.md)
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${DR_VENV:-target/venv}
python=$venv/bin/python
if [[ ! -x $python ]] || ! "$python" -c 'import helm_python, yaml' 2>/dev/null; then
  [[ -x $python ]] || python3 -m venv "$venv"
  echo "check-docs: installing ci/requirements-chart.txt into $venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r ci/requirements-chart.txt
fi

doc=${1:-docs/operations.md}
[[ -f $doc ]] || { echo "check-docs: no such file: $doc" >&2; exit 2; }
echo "check-docs: $doc against charts/dr-stack (helm $("$python" -c 'import helm_python as h; print(h.helm_sdk_version())'))"
CHART=charts/dr-stack DOC=$doc "$python" - <<'PY'
import collections
import os
import pathlib
import re
import shlex
import subprocess
import sys

import helm_python as helm
import yaml

CHART = pathlib.Path(os.environ["CHART"])
DOC = pathlib.Path(os.environ["DOC"])
TEXT = DOC.read_text()
failures = []
counts = collections.Counter()


def fail(line, msg):
    failures.append(msg)
    print(f"  FAIL {DOC}:{line}: {msg}")


# --- the doc: code blocks (commands) and inline code spans ---------------------------------
def line_of(text, pos):
    return text.count("\n", 0, pos) + 1


lines = TEXT.split("\n")
prose_lines, commands = [], []  # commands: (line, [tokens])
in_block, block = False, []
for number, raw in enumerate(lines, 1):
    if raw.strip().startswith("```"):
        if in_block:
            # Join continuations, drop comments, split at ; && || | and a trailing &.
            logical, start, buf = [], None, ""
            for n, text in block:
                start = start or n
                stripped = text.rstrip()
                if stripped.endswith("\\"):
                    buf += stripped[:-1] + " "
                    continue
                logical.append((start, buf + stripped))
                start, buf = None, ""
            for start, text in logical:
                # A comment's `--set KEY=VALUE` (an alternative the reader may pick) counts too.
                comment = re.search(r"(?:^|\s)#(.*)$", text)
                for arg in re.findall(r"--set[= ](\S+)", comment[1] if comment else ""):
                    commands.append((start, ["#", "--set", arg]))
                text = re.sub(r"(^|\s)#.*$", "", text)
                for part in re.split(r"\s(?:&&|\|\||;|\||&)(?:\s|$)|&\s*$", text):
                    part = re.sub(r"^\s*\w+=\$\(", "", part)  # token=$(kubectl ...
                    try:
                        tokens = shlex.split(part)
                    except ValueError as e:
                        fail(start, f"cannot split the command {part.strip()!r}: {e}")
                        continue
                    if tokens:
                        commands.append((start, tokens))
        in_block, block = not in_block, []
        prose_lines.append("")
        continue
    if in_block:
        block.append((number, raw))
        prose_lines.append("")
    else:
        prose_lines.append(raw)
PROSE = "\n".join(prose_lines)

spans = []  # (line, text): inline code outside code blocks, whitespace made single
for m in re.finditer(r"`([^`]+)`", PROSE):
    spans.append((line_of(PROSE, m.start()), " ".join(m.group(1).split())))
for line, span in spans:
    if re.match(r"(helm|kubectl|dr-[a-z]+|ci/\S+\.sh|--set)\s", span):
        for part in re.split(r"\s(?:&&|\|\||;|\|)\s", span):
            try:
                commands.append((line, shlex.split(part)))
            except ValueError:
                pass

# --- 1: every value the doc names exists ---------------------------------------------------
parent = yaml.safe_load((CHART / "values.yaml").read_text())
subcharts = {p.parent.name: yaml.safe_load(p.read_text()) for p in CHART.glob("charts/*/values.yaml")}
TOP = sorted(parent)


def walk(node, parts, strict=False):
    """True when parts name a key under node; a {} default is a free-form map (not strict)."""
    for i, part in enumerate(parts):
        if part == "*":
            return isinstance(node, dict) and bool(node) and i == len(parts) - 1
        if isinstance(node, dict):
            if part in node:
                node = node[part]
            elif not node and not strict:
                return True
            else:
                return False
        else:
            return False
    return True


def value_exists(path, strict=False):
    parts = path.split(".")
    if walk(parent, parts, strict):
        return True
    return parts[0] in subcharts and walk(subcharts[parts[0]], parts[1:], strict)


def leaf_paths(tree, prefix=""):
    if isinstance(tree, dict) and tree:
        for k, v in tree.items():
            yield from leaf_paths(v, f"{prefix}{k}.")
    else:
        yield prefix[:-1]


def merge(base, extra):
    out = dict(base)
    for k, v in extra.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def set_values(line, tokens):
    """The values of a command's --set/--set-string flags, checked to exist; None on a bad one."""
    values, i = {}, 0
    while i < len(tokens):
        tok = tokens[i]
        flag, _, arg = tok.partition("=") if tok.startswith("--set") and "=" in tok.split(".")[0] else (tok, "", None)
        if flag in ("--set", "--set-string"):
            if arg is None:
                i += 1
                arg = tokens[i] if i < len(tokens) else ""
            parse = helm.parse_set_string if flag == "--set" else helm.parse_set_string_values
            try:
                parsed = parse(arg)
            except helm.HelmError as e:
                fail(line, f"{flag} {arg}: not a Helm --set expression: {e}")
                i += 1
                continue
            for path in leaf_paths(parsed):
                counts["values"] += 1
                if not value_exists(path):
                    fail(line, f"{flag} {arg}: {path} is not a value of the chart (values.yaml or its subchart's)")
            values = merge(values, parsed)
        i += 1
    return values


VALUE_SPAN = re.compile(r"(%s)(\.[A-Za-z][A-Za-z0-9]*)+(\.\*)?(=\S*)?" % "|".join(map(re.escape, TOP)))
for line, span in spans:
    if VALUE_SPAN.fullmatch(span):
        path = span.split("=", 1)[0]
        counts["values"] += 1
        if not value_exists(path):
            fail(line, f"`{span}`: {path} is not a value of the chart (values.yaml or its subchart's)")
# A path named from below its top-level key (`etcd.tls.source` for remediator.etcd.tls.source)
# leaves the reader to guess where it goes: it must be written in full.
for line, span in spans:
    m = re.fullmatch(r"([A-Za-z][A-Za-z0-9]*(?:\.[A-Za-z][A-Za-z0-9]*)+)(=\S*)?", span)
    if m and not VALUE_SPAN.fullmatch(span):
        full = [f"{top}.{m[1]}" for top in TOP if value_exists(f"{top}.{m[1]}", strict=True)]
        if full:
            counts["values"] += 1
            fail(line, f"`{span}`: write the value in full ({' or '.join(full)})")
command_values = {id(tokens): set_values(line, tokens) for line, tokens in commands}

# --- 2: render the documented install, and each upgrade on top of it -----------------------


TAKES_ARG = {"-n", "--namespace", "--set", "--set-string", "--set-file", "-f", "--values", "--filename",
             "--version", "--timeout", "-o", "--output", "-l", "--selector", "-c", "--container", "--for",
             "--type"}


def positional(tokens):
    """The arguments of `PROGRAM ...` that are not options (nor their values)."""
    out, i = [], 1
    while i < len(tokens):
        if tokens[i] in TAKES_ARG:
            i += 2
            continue
        if not tokens[i].startswith("-"):
            out.append(tokens[i])
        i += 1
    return out


def namespace_of(tokens):
    for i, tok in enumerate(tokens):
        if tok in ("-n", "--namespace") and i + 1 < len(tokens):
            return tokens[i + 1]
        if tok.startswith("--namespace="):
            return tok.split("=", 1)[1]
    return "default"


# `helm install|upgrade RELEASE CHART`: those of a chart in this repository (charts/...); a
# span such as `helm install` alone is a mention, not a command.
helm_cmds = [(line, t) for line, t in commands if t[:1] == ["helm"] and len(positional(t)) >= 3
             and positional(t)[0] in ("install", "upgrade") and positional(t)[2].startswith("charts/")]


def render(values, release, namespace):
    with helm.Chart.load(str(CHART)) as chart:
        manifests = chart.render(values or None, name=release, namespace=namespace, is_install=True)
    docs = []
    for template, text in sorted(manifests.items()):
        if not template.endswith("NOTES.txt"):
            docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


for line, tokens in commands:
    args = positional(tokens)
    if tokens[:1] == ["helm"] and args[:1] in (["install"], ["upgrade"]) and "--set" in tokens and (
            len(args) < 3 or "..." in args):
        fail(line, f"`{' '.join(tokens)}`: say which release and chart (helm {args[0]} RELEASE CHART)")
installs = [(line, t) for line, t in helm_cmds if t[1] == "install"]
if not installs:
    fail(1, "no `helm install` command: nothing to render")
    print(f"check-docs: {len(failures)} problem(s)", file=sys.stderr)
    sys.exit(1)
install_line, install = installs[0]
RELEASE, CHART_ARG = positional(install)[1:3]
NAMESPACE = namespace_of(install)
INSTALL_VALUES = command_values[id(install)]
renders = {}  # line -> docs
for line, tokens in helm_cmds:
    release, chart_arg = positional(tokens)[1:3]
    if (release, chart_arg, namespace_of(tokens)) != (RELEASE, CHART_ARG, NAMESPACE):
        fail(line, f"`helm {tokens[1]}` of {release} {chart_arg} in {namespace_of(tokens)}, "
                   f"but the install is of {RELEASE} {CHART_ARG} in {NAMESPACE}")
    if not (pathlib.Path(chart_arg or "") / "Chart.yaml").is_file():
        fail(line, f"`helm {tokens[1]}`: {chart_arg} is not a chart in this repository")
    values = command_values[id(tokens)]
    if tokens[1] == "upgrade":
        if not {"--reuse-values", "--reset-then-reuse-values", "-f", "--values"} & set(tokens):
            fail(line, "`helm upgrade` without --reuse-values (or -f) drops the install's --set values")
        values = merge(INSTALL_VALUES, values)
    try:
        renders[line] = render(values, RELEASE, NAMESPACE)
        counts["renders"] += 1
    except helm.HelmError as e:
        fail(line, f"`helm {tokens[1]}` does not render: {str(e).strip().splitlines()[-1]}")
INSTALLED = renders.get(install_line, [])
print(f"  install ({DOC}:{install_line}): helm install {RELEASE} {CHART_ARG} -n {NAMESPACE} with "
      f"{', '.join(leaf_paths(INSTALL_VALUES))}: {len(INSTALLED)} objects")

# --- 3: the objects the doc refers to ------------------------------------------------------
KINDS = {"secret": "Secret", "secrets": "Secret", "configmap": "ConfigMap", "cm": "ConfigMap",
         "svc": "Service", "service": "Service", "deployment": "Deployment", "deploy": "Deployment",
         "daemonset": "DaemonSet", "ds": "DaemonSet", "pvc": "PersistentVolumeClaim",
         "persistentvolumeclaim": "PersistentVolumeClaim", "pod": "Pod", "po": "Pod",
         "networkpolicy": "NetworkPolicy", "servicemonitor": "ServiceMonitor",
         "prometheusrule": "PrometheusRule", "alertmanagerconfig": "AlertmanagerConfig"}


def rendered(kind, name, docs=None):
    return [d for d in (INSTALLED if docs is None else docs)
            if d["kind"] == kind and d["metadata"]["name"] == name
            and d["metadata"].get("namespace", NAMESPACE) == NAMESPACE]


def placeholder(name):
    return "<" in name or "..." in name or "$" in name


made = []  # (line, kind, name, namespace, keys)
for line, tokens in commands:
    if tokens[:1] != ["kubectl"]:
        continue
    namespace = namespace_of(tokens)
    verb, *args = positional(tokens) or [""]
    if verb == "create" and args[:1] in (["secret"], ["configmap"]):
        kind = KINDS[args[0]]
        name = args[2] if kind == "Secret" and len(args) > 2 else (args[1] if len(args) > 1 else "")
        if not name or placeholder(name):
            continue
        keys = set()
        for tok in tokens:
            m = re.match(r"--from-(file|literal)=(.*)", tok)
            if m:
                keys.add(m[2].split("=", 1)[0] if "=" in m[2] else pathlib.Path(m[2]).name)
        made.append((line, kind, name, namespace, keys))
        continue
    if verb == "rollout" and args[:1] == ["status"]:
        args = args[1:]
    elif verb not in ("get", "describe", "annotate", "label", "delete", "edit", "logs",
                      "port-forward", "wait", "rollout", "create"):
        continue
    if verb == "create" and args[:1] == ["namespace"] or verb == "label" and args[:1] in (["namespace"], ["ns"]):
        counts["objects"] += 1
        if args[1:2] != [NAMESPACE]:
            fail(line, f"namespace {' '.join(args[1:2])} is not the install's namespace {NAMESPACE}")
        continue
    if "/" in (args[0] if args else ""):
        kind_word, name = args[0].split("/", 1)
    elif len(args) >= 2:
        kind_word, name = args[0], args[1]
    else:
        continue
    kind = KINDS.get(kind_word.lower())
    if not kind or placeholder(name):
        continue
    counts["objects"] += 1
    if namespace != NAMESPACE:
        fail(line, f"kubectl -n {namespace}: the chart is installed in {NAMESPACE}")
    found = rendered(kind, name)
    if not found and not any(m[1:3] == (kind, name) for m in made):
        fail(line, f"{kind} {name}: the documented install renders no such object")
    if verb == "port-forward" and found:
        wanted = [p.split(":")[-1] for p in args[1 if "/" in args[0] else 2:]]
        ports = {str(p.get("port")) for p in found[0]["spec"].get("ports", [])} | \
                {p.get("name") for p in found[0]["spec"].get("ports", [])}
        for port in wanted:
            counts["objects"] += 1
            if port not in ports:
                fail(line, f"Service {name} has no port {port} (it has {sorted(ports - {None})})")


def mounts(docs, kind, name):
    """(workload, items keys or None) of pod volumes reading the Secret/ConfigMap name."""
    for d in docs:
        spec = d.get("spec", {})
        pod = spec if d["kind"] == "Pod" else spec.get("template", {}).get("spec", {})
        for v in pod.get("volumes", []) or []:
            src = v.get("secret") if kind == "Secret" else v.get("configMap")
            if src and src.get("secretName" if kind == "Secret" else "name") == name:
                yield d, [i["key"] for i in src.get("items", [])] or None


for line, kind, name, namespace, keys in made:
    counts["hand-made"] += 1
    later = [l for l in sorted(renders) if l > line]
    if not later:
        fail(line, f"{kind} {name} is created, but no helm command after it installs the chart that reads it")
        continue
    docs = renders[later[0]]
    if rendered(kind, name, docs):
        fail(line, f"{kind} {name} is created by hand and also rendered by the chart (line {later[0]})")
    if namespace != NAMESPACE:
        fail(line, f"{kind} {name} is created in {namespace}, the chart runs in {NAMESPACE}")
    users = list(mounts(docs, kind, name))
    if not users:
        fail(line, f"{kind} {name}: the chart as installed at line {later[0]} mounts no {kind} of that name")
    for workload, items in users:
        for key in sorted(set(items or ()) - keys):
            fail(line, f"{kind} {name}: {workload['kind']} {workload['metadata']['name']} reads key {key}, "
                       f"which the doc does not create (it creates {sorted(keys)})")

made_names = {m[2] for m in made}
for m in re.finditer(r"<prefix>-([a-z0-9-]*[a-z0-9])(\.<namespace>\.svc)?", PROSE):
    name, line = f"{RELEASE}-{m[1]}", line_of(PROSE, m.start())
    counts["objects"] += 1
    if m[2]:
        if not rendered("Service", name):
            fail(line, f"{m[0]}: the documented install renders no Service {name}")
    elif name not in made_names and not any(d["metadata"]["name"] == name for d in INSTALLED):
        fail(line, f"{m[0]}: the documented install renders no object {name}")

for line, span in spans:
    if re.fullmatch(re.escape(RELEASE) + r"-[a-z0-9-]*[a-z0-9]", span):
        counts["objects"] += 1
        if span not in made_names and not any(d["metadata"]["name"] == span for d in INSTALLED):
            fail(line, f"{span}: the documented install renders no object of that name")

alerts = {r["alert"] for d in INSTALLED if d["kind"] == "PrometheusRule"
          for g in d["spec"]["groups"] for r in g["rules"] if "alert" in r}
for line, span in spans:
    if re.fullmatch(r"Etcd[A-Z][A-Za-z]+", span):
        counts["objects"] += 1
        if span not in alerts:
            fail(line, f"alert {span}: the documented install's PrometheusRule has no such alert ({sorted(alerts)})")

for m in re.finditer(r"\b([A-Z][A-Za-z]+) labell?ed `([\w./-]+): \"?([^`\"]*)\"?`", PROSE):
    counts["objects"] += 1
    if not any(d["kind"] == m[1] and (d["metadata"].get("labels") or {}).get(m[2]) == m[3] for d in INSTALLED):
        fail(line_of(PROSE, m.start()), f"{m[0]}: the documented install renders no such {m[1]}")

for line, tokens in commands:
    if tokens[:1] == ["helm"] and positional(tokens)[:1] == ["test"] and len(positional(tokens)) > 1:
        counts["objects"] += 1
        if positional(tokens)[1:2] != [RELEASE] or namespace_of(tokens) != NAMESPACE:
            fail(line, f"helm test {positional(tokens)[1]} in {namespace_of(tokens)}: the install is {RELEASE} in {NAMESPACE}")
        if not any(d["kind"] == "Pod" and "test" in (d["metadata"].get("annotations") or {}).get("helm.sh/hook", "")
                   for d in INSTALLED):
            fail(line, "helm test: the documented install renders no test hook Pod")

# --- 4: repo paths, script flags, binary flags ---------------------------------------------
tracked = subprocess.run(["git", "ls-files"], capture_output=True, text=True, check=True).stdout.split()
TOP_DIRS = sorted({p.split("/", 1)[0] for p in tracked if "/" in p})
PATH_RE = re.compile(r"(?<![\w./$<-])((?:%s)/[\w./-]*)" % "|".join(map(re.escape, TOP_DIRS)))
code_texts = [(line, " ".join(tokens)) for line, tokens in commands] + spans
seen_paths = set()
for line, text in code_texts:
    for m in PATH_RE.finditer(text):
        path = m[1].rstrip(".,:;")
        if (line, path) in seen_paths:
            continue
        seen_paths.add((line, path))
        counts["paths"] += 1
        if not pathlib.Path(path).exists():
            fail(line, f"{path}: no such file or directory in the repository")
for m in re.finditer(r"\]\(([^)#\s]+)", PROSE):
    if not re.match(r"[a-z]+:", m[1]):
        counts["paths"] += 1
        if not (DOC.parent / m[1]).exists():
            fail(line_of(PROSE, m.start()), f"link {m[1]}: no such file")
for line, tokens in commands:
    if re.fullmatch(r"ci/[\w.-]+\.sh", tokens[0]) and pathlib.Path(tokens[0]).is_file():
        script = pathlib.Path(tokens[0]).read_text()
        for flag in (t.split("=", 1)[0] for t in tokens[1:] if t.startswith("--")):
            counts["script flags"] += 1
            if not re.search(r"(?<![\w-])%s(?![\w-])" % re.escape(flag), script):
                fail(line, f"{tokens[0]} knows no {flag}")

bin_dir = os.environ.get("DR_BIN_DIR")
if bin_dir:
    helps = {}

    def help_of(binary, sub=None):
        key = (binary, sub)
        if key not in helps:
            path = pathlib.Path(bin_dir) / binary
            if not path.is_file():
                helps[key] = None
            else:
                cmd = [str(path)] + ([sub] if sub else []) + ["--help"]
                helps[key] = subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout
        return helps[key]

    def subcommands(text):
        block = re.search(r"^Commands:\n((?:  .*\n)+)", text or "", re.M)
        return [l.split()[0] for l in block[1].splitlines() if l.split()[0] != "help"] if block else []

    def flags_of(text):
        return set(re.findall(r"(?<![\w-])--[a-z0-9][a-z0-9-]*", text or ""))

    for line, tokens in commands:
        binary = pathlib.Path(tokens[0]).name
        if not re.fullmatch(r"dr-[a-z]+", binary):
            continue
        top = help_of(binary)
        if top is None:
            fail(line, f"{binary}: not in DR_BIN_DIR={bin_dir}")
            continue
        args = [t for t in tokens[1:] if not t.startswith("-")]
        sub = args[0] if args and args[0] in subcommands(top) else None
        known = flags_of(help_of(binary, sub))
        for flag in (t.split("=", 1)[0] for t in tokens[1:] if t.startswith("--")):
            counts["binary flags"] += 1
            if flag not in known:
                fail(line, f"{binary}{' ' + sub if sub else ''} has no {flag} (not in its --help)")
    everything = set()
    for binary in sorted(p.name for p in pathlib.Path(bin_dir).glob("dr-*") if p.suffix == ""):
        top = help_of(binary)
        everything |= flags_of(top)
        for sub in subcommands(top):
            everything |= flags_of(help_of(binary, sub))
    for line, span in spans:
        if re.fullmatch(r"--[a-z0-9-]+(/--[a-z0-9-]+)*", span):
            for flag in span.split("/"):
                counts["binary flags"] += 1
                if flag not in everything:
                    fail(line, f"`{span}`: {flag} is no flag of any dr-* binary in DR_BIN_DIR")
else:
    print("  binary flags: DR_BIN_DIR not set; dr-* flags not checked against the binaries' --help")

print(f"  checked {counts['values']} value names, {counts['renders']} renders (the install and "
      f"{counts['renders'] - 1} upgrades), {counts['objects']} object references, "
      f"{counts['hand-made']} hand-made objects mounted by the chart, {counts['paths']} repo paths, "
      f"{counts['script flags']} script flags, {counts['binary flags']} dr-* binary flags")
if failures:
    print(f"check-docs: {len(failures)} problem(s) in {DOC}", file=sys.stderr)
    sys.exit(1)
print("check-docs: ok")
PY
