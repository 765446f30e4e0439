#!/usr/bin/env bash
# Gateway load benchmark: in ONE run, against the same upstream (an nginx returning a fixed 3-byte
# body), measures
#   (a) the upstream directly,
#   (b) Debian's nginx as a plain proxy_pass (keep-alive to the upstream),
#   (c) cloud-api-gateway-bff (release build) with token validation (EdDSA JWT) and rate limiting
#       (in-process GCRA, a limit far above the offered load) on the route.
# Max throughput: wrk, closed loop. Latency percentiles: oha at a constant rate (-q) of 50% of
# nginx's max, for all three; "added" latency = proxy percentile minus the direct percentile.
#
# Usage: bench/gateway/run.sh            (DURATION=10 CONNECTIONS=64 THREADS=2 to change)
#        BIN=/path/to/cloud-api-gateway-bff bench/gateway/run.sh   (another build, e.g. for an A/B)
#        PERF_OUT=/tmp/gw.perf bench/gateway/run.sh   (and a perf profile of the gateway's max run)
# Needs: nginx, wrk and oha, which `cargo xtask tools --bench` installs (Debian's nginx-light and
#        wrk, oha 1.16.0 from crates.io) and this script calls; openssl, python3, curl.
# Everything listens on 127.0.0.1, on free ports, in a temp dir that is removed afterwards.
set -euo pipefail

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
wait_port() { for _ in $(seq 1 200); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 did not open" >&2; tail -n 20 "$WORK"/*/logs/error.log "$WORK"/gateway.log >&2; exit 1; }
b64url() { basenc --base64url -w0 | tr -d '='; }

UP=$(free_port); NGX=$(free_port); GW=$(free_port); GW_ADMIN=$(free_port)
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
cat > "$WORK/up/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $WORK/up/nginx.pid;
error_log $WORK/up/logs/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path $WORK/up/body; proxy_temp_path $WORK/up/proxy; fastcgi_temp_path $WORK/up/fcgi; uwsgi_temp_path $WORK/up/uwsgi; scgi_temp_path $WORK/up/scgi;
  server {
    listen 127.0.0.1:$UP;
    location = /.well-known/openid-configuration { default_type application/json; return 200 '{"issuer":"$ISSUER","jwks_uri":"$ISSUER/jwks"}'; }
    location = /jwks { default_type application/json; return 200 '$JWKS'; }
    location / { default_type text/plain; return 200 "ok\n"; }
  }
}
EOF
# --- (b) nginx as a plain reverse proxy (worker_processes auto = one per core) ---------------
cat > "$WORK/proxy/nginx.conf" <<EOF
worker_processes auto;
daemon off;
pid $WORK/proxy/nginx.pid;
error_log $WORK/proxy/logs/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path $WORK/proxy/body; proxy_temp_path $WORK/proxy/proxy; fastcgi_temp_path $WORK/proxy/fcgi; uwsgi_temp_path $WORK/proxy/uwsgi; scgi_temp_path $WORK/proxy/scgi;
  upstream backend { server 127.0.0.1:$UP; keepalive 256; }
  server {
    listen 127.0.0.1:$NGX;
    location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
EOF
# --- (c) the gateway ---------------------------------------------------------------------------
cat > "$WORK/gateway.yaml" <<EOF
server: {port: $GW, admin_port: $GW_ADMIN, drain_period: 0s}
telemetry: {log_level: warn, log_format: json}
identity: {issuer_url: "$ISSUER"}
rate_limits: {bench: {requests: 500000, period: 1s}}
routes:
  api: {path_prefix: /, auth: token, rate_limit: bench, upstreams: ["http://127.0.0.1:$UP"]}
EOF

# Not GATEWAY_*: the gateway reads every GATEWAY_ variable as configuration.
if [ -n "${BIN:-}" ]; then
  GW_BINARY="$BIN"
else
  echo "building the gateway (release)..." >&2
  (cd "$ROOT" && CARGO_TARGET_DIR="$TARGET" cargo build --release -q -p cloud-api-gateway-bff --bin cloud-api-gateway-bff)
  GW_BINARY="$TARGET/release/cloud-api-gateway-bff"
fi

nginx -p "$WORK/up" -c "$WORK/up/nginx.conf" & PIDS+=($!)
nginx -p "$WORK/proxy" -c "$WORK/proxy/nginx.conf" & PIDS+=($!)
"$GW_BINARY" --config "$WORK/gateway.yaml" 2>"$WORK/gateway.log" & GW_PID=$!; PIDS+=($GW_PID)
wait_port "$UP"; wait_port "$NGX"; wait_port "$GW"
for _ in $(seq 1 100); do curl -fs "http://127.0.0.1:$GW_ADMIN/readyz" >/dev/null && break; sleep 0.1; done
curl -fs "http://127.0.0.1:$GW_ADMIN/readyz" >/dev/null || { echo "gateway not ready:"; cat "$WORK/gateway.log"; exit 1; } >&2
# Sanity: every setup answers 200 with the token; the gateway refuses a request without it.
for port in "$UP" "$NGX" "$GW"; do
  [ "$(curl -s -o /dev/null -w '%{http_code}' -H "$AUTH" "http://127.0.0.1:$port/bench")" = 200 ] || { echo "127.0.0.1:$port does not answer 200" >&2; exit 1; }
done
[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$GW/bench")" = 401 ] || { echo "the gateway let a request without a token through" >&2; exit 1; }

max_rps() { # $1 = port
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" -H "$AUTH" "http://127.0.0.1:$1/bench" | awk '/Requests\/sec/ {print int($2)}'
}
percentiles() { # $1 = port, $2 = rate -> "p50_ms p99_ms non2xx"
  "$OHA" --no-tui --output-format json -z "${DURATION}s" -q "$2" -c "$CONNECTIONS" -H "$AUTH" "http://127.0.0.1:$1/bench" \
    | python3 -c 'import json,sys; d=json.load(sys.stdin); p=d["latencyPercentiles"]; c=d.get("statusCodeDistribution",{}); print("%.3f %.3f %d" % (p["p50"]*1000, p["p99"]*1000, sum(v for k,v in c.items() if k!="200")))'
}

# The gateway's CPU time per request (user + system from /proc over its wrk run): a cost that the
# load generator sharing the cores does not blur, so the figure to compare two builds by.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$GW_PID/stat"; }
echo "max throughput (wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s)..." >&2
A_MAX=$(max_rps "$UP"); B_MAX=$(max_rps "$NGX")
# PERF_OUT=file: also record a call-graph profile of the gateway during its max run (perf).
if [ -n "${PERF_OUT:-}" ]; then
  perf record -F 999 -g -p "$GW_PID" -o "$PERF_OUT" -- sleep "$DURATION" 2>/dev/null & PERF_PID=$!
fi
C_TICKS=$(cpu_ticks); C_MAX=$(max_rps "$GW"); C_TICKS=$(( $(cpu_ticks) - C_TICKS ))
if [ -n "${PERF_OUT:-}" ]; then wait "$PERF_PID" || true; fi
C_CPU_US=$(python3 -c "print('%.1f' % ($C_TICKS / $(getconf CLK_TCK) * 1e6 / ($C_MAX * $DURATION)))")
RATE=$((B_MAX / 2))
echo "constant rate $RATE req/s (50% of nginx max) with oha -q..." >&2
read -r A50 A99 AERR <<<"$(percentiles "$UP" "$RATE")"
read -r B50 B99 BERR <<<"$(percentiles "$NGX" "$RATE")"
read -r C50 C99 CERR <<<"$(percentiles "$GW" "$RATE")"

add() { python3 -c "print('%.3f' % ($1 - $2))"; }
echo
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load before run: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "| setup | max req/s | p50 ms @ $RATE req/s | p99 ms | p50 added ms | p99 added ms | non-200 |"
echo "|---|---|---|---|---|---|---|"
echo "| (a) upstream direct | $A_MAX | $A50 | $A99 | - | - | $AERR |"
echo "| (b) nginx proxy_pass | $B_MAX | $B50 | $B99 | $(add "$B50" "$A50") | $(add "$B99" "$A99") | $BERR |"
echo "| (c) gateway (JWT + rate limit) | $C_MAX | $C50 | $C99 | $(add "$C50" "$A50") | $(add "$C99" "$A99") | $CERR |"
echo
echo "gateway CPU per request during its max-throughput run: $C_CPU_US us ($GW_BINARY)"
