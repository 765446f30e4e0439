#!/usr/bin/env bash
# Gateway load benchmark: in ONE run, against the same upstream (an nginx returning a fixed 3-byte
# body), measures
#   (a) the upstream directly,
#   (b) Debian's nginx as a plain proxy_pass (keep-alive to the upstream),
#   (c) cloud-api-gateway-bff (release build) with token validation (EdDSA JWT) and rate limiting
#       (in-process GCRA, a limit far above the offered load) on the route,
#   (d) the bare hyper proxy (examples/bare_proxy.rs): the gateway's server, client and runtime
#       model with none of its features, i.e. the floor under (c).
# Max throughput: wrk, closed loop, with the CPU time per request of (b), (c) and (d). Latency
# percentiles: oha at a constant rate (-q) of 50% of nginx's max, for all four; "added" latency =
# proxy percentile minus the direct percentile.
#
# Usage: bench/gateway/run.sh            (DURATION=10 CONNECTIONS=64 THREADS=2 ROUNDS=1 to change)
#        ROUNDS=3 bench/gateway/run.sh   (three rounds, then the medians over them)
#        BIN=/path/to/cloud-api-gateway-bff bench/gateway/run.sh   (another build of (c))
#        PERF_OUT=/tmp/gw.perf bench/gateway/run.sh   (and a perf profile of the gateway's max run)
#        bench/gateway/ab.sh compares two gateway builds round by round.
# Needs: nginx, wrk and oha, which `cargo xtask tools --bench` installs (Debian's nginx-light and
#        wrk, oha 1.16.0 from crates.io) and bench/gateway/lib.sh calls; openssl, python3, curl.
# Everything listens on 127.0.0.1, on free ports, in a temp dir that is removed afterwards.
set -euo pipefail
# shellcheck source=bench/gateway/lib.sh
source "$(dirname "$0")/lib.sh"

GW_BINARY=$(build_gateway "${BIN:-}")
echo "building the bare hyper proxy (release)..." >&2
(cd "$ROOT" && CARGO_TARGET_DIR="$TARGET" cargo build --release -q -p cloud-api-gateway-bff --example bare_proxy)

nginx -p "$WORK/proxy" -c "$WORK/proxy/nginx.conf" & NGX_PID=$!; PIDS+=($NGX_PID)
BARE=$(free_port)
"$TARGET/release/examples/bare_proxy" "$BARE" "127.0.0.1:$UP" & BARE_PID=$!; PIDS+=($BARE_PID)
start_gateway "$GW_BINARY" gateway; GW=$GW_PORT
wait_port "$NGX"; wait_port "$BARE"
for port in "$UP" "$NGX" "$BARE"; do answers_200 "$port"; done
NGX_WORKERS=$(pgrep -P "$NGX_PID" | tr '\n' ' ')

percentiles() { # $1 = port, $2 = rate -> "p50_ms p99_ms non2xx"
  "$OHA" --no-tui --output-format json -z "${DURATION}s" -q "$2" -c "$CONNECTIONS" -H "$AUTH" "http://127.0.0.1:$1/bench" \
    | python3 -c 'import json,sys; d=json.load(sys.stdin); p=d["latencyPercentiles"]; c=d.get("statusCodeDistribution",{}); print("%.3f %.3f %d" % (p["p50"]*1000, p["p99"]*1000, sum(v for k,v in c.items() if k!="200")))'
}
add() { python3 -c "print('%.3f' % ($1 - $2))"; }

