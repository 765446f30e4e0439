#!/usr/bin/env bash
# User-space instructions per proxied request, for nginx `proxy_pass`, the bare hyper proxy (the
# floor) and the gateway, each run under valgrind's callgrind while oha sends a fixed number of
# requests. callgrind counts instructions rather than seconds, so the figures are the same from
# run to run whatever the VM's neighbours do: the way to see what the gateway's features cost
# above the floor when CPU time moves by more than that between runs. It does not see the
# kernel's share (bench/gateway/syscalls.sh counts the system calls) nor cache misses.
#
# Usage: bench/gateway/instructions.sh       (REQUESTS=4000 CONNECTIONS=8 TOP=25 to change)
#        BIN=/path/to/unstripped/gateway bench/gateway/instructions.sh
# Prints instructions per request for each setup, then the functions where the gateway spends
# the most beyond the floor (exclusive instructions per request, from callgrind_annotate), so
# that a change can be placed.
# KEEP=dir keeps the three callgrind files there, for callgrind_annotate or kcachegrind.
# Needs: valgrind (callgrind_control, callgrind_annotate) and what bench/gateway/lib.sh needs.
set -euo pipefail
REQUESTS=${REQUESTS:-4000}
CONNECTIONS=${CONNECTIONS:-8}
TOP=${TOP:-25}
# Everything starts a few times slower under valgrind.
WAIT_TRIES=1200
# shellcheck source=bench/gateway/lib.sh
source "$(dirname "$0")/lib.sh"
for tool in valgrind callgrind_control callgrind_annotate; do
  command -v "$tool" >/dev/null || { echo "missing tool: $tool" >&2; exit 1; }
done

PROFILE_TARGET=${PROFILE_TARGET:-/tmp/gateway-callgrind-target}
echo "building the gateway and the floor (release, with symbols) into $PROFILE_TARGET..." >&2
(cd "$ROOT" && CARGO_TARGET_DIR="$PROFILE_TARGET" CARGO_PROFILE_RELEASE_STRIP=none \
  cargo build --release -q -p cloud-api-gateway-bff --bin cloud-api-gateway-bff --example bare_proxy)
GW_BIN=${BIN:-$PROFILE_TARGET/release/cloud-api-gateway-bff}

# callgrind_wrapper NAME BINARY: a script that runs BINARY with its arguments under callgrind,
# writing $WORK/NAME.callgrind.<dump number>; exec keeps the PID the caller records.
callgrind_wrapper() {
  cat > "$WORK/$1-under-callgrind" <<EOF
#!/bin/sh
exec valgrind -q --tool=callgrind --callgrind-out-file=$WORK/$1.callgrind $2 "\$@"
EOF
  chmod +x "$WORK/$1-under-callgrind"
  echo "$WORK/$1-under-callgrind"
}

# measure NAME PORT PID: warms the setup up, zeroes its counters, sends $REQUESTS requests and
# dumps; prints "NAME instructions-per-request".
measure() {
  "$OHA" --no-tui -n 500 -c "$CONNECTIONS" -H "$AUTH" "http://127.0.0.1:$2/bench" >/dev/null
  callgrind_control -z "$3" >/dev/null
  local codes
  codes=$("$OHA" --no-tui --output-format json -n "$REQUESTS" -c "$CONNECTIONS" -H "$AUTH" "http://127.0.0.1:$2/bench" \
    | python3 -c 'import json,sys; print(" ".join("%s:%d" % kv for kv in json.load(sys.stdin)["statusCodeDistribution"].items()))')
  [ "$codes" = "200:$REQUESTS" ] || { echo "$1 answered $codes, not $REQUESTS times 200" >&2; exit 1; }
  callgrind_control -d "$1" "$3" >/dev/null
  # The one dump so far: $WORK/NAME.callgrind.1 (the file without a number comes at exit).
  local dumps=("$WORK/$1.callgrind".*)
  mv "${dumps[0]}" "$WORK/$1.measured"
  awk -v n="$REQUESTS" -v name="$1" '/^(summary|totals):/ { printf "%s %.0f\n", name, $2 / n; exit }' "$WORK/$1.measured"
}

# (b) nginx: one process, no master, so callgrind follows the worker that serves.
mkdir -p "$WORK/callgrind-nginx/logs"
nginx_conf callgrind-nginx 1 "  upstream backend { server 127.0.0.1:$UP; keepalive 256; }
  server {
    listen 127.0.0.1:$NGX;
    location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection \"\"; }
  }"
sed -i '1i master_process off;' "$WORK/callgrind-nginx/nginx.conf"
"$(callgrind_wrapper nginx "$NGINX_BIN")" -p "$WORK/callgrind-nginx" -c "$WORK/callgrind-nginx/nginx.conf" & NGX_PID=$!; PIDS+=("$NGX_PID")
BARE=$(free_port)
"$(callgrind_wrapper floor "$PROFILE_TARGET/release/examples/bare_proxy")" "$BARE" "127.0.0.1:$UP" & BARE_PID=$!; PIDS+=("$BARE_PID")
start_gateway "$(callgrind_wrapper gateway "$GW_BIN")" gateway
wait_port "$NGX"; wait_port "$BARE"
for port in "$NGX" "$BARE"; do answers_200 "$port"; done

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); oha -n $REQUESTS -c $CONNECTIONS after 500 to warm up"
echo "gateway: $GW_BIN"
RESULTS=$(measure nginx "$NGX" "$NGX_PID"; measure floor "$BARE" "$BARE_PID"; measure gateway "$GW_PORT" "$GW_PID")
echo "| setup | user-space instructions per request |"
echo "|---|---|"
awk '{ printf "| %s | %d |\n", $1, $2 }' <<<"$RESULTS"
if [ -n "${KEEP:-}" ]; then
  mkdir -p "$KEEP"; for name in nginx floor gateway; do cp "$WORK/$name.measured" "$KEEP/$name.callgrind"; done
fi
echo
echo "where the gateway spends more than the floor: the $TOP functions with the largest difference"
echo "in exclusive instructions per request (gateway, floor, difference)"
python3 - "$WORK/gateway.measured" "$WORK/floor.measured" "$REQUESTS" "$TOP" <<'PY'
import re, subprocess, sys
gateway_file, floor_file, requests, top = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
line = re.compile(r"\s*([0-9,]+) \(\s*[0-9.]+%\)\s+(.*)$")
def per_function(path):
    out = subprocess.run(["callgrind_annotate", "--inclusive=no", "--threshold=100", path],
                         capture_output=True, text=True, check=True).stdout
    counts = {}
    for text in out.splitlines():
        m = line.match(text)
        if m and "PROGRAM TOTALS" not in m.group(2):
            name = re.sub(r" \[[^]]*\]$", "", m.group(2))
            counts[name] = counts.get(name, 0) + int(m.group(1).replace(",", "")) / requests
    return counts
gateway, floor = per_function(gateway_file), per_function(floor_file)
# callgrind_annotate gives the thread entry frames (clone, start_thread, ...) everything as their
# own cost: whatever holds nearly all of a file's total is one of those, not a function's cost.
entry = {k for d in (gateway, floor) for k, v in d.items() if v >= 0.99 * max(d.values())}
rows = sorted(((gateway.get(k, 0) - floor.get(k, 0), k) for k in (set(gateway) | set(floor)) - entry), reverse=True)
for diff, name in rows[:top]:
    print("  %7.0f %7.0f %+8.0f  %s" % (gateway.get(name, 0), floor.get(name, 0), diff, name[:140]))
PY
