{{/*
The workload: a Deployment, or an Argo Rollouts Rollout with a canary strategy when
.Values.rollout.enabled. With autoscaling on, replicas are left to the HPA.
*/}}
{{- define "cloud-service.workload.kind" -}}
{{- if .Values.rollout.enabled -}}Rollout{{- else -}}Deployment{{- end -}}
{{- end -}}

{{- define "cloud-service.workload.apiVersion" -}}
{{- if .Values.rollout.enabled -}}argoproj.io/v1alpha1{{- else -}}apps/v1{{- end -}}
{{- end -}}

{{- define "cloud-service.workload" -}}
{{- $fullname := include "cloud-service.names.fullname" . -}}
apiVersion: {{ include "cloud-service.workload.apiVersion" . }}
kind: {{ include "cloud-service.workload.kind" . }}
metadata:
  name: {{ $fullname }}
  labels:
    {{- include "cloud-service.labels.standard" . | nindent 4 }}
spec:
  {{- if not .Values.autoscaling.enabled }}
  replicas: {{ .Values.replicaCount }}
  {{- end }}
  revisionHistoryLimit: 5
  selector:
    matchLabels:
      {{- include "cloud-service.labels.matchLabels" . | nindent 6 }}
  {{- if .Values.rollout.enabled }}
  strategy:
    canary:
      stableService: {{ $fullname }}
      canaryService: {{ $fullname }}-canary
      maxSurge: "25%"
      maxUnavailable: 0
      abortScaleDownDelaySeconds: 30
      {{- if .Values.ingress.enabled }}
      trafficRouting:
        nginx:
          stableIngress: {{ $fullname }}
      {{- end }}
      analysis:
        startingStep: {{ .Values.rollout.analysis.startingStep }}
        templates:
          - templateName: {{ $fullname }}-success-rate
          - templateName: {{ $fullname }}-latency-p99
        args:
          - name: namespace
            valueFrom:
              fieldRef:
                fieldPath: metadata.namespace
          - name: canary-hash
            valueFrom:
              podTemplateHashValue: Latest
      steps:
        {{- toYaml .Values.rollout.steps | nindent 8 }}
  {{- else }}
  strategy:
    type: RollingUpdate
    rollingUpdate:
      maxSurge: "25%"
      maxUnavailable: 0
  {{- end }}
  template:
    {{- include "cloud-service.pod.template" . | nindent 4 }}
{{- end -}}
