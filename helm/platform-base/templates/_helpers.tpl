{{- define "platform-base.labels" -}}
app.kubernetes.io/name: platform-base
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: cloud-platform
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
cloud-platform.io/environment: {{ .Values.environment }}
{{- end -}}
