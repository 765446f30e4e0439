{{/*
NetworkPolicies. The namespace has a default-deny policy (platform-base); these open only what
the service needs: its API port to .Values.networkPolicy.apiFrom, its admin port to
.Values.networkPolicy.metricsFrom (Prometheus), egress to DNS and to each
.Values.networkPolicy.egress rule (database, Redis, Unleash, identity, ...).
*/}}
{{- define "cloud-service.networkPolicy.egressRules" -}}
- to:
    {{- toYaml .root.Values.networkPolicy.dns | nindent 4 }}
  ports:
    - port: 53
      protocol: UDP
    - port: 53
      protocol: TCP
{{- $only := .only }}
{{- range .root.Values.networkPolicy.egress }}
{{- if or (not $only) (has .name $only) }}
- to:
    {{- toYaml .to | nindent 4 }}
  ports:
    {{- toYaml .ports | nindent 4 }}
{{- end }}
{{- end }}
{{- end -}}

{{- define "cloud-service.networkPolicy" -}}
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: {{ include "cloud-service.names.fullname" . }}
  labels:
    {{- include "cloud-service.labels.standard" . | nindent 4 }}
spec:
  podSelector:
    matchLabels:
      {{- include "cloud-service.labels.matchLabels" . | nindent 6 }}
  policyTypes:
    - Ingress
    - Egress
  ingress:
    - from:
        {{- toYaml .Values.networkPolicy.apiFrom | nindent 8 }}
      ports:
        - port: http
          protocol: TCP
    - from:
        {{- toYaml .Values.networkPolicy.metricsFrom | nindent 8 }}
      ports:
        - port: admin
          protocol: TCP
  egress:
    {{- include "cloud-service.networkPolicy.egressRules" (dict "root" . "only" list) | nindent 4 }}
{{- end -}}
