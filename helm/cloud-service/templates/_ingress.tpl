{{/*
Ingress with TLS. cert-manager issues the certificate named in the Certificate below from
.Values.ingress.clusterIssuer into the Secret "<fullname>-tls", which the Ingress serves.
With a Rollout, Argo Rollouts clones this Ingress for the canary (nginx traffic routing).
*/}}
{{- define "cloud-service.ingress" -}}
{{- if .Values.ingress.enabled -}}
{{- $fullname := include "cloud-service.names.fullname" . -}}
{{- $host := required "ingress.host is required when ingress.enabled" .Values.ingress.host -}}
apiVersion: cert-manager.io/v1
kind: Certificate
metadata:
  name: {{ $fullname }}-tls
  labels:
    {{- include "cloud-service.labels.standard" . | nindent 4 }}
spec:
  secretName: {{ $fullname }}-tls
  dnsNames:
    - {{ $host }}
  issuerRef:
    group: cert-manager.io
    kind: ClusterIssuer
    name: {{ .Values.ingress.clusterIssuer }}
  privateKey:
    algorithm: ECDSA
    size: 256
    rotationPolicy: Always
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: {{ $fullname }}
  labels:
    {{- include "cloud-service.labels.standard" . | nindent 4 }}
  annotations:
    nginx.ingress.kubernetes.io/force-ssl-redirect: "true"
    nginx.ingress.kubernetes.io/proxy-body-size: {{ .Values.config.server.max_body_bytes | quote }}
    {{- with .Values.ingress.annotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  ingressClassName: {{ .Values.ingress.className }}
  tls:
    - hosts:
        - {{ $host }}
      secretName: {{ $fullname }}-tls
  rules:
    - host: {{ $host }}
      http:
        paths:
          - path: {{ .Values.ingress.path }}
            pathType: Prefix
            backend:
              service:
                name: {{ $fullname }}
                port:
                  name: http
{{- end -}}
{{- end -}}
