{{/* HorizontalPodAutoscaler (autoscaling/v2) on CPU and memory utilisation. */}}
{{- define "cloud-service.hpa" -}}
{{- if .Values.autoscaling.enabled -}}
{{- $fullname := include "cloud-service.names.fullname" . -}}
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: {{ $fullname }}
  labels:
    {{- include "cloud-service.labels.standard" . | nindent 4 }}
spec:
  scaleTargetRef:
    apiVersion: {{ include "cloud-service.workload.apiVersion" . }}
    kind: {{ include "cloud-service.workload.kind" . }}
    name: {{ $fullname }}
  minReplicas: {{ .Values.autoscaling.minReplicas }}
  maxReplicas: {{ .Values.autoscaling.maxReplicas }}
  metrics:
    - type: Resource
      resource:
        name: cpu
        target:
          type: Utilization
          averageUtilization: {{ .Values.autoscaling.targetCPUUtilizationPercentage }}
    - type: Resource
      resource:
        name: memory
        target:
          type: Utilization
          averageUtilization: {{ .Values.autoscaling.targetMemoryUtilizationPercentage }}
  behavior:
    scaleDown:
      stabilizationWindowSeconds: 300
{{- end -}}
{{- end -}}

{{/*
PodDisruptionBudget. Rendered whenever the service can run two or more pods (replicaCount >= 2,
or autoscaling on with minReplicas >= 2), and whenever podDisruptionBudget.enabled.
*/}}
{{- define "cloud-service.pdb" -}}
{{- $min := ternary .Values.autoscaling.minReplicas .Values.replicaCount .Values.autoscaling.enabled -}}
{{- if or .Values.podDisruptionBudget.enabled (ge (int $min) 2) -}}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "cloud-service.names.fullname" . }}
  labels:
    {{- include "cloud-service.labels.standard" . | nindent 4 }}
spec:
  maxUnavailable: {{ .Values.podDisruptionBudget.maxUnavailable }}
  selector:
    matchLabels:
      {{- include "cloud-service.labels.matchLabels" . | nindent 6 }}
{{- end -}}
{{- end -}}
