{{/*
ServiceMonitor scraping /metrics on the admin port through the metrics Service. The pod label
rollouts-pod-template-hash becomes the series label rollouts_pod_template_hash, which the
canary AnalysisTemplates select on.
*/}}
{{- define "cloud-service.serviceMonitor" -}}
{{- if .Values.serviceMonitor.enabled -}}
apiVersion: monitoring.coreos.com/v1
kind: ServiceMonitor
metadata:
  name: {{ include "cloud-service.names.fullname" . }}
  labels:
    {{- include "cloud-service.labels.standard" . | nindent 4 }}
    {{- with .Values.serviceMonitor.labels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  selector:
    matchLabels:
      {{- include "cloud-service.labels.matchLabels" . | nindent 6 }}
      cloud-platform.io/service-role: metrics
  podTargetLabels:
    - rollouts-pod-template-hash
  endpoints:
    - port: admin
      path: /metrics
      scheme: http
      interval: {{ .Values.serviceMonitor.interval }}
      scrapeTimeout: {{ .Values.serviceMonitor.scrapeTimeout }}
{{- end -}}
{{- end -}}
