#!/usr/bin/env bash
# What an atomic read-modify-write costs on this machine when its cache line was last written by
# the other core (two threads taking turns on one counter), against the same operation on a line
# this core already owns. The gateway's two event loops share a few counters, locks and
# reference counts on each request's path; this is the price of each one (docs/benchmarks.md).
#
# Usage: bench/gateway/cacheline.sh     Needs: gcc.
set -euo pipefail
command -v gcc >/dev/null || { echo "missing tool: gcc" >&2; exit 1; }
WORK=$(mktemp -d /tmp/cacheline.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
cat > "$WORK/pingpong.c" <<'C'
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <time.h>
#define TURNS 2000000L
#define LOCAL 100000000L
static _Alignas(64) atomic_long counter;
static double now_ns(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec * 1e9 + t.tv_nsec; }
/* Each thread waits for its turn (an even or odd value), then increments. */
static void take_turns(long parity) {
  for (long i = 0; i < TURNS; i++) {
    while (atomic_load_explicit(&counter, memory_order_acquire) != 2 * i + parity) {}
    atomic_fetch_add(&counter, 1);
  }
}
static void *other(void *unused) { (void)unused; take_turns(1); return NULL; }
int main(void) {
  pthread_t thread;
  double start = now_ns();
  pthread_create(&thread, NULL, other, NULL);
  take_turns(0);
  pthread_join(thread, NULL);
  printf("atomic add on a line the other core wrote last: %.1f ns (a hand-over each way, %ld turns)\n",
         (now_ns() - start) / (2.0 * TURNS), TURNS);
  start = now_ns();
  for (long i = 0; i < LOCAL; i++) atomic_fetch_add(&counter, 1);
  printf("atomic add on a line this core owns:            %.1f ns\n", (now_ns() - start) / LOCAL);
  return 0;
}
C
gcc -O2 -pthread "$WORK/pingpong.c" -o "$WORK/pingpong"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
"$WORK/pingpong"
