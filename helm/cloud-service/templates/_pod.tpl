{{/*
The container environment: where to listen (from .Values.ports, the single source of the
ports that the container spec, the probes and the Services use), secrets from the Secrets that
the ExternalSecrets create, then .Values.env. Variables are "<envPrefix>_<SECTION>__<KEY>",
read by cloud_kit::config::load.
*/}}
{{- define "cloud-service.pod.env" -}}
- name: {{ .Values.envPrefix }}_SERVER__HOST
  value: "0.0.0.0"
- name: {{ .Values.envPrefix }}_SERVER__PORT
  value: {{ .Values.ports.http | quote }}
- name: {{ .Values.envPrefix }}_SERVER__ADMIN_PORT
  value: {{ .Values.ports.admin | quote }}
{{- $fullname := include "cloud-service.names.fullname" . }}
{{- range .Values.secrets.items }}
- name: {{ .env }}
  valueFrom:
    secretKeyRef:
      name: {{ printf "%s-%s" $fullname .name }}
      key: value
{{- end }}
{{- range .Values.env }}
- name: {{ .name }}
  value: {{ .value | quote }}
{{- end }}
{{- end -}}

{{/* Topology spread across zones and nodes. */}}
{{- define "cloud-service.pod.topologySpread" -}}
- maxSkew: {{ .Values.topologySpread.maxSkew }}
  topologyKey: topology.kubernetes.io/zone
  whenUnsatisfiable: {{ .Values.topologySpread.whenUnsatisfiable }}
  labelSelector:
    matchLabels:
      {{- include "cloud-service.labels.matchLabels" . | nindent 6 }}
- maxSkew: {{ .Values.topologySpread.maxSkew }}
  topologyKey: kubernetes.io/hostname
  whenUnsatisfiable: {{ .Values.topologySpread.whenUnsatisfiable }}
  labelSelector:
    matchLabels:
      {{- include "cloud-service.labels.matchLabels" . | nindent 6 }}
{{- end -}}

{{/* Startup, liveness and readiness probes, all on the admin port. */}}
{{- define "cloud-service.pod.probes" -}}
startupProbe:
  httpGet:
    path: /healthz
    port: admin
  periodSeconds: {{ .Values.probes.startup.periodSeconds }}
  timeoutSeconds: {{ .Values.probes.startup.timeoutSeconds }}
  failureThreshold: {{ .Values.probes.startup.failureThreshold }}
livenessProbe:
  httpGet:
    path: /healthz
    port: admin
  periodSeconds: {{ .Values.probes.liveness.periodSeconds }}
  timeoutSeconds: {{ .Values.probes.liveness.timeoutSeconds }}
  failureThreshold: {{ .Values.probes.liveness.failureThreshold }}
readinessProbe:
  httpGet:
    path: /readyz
    port: admin
  periodSeconds: {{ .Values.probes.readiness.periodSeconds }}
  timeoutSeconds: {{ .Values.probes.readiness.timeoutSeconds }}
  failureThreshold: {{ .Values.probes.readiness.failureThreshold }}
{{- end -}}

{{/* The service config file, mounted at /etc/cloud/config.yaml. */}}
{{- define "cloud-service.pod.configChecksum" -}}
{{- toYaml .Values.config | sha256sum -}}
{{- end -}}

{{/* The pod template of the Deployment or Rollout. */}}
{{- define "cloud-service.pod.template" -}}
metadata:
  labels:
    {{- include "cloud-service.labels.standard" . | nindent 4 }}
  annotations:
    checksum/config: {{ include "cloud-service.pod.configChecksum" . }}
spec:
  serviceAccountName: {{ include "cloud-service.names.serviceAccount" . }}
  automountServiceAccountToken: false
  enableServiceLinks: false
  terminationGracePeriodSeconds: {{ .Values.terminationGracePeriodSeconds }}
  securityContext:
    {{- include "cloud-service.security.pod" . | nindent 4 }}
  topologySpreadConstraints:
    {{- include "cloud-service.pod.topologySpread" . | nindent 4 }}
  containers:
    - name: {{ include "cloud-service.names.name" . }}
      image: {{ include "cloud-service.image" . }}
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      args: ["--config", "/etc/cloud/config.yaml"]
      ports:
        - name: http
          containerPort: {{ .Values.ports.http }}
          protocol: TCP
        - name: admin
          containerPort: {{ .Values.ports.admin }}
          protocol: TCP
      env:
        {{- include "cloud-service.pod.env" . | nindent 8 }}
      {{- include "cloud-service.pod.probes" . | nindent 6 }}
      resources:
        {{- toYaml (required "resources are required" .Values.resources) | nindent 8 }}
      securityContext:
        {{- include "cloud-service.security.container" . | nindent 8 }}
      volumeMounts:
        - name: config
          mountPath: /etc/cloud
          readOnly: true
        - name: tmp
          mountPath: /tmp
        - name: state
          mountPath: /var/lib/cloud
  volumes:
    - name: config
      configMap:
        name: {{ include "cloud-service.names.fullname" . }}
    - name: tmp
      emptyDir:
        sizeLimit: 64Mi
    {{- /* The pod's own writable state under the read-only root: the feature-flag
    last-known-good copy and audit log. It lives as long as the pod; the flag audit events also
    go to the log stream, which outlives it. */}}
    - name: state
      emptyDir:
        sizeLimit: 64Mi
{{- end -}}
