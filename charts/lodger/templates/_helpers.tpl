{{/* Names, labels and small shared snippets of the Lodger chart. */}}

{{- define "lodger.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "lodger.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "lodger.operatorName" -}}
{{- printf "%s-operator" (include "lodger.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "lodger.agentName" -}}
{{- printf "%s-node-agent" (include "lodger.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The ClusterRole the operator binds in job namespaces; its name is part of the contract
     (docs/contracts.md), so it does not depend on the release name. */}}
{{- define "lodger.stubClusterRole" -}}
lodger-stub
{{- end }}

{{- define "lodger.checkpointClaim" -}}
{{- if .Values.checkpoints.existingClaim }}
{{- .Values.checkpoints.existingClaim }}
{{- else }}
{{- printf "%s-checkpoints" (include "lodger.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "lodger.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "lodger.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "lodger.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: lodger
{{- end }}

{{/* Selector labels of one component (operator or node-agent): stable across upgrades. */}}
{{- define "lodger.selectorLabels" -}}
app.kubernetes.io/name: {{ include "lodger.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Labels of a component's pods: its selector labels plus the descriptive ones. */}}
{{- define "lodger.podLabels" -}}
{{ include "lodger.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: lodger
{{- end }}

{{/* RUST_LOG-style filter from logging.level. */}}
{{- define "lodger.rustLog" -}}
{{- printf "%s,kube=warn,hyper=warn,tower=warn,rustls=warn" .Values.logging.level }}
{{- end }}

{{/* The container security context shared by the operator and the agent. */}}
{{- define "lodger.hardenedContainer" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}
