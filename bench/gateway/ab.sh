#!/usr/bin/env bash
# Same-run A/B of two gateway builds: both run side by side against the same upstream, and
# ROUNDS rounds alternate a wrk run on each (then on nginx, as the machine's yardstick), printing
# req/s and the gateway's CPU time per request. On a VM whose neighbours come and go, alternating
# rounds is what makes two builds comparable; compare the CPU per request within a round.
#
# Usage: A=/path/to/new/cloud-api-gateway-bff B=/path/to/old/cloud-api-gateway-bff bench/gateway/ab.sh
#        (ROUNDS=4 DURATION=5 CONNECTIONS=64 THREADS=2 to change)
set -euo pipefail
DURATION=${DURATION:-5}
# shellcheck source=bench/gateway/lib.sh
source "$(dirname "$0")/lib.sh"
[ -x "${A:-}" ] && [ -x "${B:-}" ] || { echo "set A= and B= to two gateway binaries" >&2; exit 1; }

nginx -p "$WORK/proxy" -c "$WORK/proxy/nginx.conf" & PIDS+=($!)
start_gateway "$A" a; A_PORT=$GW_PORT; A_PID=$GW_PID
start_gateway "$B" b; B_PORT=$GW_PORT; B_PID=$GW_PID
wait_port "$NGX"; answers_200 "$NGX"

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s"
echo "| round | A req/s | A CPU µs/request (user) | B req/s | B CPU µs/request (user) | nginx req/s |"
echo "|---|---|---|---|---|---|"
for round in $(seq 1 "${ROUNDS:-4}"); do
  read -r A_RPS A_CPU A_USER <<<"$(max_rps_and_cpu "$A_PORT" "$A_PID")"
  read -r B_RPS B_CPU B_USER <<<"$(max_rps_and_cpu "$B_PORT" "$B_PID")"
  echo "| $round | $A_RPS | $A_CPU ($A_USER) | $B_RPS | $B_CPU ($B_USER) | $(max_rps "$NGX") |"
done
