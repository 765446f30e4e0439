# Shared by bench/gateway/run.sh and bench/gateway/ab.sh (sourced, not run): the tools, a temp
# dir removed on exit, an Ed25519 key with its JWKS and a token, the upstream nginx (fixed 3-byte
# body, plus discovery and JWKS for the gateway) and the nginx proxy_pass config, and helpers to
# build and start gateways and to measure.
# shellcheck shell=bash
DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$HOME/.cache/cloud-platform/target}
# NGINX_BIN, WRK_BIN, OHA: installed on first use, then cached.
eval "$(cd "$ROOT" && cargo xtask tools --bench)"
PATH="$(dirname "$NGINX_BIN"):$(dirname "$WRK_BIN"):$PATH"
for tool in nginx wrk openssl python3 "$OHA"; do
  command -v "$tool" >/dev/null || { echo "missing tool: $tool" >&2; exit 1; }
done

WORK=$(mktemp -d /tmp/gateway-bench.XXXXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# WAIT_TRIES: how many 50 ms waits for a port (and 100 ms waits for readiness) before giving up.
WAIT_TRIES=${WAIT_TRIES:-200}
wait_port() { for _ in $(seq 1 "$WAIT_TRIES"); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 did not open" >&2; tail -n 20 "$WORK"/*/logs/error.log "$WORK"/gateway.log >&2; exit 1; }
b64url() { basenc --base64url -w0 | tr -d '='; }

UP=$(free_port); NGX=$(free_port)
ISSUER="http://127.0.0.1:$UP"

# --- an Ed25519 key, its JWKS, and a token (RFC 9068 claims) signed with openssl -------------
openssl genpkey -algorithm ed25519 -out "$WORK/key.pem" 2>/dev/null
X=$(openssl pkey -in "$WORK/key.pem" -pubout -outform DER | tail -c 32 | b64url)
JWKS="{\"keys\":[{\"kty\":\"OKP\",\"crv\":\"Ed25519\",\"x\":\"$X\",\"kid\":\"bench\",\"use\":\"sig\",\"alg\":\"EdDSA\"}]}"
NOW=$(date +%s)
HEADER=$(printf '{"alg":"EdDSA","kid":"bench","typ":"at+jwt"}' | b64url)
CLAIMS=$(printf '{"iss":"%s","sub":"bench-user","aud":"cloud-platform","exp":%d,"iat":%d,"jti":"bench","client_id":"bench","scope":"openid","tid":"bench-tenant","roles":[],"permissions":[]}' "$ISSUER" $((NOW + 3600)) "$NOW" | b64url)
printf '%s.%s' "$HEADER" "$CLAIMS" > "$WORK/signing-input"
SIG=$(openssl pkeyutl -sign -inkey "$WORK/key.pem" -rawin -in "$WORK/signing-input" | b64url)
TOKEN="$HEADER.$CLAIMS.$SIG"
AUTH="Authorization: Bearer $TOKEN"

# --- the upstream: nginx, one worker, fixed body, plus discovery and JWKS for the gateway ----
mkdir -p "$WORK/up/logs" "$WORK/proxy/logs"
# nginx_conf NAME WORKERS SERVER-AND-UPSTREAM-BLOCKS: $WORK/NAME/nginx.conf, everything under $WORK/NAME.
nginx_conf() {
  cat > "$WORK/$1/nginx.conf" <<EOF
worker_processes $2;
daemon off;
pid $WORK/$1/nginx.pid;
error_log $WORK/$1/logs/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path $WORK/$1/body; proxy_temp_path $WORK/$1/proxy; fastcgi_temp_path $WORK/$1/fcgi; uwsgi_temp_path $WORK/$1/uwsgi; scgi_temp_path $WORK/$1/scgi;
$3
}
EOF
}
nginx_conf up 1 "  server {
    listen 127.0.0.1:$UP;
    location = /.well-known/openid-configuration { default_type application/json; return 200 '{\"issuer\":\"$ISSUER\",\"jwks_uri\":\"$ISSUER/jwks\"}'; }
    location = /jwks { default_type application/json; return 200 '$JWKS'; }
    location / { default_type text/plain; return 200 \"ok\\n\"; }
  }"
# --- (b) nginx as a plain reverse proxy (worker_processes auto = one per core) ---------------
nginx_conf proxy auto "  upstream backend { server 127.0.0.1:$UP; keepalive 256; }
  server {
    listen 127.0.0.1:$NGX;
    location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection \"\"; }
  }"
nginx -p "$WORK/up" -c "$WORK/up/nginx.conf" & PIDS+=($!)
wait_port "$UP"

# build_gateway [BIN]: prints the gateway binary to measure, building the release one unless BIN
# is given. (Not GATEWAY_*: the gateway reads every GATEWAY_ variable as configuration.)
build_gateway() {
  if [ -n "${1:-}" ]; then echo "$1"; return; fi
  echo "building the gateway (release)..." >&2
  (cd "$ROOT" && CARGO_TARGET_DIR="$TARGET" cargo build --release -q -p cloud-api-gateway-bff --bin cloud-api-gateway-bff)
  echo "$TARGET/release/cloud-api-gateway-bff"
}

# start_gateway BINARY NAME [ROUTE]: starts a gateway on free ports, validating the token (EdDSA
# JWT) and applying a per-tenant in-process GCRA limit far above the offered load on its one
# route, or with the route options ROUTE instead of those two; sets GW_PORT and GW_PID.
start_gateway() {
  local port admin route=${3:-"auth: token, rate_limit: bench"}
  port=$(free_port); admin=$(free_port)
  cat > "$WORK/$2.yaml" <<EOF
server: {port: $port, admin_port: $admin, drain_period: 0s}
telemetry: {log_level: warn, log_format: json}
identity: {issuer_url: "$ISSUER"}
rate_limits: {bench: {requests: 500000, period: 1s}}
routes:
  api: {path_prefix: /, $route, upstreams: ["http://127.0.0.1:$UP"]}
EOF
  "$1" --config "$WORK/$2.yaml" 2>"$WORK/$2.log" & GW_PID=$!; PIDS+=($GW_PID)
  wait_port "$port"
  for _ in $(seq 1 "$WAIT_TRIES"); do curl -fs "http://127.0.0.1:$admin/readyz" >/dev/null && break; sleep 0.1; done
  curl -fs "http://127.0.0.1:$admin/readyz" >/dev/null || { echo "gateway $2 not ready:"; cat "$WORK/$2.log"; exit 1; } >&2
  if [[ $route == *"auth: token"* ]]; then
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/bench")" = 401 ] || { echo "gateway $2 let a request without a token through" >&2; exit 1; }
  fi
  answers_200 "$port"
  GW_PORT=$port
}

