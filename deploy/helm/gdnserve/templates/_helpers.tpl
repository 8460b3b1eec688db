{{/* Names, labels and the values derived from other values. */}}

{{- define "gdnserve.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "gdnserve.fullname" -}}
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

{{- define "gdnserve.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "gdnserve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "gdnserve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "gdnserve.labels" -}}
helm.sh/chart: {{ include "gdnserve.chart" . }}
{{ include "gdnserve.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: server
{{- end }}

{{- define "gdnserve.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "gdnserve.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The server image: tag defaults to <appVersion>-cpu or -cuda. */}}
{{- define "gdnserve.imageTag" -}}
{{- default (printf "%s-%s" .Chart.AppVersion (ternary "cuda" "cpu" .Values.gpu.enabled)) .Values.image.tag }}
{{- end }}

{{- define "gdnserve.image" -}}
{{- printf "%s:%s" .Values.image.repository (include "gdnserve.imageTag" .) }}
{{- end }}

{{/* --device: explicit, else cuda with a GPU, else cpu. */}}
{{- define "gdnserve.device" -}}
{{- default (ternary "cuda" "cpu" .Values.gpu.enabled) .Values.server.device }}
{{- end }}

{{/* The model directory inside the container. */}}
{{- define "gdnserve.modelPath" -}}
{{- printf "%s/%s" (trimSuffix "/" .Values.model.mountPath) .Values.model.name }}
{{- end }}

{{/*
--threads: server.threads, or when 0 the CPU limit (else request) rounded
down, at least 1: "4" -> 4, "2500m" -> 2, 0.5 -> 1. 0 (all cores of the node)
when neither is set.
*/}}
{{- define "gdnserve.threads" -}}
{{- $threads := int .Values.server.threads }}
{{- if eq $threads 0 }}
{{- $cpu := "" }}
{{- with .Values.resources }}
{{- if and .requests .requests.cpu }}{{ $cpu = toString .requests.cpu }}{{ end }}
{{- if and .limits .limits.cpu }}{{ $cpu = toString .limits.cpu }}{{ end }}
{{- end }}
{{- if $cpu }}
{{- if hasSuffix "m" $cpu }}
{{- $threads = div (int (trimSuffix "m" $cpu)) 1000 }}
{{- else }}
{{- $threads = int (floor (float64 $cpu)) }}
{{- end }}
{{- $threads = max $threads 1 }}
{{- end }}
{{- end }}
{{- $threads }}
{{- end }}

{{/* Shutdown timing, all from .Values.shutdown (see values.yaml). */}}
{{- define "gdnserve.drainTimeoutMs" -}}
{{- mul (int .Values.shutdown.drainTimeoutSeconds) 1000 }}
{{- end }}

{{- define "gdnserve.terminationGracePeriodSeconds" -}}
{{- add (int .Values.shutdown.preStopSleepSeconds) (int .Values.shutdown.drainTimeoutSeconds) (int .Values.shutdown.exitMarginSeconds) }}
{{- end }}

{{/* Startup probe: enough periods to cover maxLoadSeconds (rounded up). */}}
{{- define "gdnserve.startupFailureThreshold" -}}
{{- $period := max (int .Values.probes.startup.periodSeconds) 1 }}
{{- max (div (add (int .Values.probes.startup.maxLoadSeconds) (sub $period 1)) $period) 1 }}
{{- end }}

{{/* The Secret holding the API key. */}}
{{- define "gdnserve.apiKeySecretName" -}}
{{- default (printf "%s-api-key" (include "gdnserve.fullname" .)) .Values.apiKey.existingSecret }}
{{- end }}

{{- define "gdnserve.apiKeyDir" -}}
/etc/gdnserve/api-key
{{- end }}

{{/* Checks of value combinations, included by the Deployment. */}}
{{- define "gdnserve.validate" -}}
{{- $sources := list "image" "pvc" "hostPath" "initContainer" }}
{{- if not (has .Values.model.source $sources) }}
{{- fail (printf "model.source must be one of %s, got %q" (join ", " $sources) .Values.model.source) }}
{{- end }}
{{- if and (eq .Values.model.source "pvc") (not .Values.model.pvc.claimName) }}
{{- fail "model.source=pvc needs model.pvc.claimName" }}
{{- end }}
{{- if and (eq .Values.model.source "hostPath") (not .Values.model.hostPath.path) }}
{{- fail "model.source=hostPath needs model.hostPath.path" }}
{{- end }}
{{- if and .Values.apiKey.enabled (not .Values.apiKey.existingSecret) (not .Values.apiKey.value) }}
{{- fail "apiKey.enabled needs apiKey.existingSecret or apiKey.value" }}
{{- end }}
{{- if not (has .Values.autoscaling.kind (list "hpa" "keda")) }}
{{- fail (printf "autoscaling.kind must be hpa or keda, got %q" .Values.autoscaling.kind) }}
{{- end }}
{{- if not (has .Values.service.sessionAffinity (list "None" "ClientIP")) }}
{{- fail (printf "service.sessionAffinity must be None or ClientIP, got %q" .Values.service.sessionAffinity) }}
{{- end }}
{{- if lt (int .Values.shutdown.drainTimeoutSeconds) 0 }}
{{- fail "shutdown.drainTimeoutSeconds must be >= 0" }}
{{- end }}
{{- end }}
