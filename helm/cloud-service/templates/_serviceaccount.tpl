{{/* The ServiceAccount; its token is never mounted (the services do not call the API server). */}}
{{- define "cloud-service.serviceAccount" -}}
apiVersion: v1
kind: ServiceAccount
metadata:
  name: {{ .name | default (include "cloud-service.names.serviceAccount" .root) }}
  labels:
    {{- include "cloud-service.labels.standard" .root | nindent 4 }}
  {{- with .annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
automountServiceAccountToken: false
{{- end -}}
