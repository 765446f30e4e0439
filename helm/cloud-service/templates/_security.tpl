{{/*
Restricted Pod Security Standard defaults. Not configurable on purpose: the policy check in
`cargo xtask test --only helm` fails any workload that weakens them.
*/}}

{{- define "cloud-service.security.pod" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "cloud-service.security.container" -}}
allowPrivilegeEscalation: false
privileged: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end -}}
