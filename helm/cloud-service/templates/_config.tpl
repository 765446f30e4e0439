{{/*
The ConfigMap holding the service config file (config.yaml, mounted at /etc/cloud). Its keys
are the service's Config struct (serde deny_unknown_fields): only real keys belong here.
`.omit` lists top-level config sections left out (a Job that does not read them), and
`.withFiles` (default true) whether the `configFiles` go beside it.
*/}}
{{- define "cloud-service.configMap" -}}
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ .name | default (include "cloud-service.names.fullname" .root) }}
  labels:
    {{- include "cloud-service.labels.standard" .root | nindent 4 }}
  {{- with .annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
data:
  {{- $config := deepCopy .root.Values.config }}
  {{- range .omit }}
  {{- $_ := unset $config . }}
  {{- end }}
  config.yaml: |
    {{- toYaml $config | nindent 4 }}
  {{- /* Files the config refers to, mounted beside it (e.g. the feature-flag bootstrap). */}}
  {{- if ne .withFiles false }}
  {{- range $name, $content := .root.Values.configFiles }}
  {{ $name }}: |
    {{- $content | nindent 4 }}
  {{- end }}
  {{- end }}
{{- end -}}