# answers_200 PORT: the setup on PORT answers the token's request with 200.
answers_200() {
  [ "$(curl -s -o /dev/null -w '%{http_code}' -H "$AUTH" "http://127.0.0.1:$1/bench")" = 200 ] || { echo "127.0.0.1:$1 does not answer 200" >&2; exit 1; }
}

max_rps() { # $1 = port
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" -H "$AUTH" "http://127.0.0.1:$1/bench" | awk '/Requests\/sec/ {print int($2)}'
}

# cpu_ticks PID...: "user system" CPU ticks the processes have used so far (from /proc).
cpu_ticks() {
  local user=0 system=0 pid
  for pid in "$@"; do
    read -r u s < <(awk '{print $14, $15}' "/proc/$pid/stat")
    user=$((user + u)); system=$((system + s))
  done
  echo "$user $system"
}

# max_rps_and_cpu PORT PID...: "req/s us user_us" where us is the processes' CPU time per request
# over the wrk run (a cost that the load generator sharing the cores does not blur, so the figure
# to compare two builds by) and user_us its user-space part: the system part is the kernel's
# work for the sockets, about the same for every proxy here, so the user part is where a
# proxy's own code shows.
max_rps_and_cpu() {
  local port=$1 before after rps; shift
  before=$(cpu_ticks "$@"); rps=$(max_rps "$port"); after=$(cpu_ticks "$@")
  python3 -c "
user = ($(echo "$after" | cut -d' ' -f1) - $(echo "$before" | cut -d' ' -f1)) / $(getconf CLK_TCK) * 1e6 / ($rps * $DURATION)
system = ($(echo "$after" | cut -d' ' -f2) - $(echo "$before" | cut -d' ' -f2)) / $(getconf CLK_TCK) * 1e6 / ($rps * $DURATION)
print('%d %.1f %.1f' % ($rps, user + system, user))"
}
