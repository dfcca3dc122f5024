#!/usr/bin/env bash
# Latency of keyed requests while Redis is stalled, with and without the
# circuit breaker (SPEC 32).
#
# Needs: go, python3, redis-server. Installs nothing.
#
#   bench/outage.sh                  # a 10 s outage, 16 connections
#   OUTAGE=10s CONNS=16 bench/outage.sh
#
# For each setting it starts a throwaway redis-server and the example on it,
# warms up, stops the server with SIGSTOP (a stalled master: what a failover
# or a swapped-out process looks like to clients), sends new-key POSTs with
# bench/latency for the length of the outage, and resumes the server. It
# prints the requests/s and the latency percentiles of every answer during
# the outage (wrk's own latency figures were inconsistent here: their sum
# exceeded the time measured).
set -euo pipefail
cd "$(dirname "$0")/.."
OUTAGE=${OUTAGE:-10s}
CONNS=${CONNS:-16}
export BENCH_DIR=$PWD/bench
for tool in redis-server python3; do
  command -v "$tool" >/dev/null || { echo "outage.sh needs $tool" >&2; exit 1; }
done
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -CONT "$p" 2>/dev/null || true; kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
go build -o "$work/example" ./example
go build -o "$work/latency" ./bench/latency

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "nothing on port $1" >&2; return 1; }

echo "machine: $(nproc) cores, $(uname -m), $(go version | cut -d' ' -f3); $CONNS connections for $OUTAGE during a stalled Redis"
printf '%-16s %9s %9s %9s %9s %9s %7s\n' setting "req/s" "p50 ms" "p90 ms" "p99 ms" "max ms" errors
for breaker in false true; do
  rport=$(free_port)
  redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no --daemonize no >/dev/null &
  rpid=$!
  pids+=("$rpid")
  wait_port "$rport"
  port=$(free_port)
  GIN_MODE=release "$work/example" -addr "127.0.0.1:$port" -redis "redis://127.0.0.1:$rport/0" -breaker="$breaker" >"$work/example.log" 2>&1 &
  pids+=($!)
  wait_port "$port"
  "$work/latency" -url "http://127.0.0.1:$port/api/requisitions" -c "$CONNS" -d 1s >/dev/null # warm-up
  kill -STOP "$rpid"
  read -r rps p50 p90 p99 max errors < <("$work/latency" -url "http://127.0.0.1:$port/api/requisitions" -c "$CONNS" -d "$OUTAGE")
  kill -CONT "$rpid"
  printf '%-16s %9s %9s %9s %9s %9s %7s\n' "breaker=$breaker" "$rps" "$p50" "$p90" "$p99" "$max" "$errors"
done
