{{/*
Names and labels, on the model of Bitnami's common chart.
Every template takes the including chart's root context (`.`).
*/}}

{{/* The chart name, or .Values.nameOverride. */}}
{{- define "cloud-service.names.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The fully qualified name of every resource: .Values.fullnameOverride, else the release name
when it already contains the chart name, else "<release>-<chart>". Truncated to 63 characters
(the DNS label limit) minus room for the longest suffix used ("-bootstrap-admin-client-secret").
*/}}
{{- define "cloud-service.names.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 32 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "cloud-service.names.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 32 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 32 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* "<chart>-<version>" for the helm.sh/chart label. */}}
{{- define "cloud-service.names.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The standard app.kubernetes.io/* labels, on every object. */}}
{{- define "cloud-service.labels.standard" -}}
app.kubernetes.io/name: {{ include "cloud-service.names.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/part-of: cloud-platform
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ include "cloud-service.names.chart" . }}
{{- end -}}

{{/* The immutable subset used in selectors (never add the version here). */}}
{{- define "cloud-service.labels.matchLabels" -}}
app.kubernetes.io/name: {{ include "cloud-service.names.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The ServiceAccount the service's pods run as. */}}
{{- define "cloud-service.names.serviceAccount" -}}
{{- include "cloud-service.names.fullname" . -}}
{{- end -}}

{{/*
The container image "<repository>:<tag>", or "<repository>:<tag>@<digest>" when image.digest is
set (the release pipeline pins it; the runtime pulls by digest, the tag stays readable and is
what the prod semver policy checks). An empty tag fails the render.
*/}}
{{- define "cloud-service.image" -}}
{{- $ref := printf "%s:%s" .Values.image.repository (required "image.tag is required" .Values.image.tag) -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" $ref .Values.image.digest -}}
{{- else -}}
{{- $ref -}}
{{- end -}}
{{- end -}}
