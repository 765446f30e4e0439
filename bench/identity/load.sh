#!/usr/bin/env bash
# Load test of cloud-identity-access: client_credentials tokens/s, introspections/s, idle RSS.
#
#   bench/identity/load.sh                                  # release build, 30 s per endpoint
#   DURATION=10s CONNECTIONS=64 bench/identity/load.sh
#   BIN=target/release/cloud-identity-access bench/identity/load.sh   # an existing binary
#   DURATION=2s CONNECTIONS=1 THREADS=1 bench/identity/load.sh        # smoke run (no numbers)
#
# Needs: wrk (Debian `wrk`), curl, jq, python3. The service and wrk share this machine's cores,
# so the numbers include the load generator's CPU; measure on a quiet machine. The service runs
# from the release profile on a fresh SQLite data dir, with one seeded confidential client
# (client_credentials, `orders:read`, a role with two permissions). Prints wrk's full output per
# endpoint, then a summary (req/s per endpoint, idle RSS); exits 1 if any request failed.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
DURATION="${DURATION:-30s}"
CONNECTIONS="${CONNECTIONS:-64}"
THREADS="${THREADS:-2}"

for tool in wrk curl jq python3; do
  command -v "$tool" >/dev/null || { echo "load.sh: $tool is missing (apt-get install $tool)" >&2; exit 2; }
done

if [ -n "${BIN:-}" ]; then
  bin="$BIN"
else
  # The workspace's shared target dir unless one is given: a release build there is reused.
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/cloud-platform/target}"
  cargo build --release -q -p cloud-identity-access --manifest-path "$root/Cargo.toml"
  bin="$CARGO_TARGET_DIR/release/cloud-identity-access"
fi
[ -x "$bin" ] || { echo "load.sh: $bin is not an executable" >&2; exit 2; }

work="$(mktemp -d)"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port="$(free_port)"
admin_port="$(free_port)"
# At least 32 characters (the service refuses shorter bootstrap secrets).
admin_secret="$(head -c 48 /dev/urandom | base64 -w0 | tr -d '=+/')"
IDENTITY_DATA_DIR="$work" IDENTITY_SERVER__PORT="$port" IDENTITY_SERVER__ADMIN_PORT="$admin_port" \
  IDENTITY_SERVER__DRAIN_PERIOD=0s IDENTITY_TELEMETRY__LOG_LEVEL=warn IDENTITY_TELEMETRY__LOG_FORMAT=json \
  IDENTITY_BOOTSTRAP__ADMIN_CLIENT_SECRET="$admin_secret" "$bin" 2>"$work/service.log" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$work"' EXIT
base="http://127.0.0.1:$port"
ready=""
for _ in $(seq 300); do
  if curl -fs "http://127.0.0.1:$admin_port/readyz" >/dev/null; then ready=1; break; fi
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.1
done
if [ -z "$ready" ]; then
  echo "load.sh: the service did not become ready; its log:" >&2
  cat "$work/service.log" >&2
  exit 1
fi

# Idle: started, ready, nothing served yet but the readiness probes.
sleep 2
idle_rss_kb="$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")"

# Seed: a tenant, a role, a confidential client holding it (through the admin API).
api() { curl -fsS -H "authorization: Bearer $admin_token" -H 'content-type: application/json' "$@"; }
admin_token="$(curl -fsS -u "platform-admin:$admin_secret" -d grant_type=client_credentials "$base/oauth2/token" | jq -er .access_token)"
tenant="$(api -d '{"name":"bench"}' "$base/v1/tenants" | jq -er .id)"
role="$(api -d '{"name":"svc","permissions":["orders:read","orders:write"]}' "$base/v1/tenants/$tenant/roles" | jq -er .id)"
created="$(api -d '{"name":"bench","kind":"confidential","grant_types":["client_credentials"],"scopes":["orders:read"]}' "$base/v1/tenants/$tenant/clients")"
client_id="$(jq -er .client.id <<<"$created")"
client_secret="$(jq -er .client_secret <<<"$created")"
api -o /dev/null -d "{\"role_id\":\"$role\",\"subject_kind\":\"client\",\"subject_id\":\"$client_id\"}" "$base/v1/tenants/$tenant/role-assignments"
basic="$(printf '%s:%s' "$client_id" "$client_secret" | base64 -w0)"
token="$(curl -fsS -H "authorization: Basic $basic" -d grant_type=client_credentials -d scope=orders:read "$base/oauth2/token" | jq -er .access_token)"
active="$(curl -fsS -H "authorization: Basic $basic" --data-urlencode "token=$token" "$base/oauth2/introspect" | jq -r .active)"
[ "$active" = true ] || { echo "load.sh: the seeded token does not introspect as active" >&2; exit 1; }

# wrk scripts: the same request every time; `done` prints the failures on one parsable line.
# (The token is URL-safe: base64url segments and dots.)
lua_done='done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("failed requests: %d\n", e.status + e.connect + e.read + e.write + e.timeout))
end'
cat >"$work/token.lua" <<LUA
wrk.method = "POST"
wrk.body = "grant_type=client_credentials&scope=orders:read"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.headers["Authorization"] = "Basic $basic"
$lua_done
LUA
cat >"$work/introspect.lua" <<LUA
wrk.method = "POST"
wrk.body = "token=$token"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.headers["Authorization"] = "Basic $basic"
$lua_done
LUA

# The service's CPU time (user + system, in clock ticks) from /proc: per request it is a cost
# that a load generator sharing the cores does not blur the way it blurs req/s.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
run() { # name path script
  echo "== $1: wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency POST $2"
  local before after
  before="$(cpu_ticks)"
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -s "$work/$3" "$base$2" | tee "$work/$3.out"
  after="$(cpu_ticks)"
  awk -v ticks=$((after - before)) -v hz="$(getconf CLK_TCK)" \
    '/ requests in / {printf "service CPU per request: %.1f us\n", ticks / hz * 1e6 / $1}' \
    "$work/$3.out" | tee -a "$work/$3.out"
}
run client_credentials /oauth2/token token.lua
run introspection /oauth2/introspect introspect.lua
loaded_rss_kb="$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")"

rps() { awk '/^Requests\/sec:/ {print $2}' "$work/$1.out"; }
failed() { awk '/^failed requests:/ {print $3}' "$work/$1.out"; }
echo
echo "== summary (wrk -t$THREADS -c$CONNECTIONS -d$DURATION, $(nproc) cores shared with wrk)"
cpu() { awk '/^service CPU per request:/ {print $5}' "$work/$1.out"; }
echo "client_credentials tokens/s: $(rps token.lua) (failed: $(failed token.lua); service CPU $(cpu token.lua) us/request)"
echo "introspections/s:            $(rps introspect.lua) (failed: $(failed introspect.lua); service CPU $(cpu introspect.lua) us/request)"
echo "idle RSS:                    $((idle_rss_kb / 1024)) MiB ($idle_rss_kb kB)"
echo "RSS after load:              $((loaded_rss_kb / 1024)) MiB ($loaded_rss_kb kB)"
if [ "$(failed token.lua)" != 0 ] || [ "$(failed introspect.lua)" != 0 ]; then
  echo "load.sh: some requests failed; the numbers above are not valid" >&2
  exit 1
fi
