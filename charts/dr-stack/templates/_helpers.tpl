{{/*
Helpers shared by dr-stack and its subcharts. Named templates are global to a release, so
the subcharts (charts/*) use these instead of keeping copies of their own.
*/}}

{{/* Prefix of every object name: global.namePrefix, or the release name. */}}
{{- define "dr-stack.prefix" -}}
{{- $global := .Values.global | default dict -}}
{{- $global.namePrefix | default .Release.Name -}}
{{- end -}}

{{/* Name of one component's objects: (dict "root" $ "component" "detector"). */}}
{{- define "dr-stack.componentName" -}}
{{- printf "%s-%s" (include "dr-stack.prefix" .root) .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Name of the current chart's objects: <prefix>-<chart name>. */}}
{{- define "dr-stack.fullname" -}}
{{- include "dr-stack.componentName" (dict "root" . "component" .Chart.Name) -}}
{{- end -}}

{{/* Selector labels of a component: (dict "root" $ "name" "detector"). */}}
{{- define "dr-stack.selectorLabelsFor" -}}
app.kubernetes.io/name: {{ .name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- end -}}

{{/* Selector labels of the current chart. */}}
{{- define "dr-stack.selectorLabels" -}}
{{ include "dr-stack.selectorLabelsFor" (dict "root" . "name" .Chart.Name) }}
{{- end -}}

{{/* The standard labels, on every object of the release. */}}
{{- define "dr-stack.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "dr-stack.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: etcd-dr
{{- end -}}

{{/*
The container image: <global.image.registry>/<image.repository>:<tag>[@<digest>], the tag
from image.tag, else global.image.tag, else the chart's appVersion (never "latest").
*/}}
{{- define "dr-stack.image" -}}
{{- $global := .Values.global | default dict -}}
{{- $globalImage := $global.image | default dict -}}
{{- $tag := .Values.image.tag | default $globalImage.tag | default .Chart.AppVersion -}}
{{- $ref := printf "%s:%s" .Values.image.repository $tag -}}
{{- with $globalImage.registry }}{{ $ref = printf "%s/%s" . $ref }}{{ end -}}
{{- with .Values.image.digest }}{{ $ref = printf "%s@%s" $ref . }}{{ end -}}
{{- $ref -}}
{{- end -}}

{{/* imagePullSecrets from global.imagePullSecrets (names): (dict "root" $ "indent" 6). */}}
{{- define "dr-stack.imagePullSecrets" -}}
{{- $global := .root.Values.global | default dict -}}
{{- $indent := .indent -}}
{{- with $global.imagePullSecrets -}}
{{- $secrets := list -}}
{{- range . }}{{ $secrets = append $secrets (dict "name" .) }}{{ end -}}
{{- dict "imagePullSecrets" $secrets | toYaml | nindent $indent -}}
{{- end -}}
{{- end -}}

{{/*
Ingress rules of a component's NetworkPolicy: its port is open to Prometheus (/metrics),
to the release's helm test pod (/healthz) and to the sources in `extra` (a list of
NetworkPolicyPeer). Call with (dict "root" $ "port" 9311 "extra" (list ...)).
*/}}
{{- define "dr-stack.networkPolicyIngress" -}}
{{- $np := .root.Values.global.networkPolicy -}}
- ports:
    - protocol: TCP
      port: {{ .port }}
  from:
    - namespaceSelector:
        {{- include "dr-stack.monitoringNamespaceSelector" (dict "root" .root "selector" $np.prometheus.namespaceSelector) | nindent 8 }}
      podSelector:
        {{- toYaml $np.prometheus.podSelector | nindent 8 }}
    - podSelector:
        matchLabels:
          app.kubernetes.io/instance: {{ .root.Release.Name }}
          app.kubernetes.io/component: helm-test
    {{- with .extra }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end -}}

{{/*
A NetworkPolicy namespaceSelector: the one set in values, or else the namespace
global.monitoring.namespace (never {}, which would admit every namespace).
Call with (dict "root" $ "selector" <the selector from values>).
*/}}
{{- define "dr-stack.monitoringNamespaceSelector" -}}
{{- if .selector -}}
{{- toYaml .selector -}}
{{- else -}}
matchLabels:
  kubernetes.io/metadata.name: {{ .root.Values.global.monitoring.namespace }}
{{- end -}}
{{- end -}}

{{/* Prometheus' URL in the monitoring namespace (global.monitoring). */}}
{{- define "dr-stack.prometheusUrl" -}}
{{- with .Values.global.monitoring -}}
{{- printf "http://%s.%s.svc:%v" .prometheusService .namespace .prometheusPort -}}
{{- end -}}
{{- end -}}

{{/* The Pushgateway's URL in the monitoring namespace (global.monitoring). */}}
{{- define "dr-stack.pushgatewayUrl" -}}
{{- with .Values.global.monitoring -}}
{{- printf "http://%s.%s.svc:%v" .pushgatewayService .namespace .pushgatewayPort -}}
{{- end -}}
{{- end -}}

{{/*
Labels that make prometheus-operator pick up a ServiceMonitor, PrometheusRule or
AlertmanagerConfig: `release: <global.monitoring.release>` when set, then the object's own
additionalLabels. Call with (dict "root" $ "additional" <additionalLabels>).
*/}}
{{- define "dr-stack.selectionLabels" -}}
{{- $labels := dict -}}
{{- with .root.Values.global.monitoring.release }}{{ $_ := set $labels "release" . }}{{ end -}}
{{- $labels = merge (deepCopy (.additional | default dict)) $labels -}}
{{- with $labels }}{{ toYaml . }}{{ end -}}
{{- end -}}

{{/*
checkov skip annotations (checkov.io/skipN: ID=reason) for a workload: the image findings
that every pod here shares (see image.pullPolicy and image.digest in values.yaml), plus the
entries of `extra`. Call with (dict "root" $ "extra" (list "CKV_K8S_19=why")).
*/}}
{{- define "dr-stack.checkovSkips" -}}
{{- $skips := list -}}
{{- if ne .root.Values.image.pullPolicy "Always" -}}
{{- $skips = append $skips "CKV_K8S_15=tags are pinned, so IfNotPresent runs the same image and also works with images side-loaded without a registry" -}}
{{- end -}}
{{- if not .root.Values.image.digest -}}
{{- $skips = append $skips "CKV_K8S_43=no registry to resolve digests at build time; the tag is pinned to appVersion and image.digest pins further when set" -}}
{{- end -}}
{{- $annotations := dict -}}
{{- range $i, $skip := concat $skips (.extra | default list) -}}
{{- $_ := set $annotations (printf "checkov.io/skip%d" (add1 $i)) $skip -}}
{{- end -}}
{{- with $annotations }}{{ toYaml . }}{{ end -}}
{{- end -}}

{{/*
Liveness on /healthz and readiness on /readyz of the named port "http", over HTTPS when the
chart's `https.enabled` is set (the kubelet does not verify the certificate).
*/}}
{{- define "dr-stack.probes" -}}
{{- $scheme := "HTTP" -}}
{{- if (.Values.https | default dict).enabled }}{{ $scheme = "HTTPS" }}{{ end -}}
livenessProbe:
  httpGet:
    path: /healthz
    port: http
    scheme: {{ $scheme }}
  periodSeconds: {{ .Values.probes.periodSeconds }}
  timeoutSeconds: {{ .Values.probes.timeoutSeconds }}
  failureThreshold: {{ .Values.probes.failureThreshold }}
readinessProbe:
  httpGet:
    path: /readyz
    port: http
    scheme: {{ $scheme }}
  periodSeconds: {{ .Values.probes.periodSeconds }}
  timeoutSeconds: {{ .Values.probes.timeoutSeconds }}
  failureThreshold: {{ .Values.probes.failureThreshold }}
{{- end -}}

{{/*
Name of the Secret with the remediator's webhook token, from the parent or the remediator
chart: (dict "root" $ "values" <the remediator's values>).
*/}}
{{- define "dr-stack.webhookSecretName" -}}
{{- .values.webhook.existingSecret | default (include "dr-stack.componentName" (dict "root" .root "component" "remediator-webhook")) -}}
{{- end -}}

{{/*
Name of the Secret with the remediator's HTTPS certificate (https.secretName), from the
parent or the remediator chart: (dict "root" $ "values" <the remediator's values>).
*/}}
{{- define "dr-stack.remediatorTlsSecretName" -}}
{{- .values.https.secretName | default (include "dr-stack.componentName" (dict "root" .root "component" "remediator-tls")) -}}
{{- end -}}

{{/*
How Alertmanager and Prometheus check the remediator's HTTPS certificate: the CA from its
Secret, and the Service's name, which the certificate carries.
(dict "root" $ "values" <the remediator's values>).
*/}}
{{- define "dr-stack.remediatorTlsConfig" -}}
ca:
  secret:
    name: {{ include "dr-stack.remediatorTlsSecretName" . }}
    key: {{ .values.https.caKey }}
serverName: {{ printf "%s.%s.svc" (include "dr-stack.componentName" (dict "root" .root "component" "remediator")) .root.Release.Namespace }}
{{- end -}}
