#!/usr/bin/env bash
# Heap allocations per proxied request of a gateway build: counted exactly with uprobes on the
# allocator's entry points (mimalloc's `mi_malloc_aligned`, `mi_zalloc_aligned`,
# `mi_realloc_aligned`, which Rust's global allocator calls) while wrk drives the same load as
# bench/gateway/run.sh. Unlike CPU time on a shared VM, the count does not depend on the
# neighbours, so it tells two builds apart where a few percent of CPU cannot.
#
# Usage: bench/gateway/allocs.sh                (builds the gateway with symbols into
#                                                 $PROFILE_TARGET, default /tmp/gateway-prof-target)
#        BIN=/path/to/unstripped/gateway bench/gateway/allocs.sh
#        BY_SITE=1 bench/gateway/allocs.sh      (instead: each allocation site's share, from a
#                                                 call-graph recording, which may drop events
#                                                 under this load, so no totals from it)
# Needs: root (uprobes), perf, and what bench/gateway/lib.sh needs.
set -euo pipefail
DURATION=${DURATION:-3}
# shellcheck source=bench/gateway/lib.sh
source "$(dirname "$0")/lib.sh"
command -v perf >/dev/null || { echo "missing tool: perf" >&2; exit 1; }

if [ -z "${BIN:-}" ]; then
  PROFILE_TARGET=${PROFILE_TARGET:-/tmp/gateway-prof-target}
  echo "building the gateway (release, with symbols and frame pointers) into $PROFILE_TARGET..." >&2
  (cd "$ROOT" && CARGO_TARGET_DIR="$PROFILE_TARGET" CARGO_PROFILE_RELEASE_STRIP=none \
    RUSTFLAGS="-C force-frame-pointers=yes" cargo build --release -q -p cloud-api-gateway-bff --bin cloud-api-gateway-bff)
  BIN="$PROFILE_TARGET/release/cloud-api-gateway-bff"
fi

# One probe group per run, removed on exit together with lib.sh's cleanup.
GROUP="gwalloc$$"
EVENTS=()
for fn in mi_malloc_aligned mi_zalloc_aligned mi_realloc_aligned; do
  # On return: the entry point has no usable debug info for perf to place an entry probe.
  perf probe -q -x "$BIN" --no-demangle -a "$GROUP:$fn=$fn%return" || { echo "cannot probe $fn in $BIN (stripped?)" >&2; exit 1; }
  EVENTS+=("$GROUP:${fn}__return")
done
trap 'perf probe -q -d "$GROUP:*" || true; cleanup' EXIT

start_gateway "$BIN" gateway
EVENT_LIST=$(IFS=,; echo "${EVENTS[*]}")
if [ -n "${BY_SITE:-}" ]; then
  perf record -q -g -e "$EVENT_LIST" -p "$GW_PID" -o "$WORK/allocs.perf" -- sleep "$DURATION" 2>/dev/null & PERF_PID=$!
else
  perf stat -x, -e "$EVENT_LIST" -p "$GW_PID" -o "$WORK/allocs.stat" -- sleep "$DURATION" & PERF_PID=$!
fi
RPS=$(max_rps "$GW_PORT")
wait "$PERF_PID" || true
REQUESTS=$((RPS * DURATION))

echo "gateway $BIN, $REQUESTS requests (wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s; the probes slow it down)"
if [ -n "${BY_SITE:-}" ]; then
  # The first frame outside the allocator and the standard library's allocation wrappers.
  perf script -i "$WORK/allocs.perf" -F ip,sym 2>/dev/null | python3 -c '
import collections, re, sys
skip = re.compile(r"^(mi_|_mi_|__rust|alloc::|<alloc::|core::ptr|<T as alloc|hashbrown::raw|<bytes::|bytes::bytes_mut::BytesMut::reserve)")
sites, stack = collections.Counter(), []
def flush():
    frames = [f for f in stack if not skip.match(f)]
    if stack: sites[frames[0] if frames else stack[0]] += 1
for line in sys.stdin:
    line = line.strip()
    if not line:
        flush(); stack = []; continue
    stack.append(line.split(" ", 1)[1] if " " in line else line)
flush()
total = sum(sites.values())
print("share of the %d allocations recorded, by site:" % total)
for site, n in sites.most_common(25):
    print("%5.1f%%  %s" % (100 * n / total, site[:150]))
'
else
  awk -F, -v n="$REQUESTS" '$1 ~ /^[0-9]+$/ { total += $1; printf "  %-30s %6.2f per request\n", $3, $1 / n } END { printf "  %-30s %6.2f per request\n", "total", total / n }' "$WORK/allocs.stat"
fi
