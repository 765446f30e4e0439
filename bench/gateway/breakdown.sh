#!/usr/bin/env bash
# What the gateway's gap to nginx's max throughput is made of, step by step, in one run.
# First the headers the issue requires by themselves: the gateway adds seven on the way up
# (X-Forwarded-For/-Proto/-Host, traceparent, x-request-id, x-tenant-id, x-user-id) and seven
# on the way back (x-request-id, the three RateLimit-*, three security headers), and nginx's plain
# proxy_pass adds none. They cost in three processes: the proxy that adds them, the upstream
# that parses them and the load generator that parses the response, and on this machine all
# three share the same two cores. Then the gateway's features, turned on one after the other.
#
# Six setups against the same upstream, in rounds, each round in a rotated order:
#   nginx      Debian's nginx, plain proxy_pass (as in run.sh)
#   floor      examples/bare_proxy.rs: the gateway's server and pool, forwarding only
#   +headers   the same floor adding the fourteen headers, fixed values of the gateway's sizes
#   public     the gateway on a public route, circuit breaker off: routing, request id and trace
#              context, forwarding and security headers, metrics
#   +token     the same route validating the token (EdDSA JWT, cached once verified)
#   gateway    token, rate limit and circuit breaker: the gateway of run.sh
# For each: max req/s (wrk), and the CPU time per request of the proxy, the upstream nginx and
# wrk (from /proc and the shell's `times`). Then the medians over the rounds: each setup's share
# of nginx's max in the same round, and its CPU per request.
#
# Usage: bench/gateway/breakdown.sh   (ROUNDS=6 DURATION=5 CONNECTIONS=64 THREADS=2 to change)
#        BIN=/path/to/cloud-api-gateway-bff bench/gateway/breakdown.sh
set -euo pipefail
DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-6}
# shellcheck source=bench/gateway/lib.sh
source "$(dirname "$0")/lib.sh"

GW_BINARY=$(build_gateway "${BIN:-}")
echo "building the bare hyper proxy (release)..." >&2
(cd "$ROOT" && CARGO_TARGET_DIR="$TARGET" cargo build --release -q -p cloud-api-gateway-bff --example bare_proxy)

# lib.sh started the upstream nginx first: one master, one worker that serves.
UP_WORKER=$(pgrep -P "${PIDS[0]}")
nginx -p "$WORK/proxy" -c "$WORK/proxy/nginx.conf" & NGX_PID=$!; PIDS+=("$NGX_PID")
FLOOR=$(free_port)
"$TARGET/release/examples/bare_proxy" "$FLOOR" "127.0.0.1:$UP" & FLOOR_PID=$!; PIDS+=("$FLOOR_PID")
HEADERS=$(free_port)
"$TARGET/release/examples/bare_proxy" "$HEADERS" "127.0.0.1:$UP" required-headers & HEADERS_PID=$!; PIDS+=("$HEADERS_PID")
start_gateway "$GW_BINARY" public "auth: public, circuit_breaker: {enabled: false}"; PUBLIC=$GW_PORT; PUBLIC_PID=$GW_PID
start_gateway "$GW_BINARY" token "auth: token, circuit_breaker: {enabled: false}"; TOKEN=$GW_PORT; TOKEN_PID=$GW_PID
start_gateway "$GW_BINARY" gateway
wait_port "$NGX"; wait_port "$FLOOR"; wait_port "$HEADERS"
for port in "$NGX" "$FLOOR" "$HEADERS"; do answers_200 "$port"; done
NGX_WORKERS=$(pgrep -P "$NGX_PID" | tr '\n' ' ')
# The floor with headers must really add them.
curl -s -D - -o /dev/null -H "$AUTH" "http://127.0.0.1:$HEADERS/bench" | grep -qi '^ratelimit-remaining:' \
  || { echo "bare_proxy required-headers did not add the response headers" >&2; exit 1; }

SETUPS=(nginx floor +headers public +token gateway)
port_of() { case $1 in nginx) echo "$NGX";; floor) echo "$FLOOR";; +headers) echo "$HEADERS";; public) echo "$PUBLIC";; +token) echo "$TOKEN";; gateway) echo "$GW_PORT";; esac; }
pids_of() { case $1 in nginx) echo "$NGX_WORKERS";; floor) echo "$FLOOR_PID";; +headers) echo "$HEADERS_PID";; public) echo "$PUBLIC_PID";; +token) echo "$TOKEN_PID";; gateway) echo "$GW_PID";; esac; }
ticks_sum() { read -r u s <<<"$(cpu_ticks "$@")"; echo $((u + s)); }

# measure SETUP: "SETUP req/s proxy_us upstream_us wrk_us" for one wrk run.
measure() {
  local port proxy_before up_before proxy_after up_after rps wrk_seconds
  port=$(port_of "$1")
  # shellcheck disable=SC2046 # one argument per process
  proxy_before=$(ticks_sum $(pids_of "$1")); up_before=$(ticks_sum "$UP_WORKER")
  # The subshell's children are wrk alone: `times` gives its CPU time.
  wrk_seconds=$( (wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" -H "$AUTH" "http://127.0.0.1:$port/bench" > "$WORK/wrk.out"; times) \
    | awk 'NR == 2 { split($1, u, /[ms]/); split($2, s, /[ms]/); print u[1] * 60 + u[2] + s[1] * 60 + s[2] }')
  # shellcheck disable=SC2046
  proxy_after=$(ticks_sum $(pids_of "$1")); up_after=$(ticks_sum "$UP_WORKER")
  rps=$(awk '/Requests\/sec/ {print int($2)}' "$WORK/wrk.out")
  python3 -c "
n, tck = $rps * $DURATION, $(getconf CLK_TCK)
print('$1 $rps %.1f %.1f %.1f' % (($proxy_after - $proxy_before) / tck * 1e6 / n, ($up_after - $up_before) / tck * 1e6 / n, $wrk_seconds * 1e6 / n))"
}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s; $ROUNDS rounds"
echo "| round | setup | req/s | CPU µs per request: proxy | upstream | wrk |"
echo "|---|---|---|---|---|---|"
for round in $(seq 1 "$ROUNDS"); do
  for i in "${!SETUPS[@]}"; do
    setup=${SETUPS[$(((round + i) % ${#SETUPS[@]}))]}
    read -r name rps proxy up load <<<"$(measure "$setup")"
    echo "| $round | $name | $rps | $proxy | $up | $load |"
    echo "$round $name $rps $proxy $up $load" >> "$WORK/figures"
  done
done
python3 - "$WORK/figures" <<'PY'
import collections, statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
by_round = collections.defaultdict(dict)
for r, name, rps, *cpu in rows:
    by_round[r][name] = (float(rps), *map(float, cpu))
print()
print("medians over the rounds (share of nginx's max in the same round; CPU µs per request):")
print("| setup | max / nginx max | proxy | upstream | wrk | all three |")
print("|---|---|---|---|---|---|")
for name in ("nginx", "floor", "+headers", "public", "+token", "gateway"):
    share = statistics.median(100 * v[name][0] / v["nginx"][0] for v in by_round.values())
    cpu = [statistics.median(v[name][i] for v in by_round.values()) for i in (1, 2, 3)]
    total = statistics.median(sum(v[name][1:]) for v in by_round.values())
    print(f"| {name} | {share:.0f}% | {cpu[0]:.1f} | {cpu[1]:.1f} | {cpu[2]:.1f} | {total:.1f} |")
PY