# One round: every setup's max throughput, then every setup's percentiles at half of nginx's max
# in this round; prints the round's table and appends its figures to $WORK/rounds.
measure_round() {
  echo "max throughput (wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s)..." >&2
  A_MAX=$(max_rps "$UP")
  # shellcheck disable=SC2086 # one argument per worker
  read -r B_MAX B_CPU B_USER <<<"$(max_rps_and_cpu "$NGX" $NGX_WORKERS)"
  # PERF_OUT=file: also record a call-graph profile of the gateway during its (first) max run.
  if [ -n "${PERF_OUT:-}" ] && [ "$1" = 1 ]; then
    perf record -F 999 -g -p "$GW_PID" -o "$PERF_OUT" -- sleep "$DURATION" 2>/dev/null & PERF_PID=$!
  fi
  read -r C_MAX C_CPU C_USER <<<"$(max_rps_and_cpu "$GW" "$GW_PID")"
  if [ -n "${PERF_OUT:-}" ] && [ "$1" = 1 ]; then wait "$PERF_PID" || true; fi
  read -r D_MAX D_CPU D_USER <<<"$(max_rps_and_cpu "$BARE" "$BARE_PID")"

  RATE=$((B_MAX / 2))
  echo "constant rate $RATE req/s (50% of nginx max) with oha -q..." >&2
  read -r A50 A99 AERR <<<"$(percentiles "$UP" "$RATE")"
  read -r B50 B99 BERR <<<"$(percentiles "$NGX" "$RATE")"
  read -r C50 C99 CERR <<<"$(percentiles "$GW" "$RATE")"
  read -r D50 D99 DERR <<<"$(percentiles "$BARE" "$RATE")"

  echo
  echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load before run: $(cut -d' ' -f1-3 /proc/loadavg)${ROUND_LABEL:-}"
  echo "| setup | max req/s | CPU µs per request (user-space part) | p50 ms @ $RATE req/s | p99 ms | p50 added ms | p99 added ms | non-200 |"
  echo "|---|---|---|---|---|---|---|---|"
  echo "| (a) upstream direct | $A_MAX | - | $A50 | $A99 | - | - | $AERR |"
  echo "| (b) nginx proxy_pass | $B_MAX | $B_CPU ($B_USER) | $B50 | $B99 | $(add "$B50" "$A50") | $(add "$B99" "$A99") | $BERR |"
  echo "| (c) gateway (JWT + rate limit) | $C_MAX | $C_CPU ($C_USER) | $C50 | $C99 | $(add "$C50" "$A50") | $(add "$C99" "$A99") | $CERR |"
  echo "| (d) bare hyper proxy (floor) | $D_MAX | $D_CPU ($D_USER) | $D50 | $D99 | $(add "$D50" "$A50") | $(add "$D99" "$A99") | $DERR |"
  echo
  echo "(c) is $GW_BINARY; (c) reached $(python3 -c "print('%.0f%%' % (100 * $C_MAX / $B_MAX))") of nginx's max throughput"
  echo "$B_MAX $C_MAX $D_MAX $(add "$B99" "$A99") $(add "$C99" "$A99") $(add "$D99" "$A99")" >> "$WORK/rounds"
}

# ROUNDS=n: n rounds one after the other, then the medians over them. One round is one draw on a
# shared VM: three rounds of this script within ten minutes put the gateway at 84%, 86% and 96%
# of nginx's max, and nginx's own p99 added latency at 0.70, 1.54 and 1.74 ms (2026-12-07).
ROUNDS=${ROUNDS:-1}
for round in $(seq 1 "$ROUNDS"); do
  if [ "$ROUNDS" -gt 1 ]; then ROUND_LABEL=", round $round of $ROUNDS"; echo "round $round of $ROUNDS..." >&2; fi
  measure_round "$round"
done
if [ "$ROUNDS" -gt 1 ]; then
  python3 - "$WORK/rounds" <<'PY'
import statistics, sys
rounds = [[float(v) for v in line.split()] for line in open(sys.argv[1]) if line.strip()]
throughput = [100 * c / b for b, c, *_ in rounds]
floor = [100 * d / b for b, _, d, *_ in rounds]
print(f"over {len(rounds)} rounds, medians (each round's figure in brackets):")
print(f"  gateway max / nginx max: {statistics.median(throughput):.0f}% ({', '.join(f'{v:.0f}%' for v in throughput)})")
print(f"  floor max / nginx max:   {statistics.median(floor):.0f}% ({', '.join(f'{v:.0f}%' for v in floor)})")
for name, column in (("nginx", 3), ("gateway", 4), ("floor", 5)):
    added = [r[column] for r in rounds]
    print(f"  p99 added, {name + ':':9} {statistics.median(added):.3f} ms ({', '.join(f'{v:.3f}' for v in added)})")
PY
fi
