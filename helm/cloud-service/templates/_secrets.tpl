{{/*
One ExternalSecret per secret the service reads. The External Secrets operator copies the
remote value into a Secret "<fullname>-<item.name>" with the key "value"; the container reads it
through secretKeyRef. The chart itself never renders a Secret.
Takes (dict "root" $ "item" <secrets.items entry> "name" <optional override> "annotations" <map>).
*/}}
{{- define "cloud-service.externalSecret" -}}
{{- $name := .name | default (printf "%s-%s" (include "cloud-service.names.fullname" .root) .item.name) -}}
apiVersion: external-secrets.io/v1
kind: ExternalSecret
metadata:
  name: {{ $name }}
  labels:
    {{- include "cloud-service.labels.standard" .root | nindent 4 }}
  {{- with .annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  refreshInterval: {{ .root.Values.secrets.refreshInterval }}
  secretStoreRef:
    kind: {{ .root.Values.secrets.store.kind }}
    name: {{ .root.Values.secrets.store.name }}
  target:
    name: {{ $name }}
    creationPolicy: Owner
    deletionPolicy: Retain
  data:
    - secretKey: value
      remoteRef:
        key: {{ printf "%s/%s" .root.Values.secrets.remotePrefix .item.remoteKey }}
        {{- with .item.property }}
        property: {{ . }}
        {{- end }}
{{- end -}}

{{- define "cloud-service.externalSecrets" -}}
{{- $root := . -}}
{{- range $i, $item := .Values.secrets.items }}
{{- if $i }}
---
{{- end }}
{{ include "cloud-service.externalSecret" (dict "root" $root "item" $item) }}
{{- end }}
{{- end -}}
