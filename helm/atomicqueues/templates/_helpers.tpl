{{/*
Names. Kubernetes names are DNS labels (63 characters); "-operator" and the like are appended
to the full name, so it is cut at 50.
*/}}
{{- define "atomicqueues.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 50 | trimSuffix "-" }}
{{- end }}

{{- define "atomicqueues.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "atomicqueues.operatorName" -}}
{{- printf "%s-operator" (include "atomicqueues.fullname" .) }}
{{- end }}

{{- define "atomicqueues.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "atomicqueues.operatorName" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "atomicqueues.leaseName" -}}
{{- default (include "atomicqueues.operatorName" .) .Values.operator.leaseName }}
{{- end }}

{{/*
The namespaces the operator watches when not cluster-wide: the release namespace first, then
watch.namespaces, without repeats. A JSON list (use with fromJsonArray).
*/}}
{{- define "atomicqueues.watchedNamespaces" -}}
{{- $namespaces := list .Release.Namespace }}
{{- range .Values.watch.namespaces }}
{{- $namespaces = append $namespaces . }}
{{- end }}
{{- $namespaces | uniq | toJson }}
{{- end }}

{{- define "atomicqueues.image" -}}
{{- printf "%s:%s" .image.repository (default .chart.AppVersion .image.tag) }}
{{- end }}

{{/* Labels of every resource (commonLabels never replace the chart's own). */}}
{{- define "atomicqueues.labels" -}}
{{- $labels := include "atomicqueues.selectorLabels" . | fromYaml }}
{{- $_ := set $labels "helm.sh/chart" (printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-") }}
{{- $_ = set $labels "app.kubernetes.io/version" .Chart.AppVersion }}
{{- $_ = set $labels "app.kubernetes.io/managed-by" .Release.Service }}
{{- $_ = set $labels "app.kubernetes.io/part-of" "atomicqueues" }}
{{- toYaml (merge $labels .Values.commonLabels) }}
{{- end }}

{{- define "atomicqueues.selectorLabels" -}}
app.kubernetes.io/name: {{ include "atomicqueues.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels and selector labels of the operator's resources. */}}
{{- define "atomicqueues.operatorLabels" -}}
{{- $labels := include "atomicqueues.labels" . | fromYaml }}
{{- toYaml (set $labels "app.kubernetes.io/component" "operator") }}
{{- end }}

{{- define "atomicqueues.operatorSelectorLabels" -}}
{{ include "atomicqueues.selectorLabels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{/*
What the operator does with pools, their pods, Secrets and Events in a namespace it watches
(verbs as used by operator/aq_operator: kopf's watches, finalizers and Events, kube.py's calls).
*/}}
{{- define "atomicqueues.operatorRules" -}}
# kopf lists and watches pools (watch-event handlers only: no finalizer, no annotations).
- apiGroups: ["atomicqueues.io"]
  resources: ["entityworkerpools"]
  verbs: ["list", "watch"]
# kube.py patch_status writes a pool's status.
- apiGroups: ["atomicqueues.io"]
  resources: ["entityworkerpools/status"]
  verbs: ["patch"]
# kopf watches the pools' pods; kube.py lists, creates, annotates (patch) and deletes them.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch", "create", "patch", "delete"]
# kube.py secret_value reads the Redis URL a pool's spec.redis.secretRef names.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
# kopf posts core v1 Events about pools (POST only: it never patches or lists them).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end }}
