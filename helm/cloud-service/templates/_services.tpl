{{/*
Services. The stable Service (named like the release) and, with a Rollout, the canary Service
carry only the API port; Argo Rollouts points their selectors at the stable and canary
ReplicaSets. The metrics Service carries only the admin port and selects every pod of the
release, so that Prometheus scrapes stable and canary pods exactly once each.
*/}}
{{- define "cloud-service.service" -}}
{{- $fullname := include "cloud-service.names.fullname" .root -}}
apiVersion: v1
kind: Service
metadata:
  name: {{ $fullname }}{{ .suffix }}
  labels:
    {{- include "cloud-service.labels.standard" .root | nindent 4 }}
    cloud-platform.io/service-role: {{ .role }}
spec:
  type: ClusterIP
  selector:
    {{- include "cloud-service.labels.matchLabels" .root | nindent 4 }}
  ports:
    {{- if eq .role "metrics" }}
    - name: admin
      port: {{ .root.Values.ports.admin }}
      targetPort: admin
      protocol: TCP
    {{- else }}
    - name: http
      port: {{ .root.Values.service.port }}
      targetPort: http
      protocol: TCP
    {{- end }}
{{- end -}}

{{- define "cloud-service.services" -}}
{{ include "cloud-service.service" (dict "root" . "suffix" "" "role" "stable") }}
{{- if .Values.rollout.enabled }}
---
{{ include "cloud-service.service" (dict "root" . "suffix" "-canary" "role" "canary") }}
{{- end }}
---
{{ include "cloud-service.service" (dict "root" . "suffix" "-metrics" "role" "metrics") }}
{{- end -}}
