#!/usr/bin/env bash
# Load test of cloud-identity-access: client_credentials tokens/s, introspections/s, idle RSS.
#
#   bench/identity/load.sh            # builds the release binary, 30 s per endpoint
#   DURATION=10s CONNECTIONS=64 bench/identity/load.sh
#
# Needs: wrk (Debian `wrk`), curl, jq. The service and wrk share this machine's cores, so the
# numbers include the load generator's CPU. Results go to stdout; docs/benchmarks.md records them.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
DURATION="${DURATION:-30s}"
CONNECTIONS="${CONNECTIONS:-64}"
THREADS="${THREADS:-2}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/cloud-platform/target-bench}"

for tool in wrk curl jq; do
  command -v "$tool" >/dev/null || { echo "load.sh: $tool is missing (apt-get install $tool)" >&2; exit 2; }
done

cargo build --release -q -p cloud-identity-access --manifest-path "$root/Cargo.toml"
bin="$CARGO_TARGET_DIR/release/cloud-identity-access"

work="$(mktemp -d)"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
admin_port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
admin_secret="$(head -c 32 /dev/urandom | base64 | tr -d '=+/')"
IDENTITY_DATA_DIR="$work" IDENTITY_SERVER__PORT="$port" IDENTITY_SERVER__ADMIN_PORT="$admin_port" \
  IDENTITY_SERVER__DRAIN_PERIOD=0s IDENTITY_TELEMETRY__LOG_LEVEL=warn IDENTITY_TELEMETRY__LOG_FORMAT=json \
  IDENTITY_BOOTSTRAP__ADMIN_CLIENT_SECRET="$admin_secret" "$bin" 2>"$work/service.log" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$work"' EXIT
base="http://127.0.0.1:$port"
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$admin_port/readyz" >/dev/null && break; sleep 0.1; done

sleep 2
idle_rss_kb="$(awk '/VmRSS/ {print $2}' /proc/$pid/status)"
echo "idle RSS: $((idle_rss_kb / 1024)) MiB ($idle_rss_kb kB)"

admin_token="$(curl -fs -u "platform-admin:$admin_secret" -d grant_type=client_credentials "$base/oauth2/token" | jq -r .access_token)"
tenant="$(curl -fs -H "authorization: Bearer $admin_token" -H 'content-type: application/json' -d '{"name":"bench"}' "$base/v1/tenants" | jq -r .id)"
role="$(curl -fs -H "authorization: Bearer $admin_token" -H 'content-type: application/json' \
  -d '{"name":"svc","permissions":["orders:read","orders:write"]}' "$base/v1/tenants/$tenant/roles" | jq -r .id)"
created="$(curl -fs -H "authorization: Bearer $admin_token" -H 'content-type: application/json' \
  -d '{"name":"bench","kind":"confidential","grant_types":["client_credentials"],"scopes":["orders:read"]}' "$base/v1/tenants/$tenant/clients")"
client_id="$(jq -r .client.id <<<"$created")"
client_secret="$(jq -r .client_secret <<<"$created")"
curl -fs -o /dev/null -H "authorization: Bearer $admin_token" -H 'content-type: application/json' \
  -d "{\"role_id\":\"$role\",\"subject_kind\":\"client\",\"subject_id\":\"$client_id\"}" "$base/v1/tenants/$tenant/role-assignments"
basic="$(printf '%s:%s' "$client_id" "$client_secret" | base64 -w0)"
token="$(curl -fs -H "authorization: Basic $basic" -d grant_type=client_credentials "$base/oauth2/token" | jq -r .access_token)"
[ "$(curl -fs -H "authorization: Basic $basic" --data-urlencode "token=$token" "$base/oauth2/introspect" | jq -r .active)" = true ]

cat >"$work/token.lua" <<LUA
wrk.method = "POST"
wrk.body = "grant_type=client_credentials&scope=orders:read"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.headers["Authorization"] = "Basic $basic"
done = function(summary, latency, requests)
  io.write(string.format("non-2xx or errors: %d\n", summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
LUA
cat >"$work/introspect.lua" <<LUA
wrk.method = "POST"
wrk.body = "token=$token"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.headers["Authorization"] = "Basic $basic"
done = function(summary, latency, requests)
  io.write(string.format("non-2xx or errors: %d\n", summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
LUA

echo "== client_credentials: wrk -t$THREADS -c$CONNECTIONS -d$DURATION POST /oauth2/token"
wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -s "$work/token.lua" "$base/oauth2/token"
echo "== introspection: wrk -t$THREADS -c$CONNECTIONS -d$DURATION POST /oauth2/introspect"
wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -s "$work/introspect.lua" "$base/oauth2/introspect"
echo "RSS after load: $(( $(awk '/VmRSS/ {print $2}' /proc/$pid/status) / 1024 )) MiB"
