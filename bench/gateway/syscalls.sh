#!/usr/bin/env bash
# System calls, context switches and page faults per proxied request, for nginx `proxy_pass`, the
# bare hyper proxy (the floor) and the gateway, each under the same wrk load as
# bench/gateway/run.sh: `perf stat` on the syscall tracepoints and software events of the proxy's
# own processes. Like allocs.sh, a count rather than a time, so it does not move with the VM's
# neighbours. They are the parts of the kernel's share of a request that can differ between
# proxies serving the same sockets: a page fault, for one, is memory the allocator gave back to
# the kernel and touches again.
#
# Each thread's context switches, voluntary and involuntary, come from /proc.
#
# Usage: bench/gateway/syscalls.sh             (DURATION=5 CONNECTIONS=64 THREADS=2 to change)
#        BIN=/path/to/cloud-api-gateway-bff bench/gateway/syscalls.sh
# Needs: root (tracepoints), perf, and what bench/gateway/lib.sh needs.
set -euo pipefail
DURATION=${DURATION:-5}
# shellcheck source=bench/gateway/lib.sh
source "$(dirname "$0")/lib.sh"
command -v perf >/dev/null || { echo "missing tool: perf" >&2; exit 1; }

GW_BINARY=$(build_gateway "${BIN:-}")
(cd "$ROOT" && CARGO_TARGET_DIR="$TARGET" cargo build --release -q -p cloud-api-gateway-bff --example bare_proxy)
nginx -p "$WORK/proxy" -c "$WORK/proxy/nginx.conf" & NGX_PID=$!; PIDS+=($NGX_PID)
BARE=$(free_port)
"$TARGET/release/examples/bare_proxy" "$BARE" "127.0.0.1:$UP" & BARE_PID=$!; PIDS+=($BARE_PID)
start_gateway "$GW_BINARY" gateway
wait_port "$NGX"; wait_port "$BARE"
for port in "$NGX" "$BARE"; do answers_200 "$port"; done
NGX_WORKERS=$(pgrep -P "$NGX_PID" | paste -sd,)

EVENTS=raw_syscalls:sys_enter,context-switches,page-faults,cpu-migrations,syscalls:sys_enter_recvfrom,syscalls:sys_enter_writev,syscalls:sys_enter_write,syscalls:sys_enter_read,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_epoll_ctl
# switches PIDS: "tid name voluntary involuntary" for every thread of PIDS (comma-separated), from
# /proc: a thread switched out because it waited (for epoll, a lock) counts as voluntary, one the
# scheduler preempted for another runnable task as involuntary.
switches() {
  local pid task
  for pid in ${1//,/ }; do
    for task in /proc/"$pid"/task/*; do
      awk -v tid="${task##*/}" -v name="$(cat "$task/comm" 2>/dev/null)" \
        '/^voluntary_ctxt_switches/ { v = $2 } /^nonvoluntary_ctxt_switches/ { n = $2 }
         END { gsub(/ /, "_", name); print tid, name, v, n }' "$task/status" 2>/dev/null || true
    done
  done
}

# count NAME PORT PIDS: one wrk run on PORT while perf counts the events of PIDS (comma-separated);
# then each thread's context switches per request that did any, by kind.
count() {
  local out="$WORK/$1.perf" rps
  switches "$3" > "$WORK/$1.switches-before"
  perf stat -x, -e "$EVENTS" -p "$3" -o "$out" -- sleep "$DURATION" &
  local perf_pid=$!
  rps=$(max_rps "$2")
  wait "$perf_pid"
  switches "$3" > "$WORK/$1.switches-after"
  echo "$1: $rps req/s"
  awk -F, -v n=$((rps * DURATION)) '$1 ~ /^[0-9]+$/ { printf "  %-34s %.3f per request\n", $3, $1 / n }' "$out"
  awk -v n=$((rps * DURATION)) '
    NR == FNR { v[$1] = $3; i[$1] = $4; next }
    ($1 in v) && ($3 - v[$1]) + ($4 - i[$1]) > 0 {
      printf "  thread %-16s %7d: %.3f voluntary, %.3f involuntary switches per request\n", $2, $1, ($3 - v[$1]) / n, ($4 - i[$1]) / n
    }' "$WORK/$1.switches-before" "$WORK/$1.switches-after"
}
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s"
count nginx "$NGX" "$NGX_WORKERS"
count floor "$BARE" "$BARE_PID"
count gateway "$GW_PORT" "$GW_PID"
