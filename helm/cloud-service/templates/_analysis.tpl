{{/*
Canary analysis (Argo Rollouts AnalysisTemplates), written against the RED metrics every
cloud-kit service exposes on /metrics: http_requests_total{method,route,status} and the
histogram http_request_duration_seconds{method,route,status}. Only canary pods are measured
(rollouts_pod_template_hash = the canary's hash, set by the ServiceMonitor's podTargetLabels).

Minimum-traffic guard: every query is "and on() <canary request rate> >= minRequestRate", so
an idle canary yields an empty result instead of NaN. Success and failure both require a
result, so an idle measurement is Inconclusive: never a pass, never a rollback. Past
inconclusiveLimit the Rollout pauses for a human. A Failed analysis aborts the Rollout, which
scales the canary down and sends all traffic back to the stable ReplicaSet.
*/}}
{{- define "cloud-service.analysis.selector" -}}
namespace="{{ "{{args.namespace}}" }}",service="{{ include "cloud-service.names.fullname" . }}-metrics",rollouts_pod_template_hash="{{ "{{args.canary-hash}}" }}"
{{- end -}}

{{- define "cloud-service.analysis.guard" -}}
{{- $a := .Values.rollout.analysis -}}
sum(rate(http_requests_total{ {{- include "cloud-service.analysis.selector" . -}} }[{{ $a.window }}])) >= {{ $a.minRequestRate }}
{{- end -}}

{{- define "cloud-service.analysis.common" -}}
interval: {{ .Values.rollout.analysis.interval }}
count: {{ .Values.rollout.analysis.count }}
failureLimit: {{ .Values.rollout.analysis.failureLimit }}
inconclusiveLimit: {{ .Values.rollout.analysis.inconclusiveLimit }}
{{- end -}}

{{- define "cloud-service.analysisTemplates" -}}
{{- if .Values.rollout.enabled -}}
{{- $fullname := include "cloud-service.names.fullname" . -}}
{{- $a := .Values.rollout.analysis -}}
{{- $sel := include "cloud-service.analysis.selector" . -}}
{{- $guard := include "cloud-service.analysis.guard" . -}}
apiVersion: argoproj.io/v1alpha1
kind: AnalysisTemplate
metadata:
  name: {{ $fullname }}-success-rate
  labels:
    {{- include "cloud-service.labels.standard" . | nindent 4 }}
spec:
  args:
    - name: namespace
    - name: canary-hash
  metrics:
    - name: success-rate
      {{- include "cloud-service.analysis.common" . | nindent 6 }}
      successCondition: len(result) > 0 && result[0] >= {{ $a.successRate }}
      failureCondition: len(result) > 0 && result[0] < {{ $a.successRate }}
      provider:
        prometheus:
          address: {{ $a.prometheusAddress }}
          query: |
            (
              sum(rate(http_requests_total{ {{- $sel -}} ,status!~"5.."}[{{ $a.window }}]))
              /
              sum(rate(http_requests_total{ {{- $sel -}} }[{{ $a.window }}]))
            )
            and on()
            ({{ $guard }})
---
apiVersion: argoproj.io/v1alpha1
kind: AnalysisTemplate
metadata:
  name: {{ $fullname }}-latency-p99
  labels:
    {{- include "cloud-service.labels.standard" . | nindent 4 }}
spec:
  args:
    - name: namespace
    - name: canary-hash
  metrics:
    - name: latency-p99
      {{- include "cloud-service.analysis.common" . | nindent 6 }}
      successCondition: len(result) > 0 && result[0] <= {{ $a.p99LatencySeconds }}
      failureCondition: len(result) > 0 && result[0] > {{ $a.p99LatencySeconds }}
      provider:
        prometheus:
          address: {{ $a.prometheusAddress }}
          query: |
            histogram_quantile(0.99,
              sum by (le) (rate(http_request_duration_seconds_bucket{ {{- $sel -}} }[{{ $a.window }}]))
            )
            and on()
            ({{ $guard }})
{{- end -}}
{{- end -}}
