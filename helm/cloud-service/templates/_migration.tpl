{{/*
A one-shot Job run as an Argo CD PreSync hook (e.g. database migrations), with everything it
needs rendered as PreSync hooks of an earlier wave: on a first sync the service's own
ServiceAccount, ConfigMap and ExternalSecrets do not exist yet when PreSync runs.
  ServiceAccount, ConfigMap, ExternalSecrets, NetworkPolicy: PreSync, sync-wave -1
  Job:                                                       PreSync, sync-wave 0
The Job's pods carry app.kubernetes.io/name "<name>-<job>" so that the service's Services and
NetworkPolicy never select them. A failed Job fails the sync: the new version is never rolled out.
Takes (dict "root" $ "job" "migrate" "args" (list ...) "values" .Values.migration).
*/}}
{{- define "cloud-service.hookJob.annotations" -}}
argocd.argoproj.io/hook: PreSync
argocd.argoproj.io/hook-delete-policy: BeforeHookCreation
argocd.argoproj.io/sync-wave: {{ .wave | quote }}
{{- end -}}

{{- define "cloud-service.hookJob.matchLabels" -}}
app.kubernetes.io/name: {{ include "cloud-service.names.name" .root }}-{{ .job }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .job }}
{{- end -}}

{{- define "cloud-service.hookJob" -}}
{{- $root := .root -}}
{{- $v := .values -}}
{{- $name := printf "%s-%s" (include "cloud-service.names.fullname" $root) .job -}}
{{- $early := include "cloud-service.hookJob.annotations" (dict "wave" -1) | fromYaml -}}
{{- $late := include "cloud-service.hookJob.annotations" (dict "wave" 0) | fromYaml -}}
{{ include "cloud-service.serviceAccount" (dict "root" $root "name" $name "annotations" $early) }}
---
{{ include "cloud-service.configMap" (dict "root" $root "name" $name "annotations" $early "omit" $v.configOmit "withFiles" false) }}
{{- range $root.Values.secrets.items }}
{{- if has .name $v.secrets }}
---
{{ include "cloud-service.externalSecret" (dict "root" $root "item" . "name" (printf "%s-%s" $name .name) "annotations" $early) }}
{{- end }}
{{- end }}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: {{ $name }}
  labels:
    {{- include "cloud-service.labels.standard" $root | nindent 4 }}
  annotations:
    {{- toYaml $early | nindent 4 }}
spec:
  podSelector:
    matchLabels:
      {{- include "cloud-service.hookJob.matchLabels" . | nindent 6 }}
  policyTypes:
    - Ingress
    - Egress
  egress:
    {{- include "cloud-service.networkPolicy.egressRules" (dict "root" $root "only" $v.egress) | nindent 4 }}
---
apiVersion: batch/v1
kind: Job
metadata:
  name: {{ $name }}
  labels:
    {{- include "cloud-service.labels.standard" $root | nindent 4 }}
  annotations:
    {{- toYaml $late | nindent 4 }}
spec:
  backoffLimit: {{ $v.backoffLimit }}
  activeDeadlineSeconds: {{ $v.activeDeadlineSeconds }}
  ttlSecondsAfterFinished: 86400
  template:
    metadata:
      labels:
        {{- include "cloud-service.hookJob.matchLabels" . | nindent 8 }}
        app.kubernetes.io/part-of: cloud-platform
    spec:
      restartPolicy: Never
      serviceAccountName: {{ $name }}
      automountServiceAccountToken: false
      enableServiceLinks: false
      securityContext:
        {{- include "cloud-service.security.pod" $root | nindent 8 }}
      containers:
        - name: {{ .job }}
          image: {{ include "cloud-service.image" $root }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          args:
            {{- toYaml .args | nindent 12 }}
          env:
            {{- range $root.Values.secrets.items }}
            {{- if has .name $v.secrets }}
            - name: {{ .env }}
              valueFrom:
                secretKeyRef:
                  name: {{ printf "%s-%s" $name .name }}
                  key: value
            {{- end }}
            {{- end }}
          resources:
            {{- toYaml (required "migration.resources are required" $v.resources) | nindent 12 }}
          securityContext:
            {{- include "cloud-service.security.container" $root | nindent 12 }}
          volumeMounts:
            - name: config
              mountPath: /etc/cloud
              readOnly: true
            - name: tmp
              mountPath: /tmp
      volumes:
        - name: config
          configMap:
            name: {{ $name }}
        - name: tmp
          emptyDir:
            sizeLimit: 64Mi
{{- end -}}
