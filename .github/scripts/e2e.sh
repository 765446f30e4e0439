#!/usr/bin/env bash
# End-to-end on a kind cluster (.github/workflows/e2e.yml). Each phase is one argument:
#   e2e.sh install | smoke | rolling-upgrade | diagnostics
# Needs kubectl, helm, yq and jq on PATH, a current kube context, ADMIN_CLIENT_SECRET (the same
# for every phase), and the images cloud-identity-access:{e2e,e2e-next} and
# cloud-api-gateway-bff:{e2e,e2e-next} loaded into the cluster.
set -euo pipefail

NS=cloud-dev
HERE="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$HERE"

log() { printf '==> %s\n' "$*" >&2; }

# The Secrets the External Secrets operator would create from each ExternalSecret the chart
# renders ("<fullname>-<item>" with key "value"); there is no secret store on kind.
create_secrets() {
  local release=$1 values=$2
  local names
  names=$(helm template "$release" "helm/$release" --namespace "$NS" \
      -f "helm/$release/values-dev.yaml" -f "$values" \
    | yq -r 'select(.kind == "ExternalSecret") | .spec.target.name')
  for name in $names; do
    local value
    case "$name" in
      *-database-url) value="postgres://postgres@postgres.e2e-deps.svc.cluster.local:5432/identity" ;;
      *-redis-url) value="redis://redis.e2e-deps.svc.cluster.local:6379" ;;
      *-bootstrap-admin-client-secret) value="$ADMIN_CLIENT_SECRET" ;;
      *) value="$(openssl rand -hex 32)" ;;
    esac
    kubectl -n "$NS" create secret generic "$name" --from-literal=value="$value" \
      --dry-run=client -o yaml | kubectl apply -f -
  done
}

install() {
  log "CRDs the charts use (the same files the chart checks validate against)"
  kubectl apply --server-side -f xtask/fixtures/helm/crds/
  log "platform-base (dev values): namespaces, quotas, default-deny policies"
  helm upgrade --install platform-base helm/platform-base -f helm/platform-base/values-dev.yaml --wait
  log "PostgreSQL and Redis"
  kubectl apply -f .github/e2e/deps.yaml
  kubectl -n e2e-deps rollout status deploy/postgres deploy/redis --timeout=180s
  create_secrets cloud-identity-access .github/e2e/values-identity.yaml
  create_secrets cloud-api-gateway-bff .github/e2e/values-gateway.yaml
  for service in cloud-identity-access cloud-api-gateway-bff; do
    local overlay=.github/e2e/values-identity.yaml
    [[ $service == cloud-api-gateway-bff ]] && overlay=.github/e2e/values-gateway.yaml
    log "$service (dev values, local image)"
    helm dependency build "helm/$service"
    helm upgrade --install "$service" "helm/$service" --namespace "$NS" \
      -f "helm/$service/values-dev.yaml" -f "$overlay" --wait --timeout 5m
  done
  log "readiness"
  kubectl -n "$NS" wait --for=condition=Ready pod --all --timeout=180s
}

# Port-forward the gateway's Service to 127.0.0.1:18080 for the duration of a phase.
forward_gateway() {
  kubectl -n "$NS" port-forward svc/cloud-api-gateway-bff 18080:80 >/tmp/port-forward.log 2>&1 &
  FORWARD_PID=$!
  trap 'kill "$FORWARD_PID" 2>/dev/null || true' EXIT
  for _ in $(seq 1 30); do
    curl -fsS -o /dev/null http://127.0.0.1:18080/version && return 0
    sleep 1
  done
  cat /tmp/port-forward.log
  return 1
}

token() {
  kubectl -n "$NS" port-forward svc/cloud-identity-access 18081:80 >/tmp/pf-identity.log 2>&1 &
  local pid=$!
  local body=""
  for _ in $(seq 1 30); do
    if body=$(curl -fsS -u "platform-admin:$ADMIN_CLIENT_SECRET" \
        -d grant_type=client_credentials -d scope=admin http://127.0.0.1:18081/oauth2/token); then
      break
    fi
    sleep 1
  done
  kill "$pid" 2>/dev/null || true
  jq -er '.access_token' <<<"$body"
}

smoke() {
  forward_gateway
  local access status
  access=$(token)
  log "protected route without a token: 401"
  status=$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:18080/api/identity/v1/tenants)
  [[ $status == 401 ]] || { echo "expected 401 without a token, got $status"; return 1; }
  log "protected route with identity's token: 200"
  status=$(curl -s -o /tmp/tenants.json -w '%{http_code}' -H "Authorization: Bearer $access" \
    http://127.0.0.1:18080/api/identity/v1/tenants)
  [[ $status == 200 ]] || { echo "expected 200 with a token, got $status"; cat /tmp/tenants.json; return 1; }
}

# Upgrades both services to the `e2e-next` images (same code, another build) while a bounded
# load runs through the gateway; every request must succeed (no 5xx, no connection error).
rolling_upgrade() {
  forward_gateway
  local access
  access=$(token)
  log "load through the gateway during a rolling upgrade of both services"
  : > /tmp/codes.txt
  (
    end=$((SECONDS + 90))
    while (( SECONDS < end )); do
      curl -s -o /dev/null -w '%{http_code}\n' --max-time 5 -H "Authorization: Bearer $access" \
        http://127.0.0.1:18080/api/identity/v1/tenants >> /tmp/codes.txt || echo "000" >> /tmp/codes.txt
      sleep 0.05
    done
  ) &
  local load=$!
  sleep 5
  for service in cloud-identity-access cloud-api-gateway-bff; do
    helm upgrade "$service" "helm/$service" --namespace "$NS" --reuse-values \
      --set-string image.tag=e2e-next --wait --timeout 5m
    kubectl -n "$NS" rollout status "deploy/$service" --timeout=300s
  done
  wait "$load"
  local total failed
  total=$(wc -l < /tmp/codes.txt)
  failed=$(grep -cv '^200$' /tmp/codes.txt || true)
  log "$total requests during the upgrade, $failed failed"
  sort /tmp/codes.txt | uniq -c
  (( total > 100 )) || { echo "too few requests ($total) to judge the upgrade"; return 1; }
  (( failed == 0 ))
}

diagnostics() {
  kubectl get pods -A -o wide || true
  kubectl -n "$NS" describe pods || true
  kubectl -n "$NS" logs -l app.kubernetes.io/part-of=cloud-platform --all-containers --tail=200 || true
  kubectl get events -A --sort-by=.lastTimestamp | tail -100 || true
}

: "${ADMIN_CLIENT_SECRET:?set ADMIN_CLIENT_SECRET, the same value for every phase}"
case "${1:-}" in
  install) install ;;
  smoke) smoke ;;
  rolling-upgrade) rolling_upgrade ;;
  diagnostics) diagnostics ;;
  *) echo "usage: $0 install|smoke|rolling-upgrade|diagnostics" >&2; exit 2 ;;
esac
