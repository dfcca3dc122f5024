#!/usr/bin/env bash
# Load test of the example service, with and without the middleware.
#
# Needs: go, wrk (Debian: apt-get install wrk), curl, python3 and, for the Redis rounds,
# redis-server (apt-get install redis-server) or REDIS_URL pointing at a
# Redis you own (it writes keys under the "idem:" prefix); for the Postgres
# rounds, initdb and pg_ctl (apt-get install postgresql; found with
# pg_config --bindir, as Debian keeps them off PATH) or POSTGRES_URL naming
# a database you own (the example creates its tables there, and they keep
# what the runs write). Installs nothing.
#
#   bench/load.sh                      # 3 rounds of 3 s per run, after 1 s of warm-up
#   DURATION=5s ROUNDS=3 bench/load.sh
#   STORES=postgres bench/load.sh      # only the rows of those stores
#
# For each store (memory, redis) and scenario (no key, new keys, replays, a
# mix with 10% duplicates) it runs wrk (1 thread, 16 connections) against
# the example with the middleware and with -idempotency=false, alternating
# the two in each round, and prints the median requests/s and latency of
# the rounds, and the median of the rounds' on/off ratios. The postgres rows
# (new keys, replays) run the example with -postgres: the requisitions live
# in Postgres in both runs, and the middleware keeps its records there too
# (pgstore, each create in the request's transaction), so the ratio is to
# the same service without the middleware on the same database. The burst
# row is a burst larger than the pool: new keys from 24 connections on a
# pool of 4, each create 20 ms slow (-latency) before its insert. A
# throwaway server starts from empty tables for each run, with Postgres'
# default durability (fsync on).
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-3s}
WARMUP=${WARMUP:-1s} # each fresh process first serves this long, unmeasured
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-16}
export BENCH_DIR=$PWD/bench

command -v wrk >/dev/null || { echo "load.sh needs wrk (apt-get install wrk)" >&2; exit 1; }
work=$(mktemp -d)
pids=()
pg_bin="" pg_data="" as_pg=() # a throwaway Postgres, when one runs
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ -n "$pg_data" ]; then "${as_pg[@]}" "$pg_bin/pg_ctl" stop -D "$pg_data" -m fast >/dev/null 2>&1 || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

go build -o "$work/example" ./example

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "nothing on port $1" >&2; return 1; }

stores=(memory)
redis_url=${REDIS_URL:-}
if [ -z "$redis_url" ] && command -v redis-server >/dev/null; then
  rport=$(free_port)
  redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no --daemonize no >/dev/null &
  pids+=($!)
  wait_port "$rport"
  redis_url="redis://127.0.0.1:$rport/0"
fi
[ -n "$redis_url" ] && stores+=(redis) || echo "no redis-server and no REDIS_URL: no Redis rows" >&2

pg_url=${POSTGRES_URL:-}
if [ -z "$pg_url" ]; then
  for dir in "$(pg_config --bindir 2>/dev/null)" /usr/lib/postgresql/*/bin; do
    if [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ]; then pg_bin=$dir; break; fi
  done
fi
if [ -n "$pg_bin" ]; then
  pg_dir=$work/pg
  mkdir "$pg_dir"
  if [ "$(id -u)" -eq 0 ]; then # initdb refuses root: run the server as postgres, in a directory it owns
    as_pg=(runuser -u postgres --)
    chmod 711 "$work"
    chown postgres: "$pg_dir"
  fi
  pport=$(free_port)
  "${as_pg[@]}" "$pg_bin/initdb" -D "$pg_dir/data" -U postgres -A trust -E UTF8 --no-locale >"$work/initdb.log" 2>&1 ||
    { cat "$work/initdb.log" >&2; exit 1; }
  pg_data=$pg_dir/data
  "${as_pg[@]}" "$pg_bin/pg_ctl" start -w -D "$pg_data" -l "$pg_dir/server.log" \
    -o "-p $pport -k $pg_dir -c listen_addresses=127.0.0.1 -c max_connections=200" >/dev/null
  pg_admin="postgres://postgres@127.0.0.1:$pport/postgres?sslmode=disable"
  pg_url="$pg_admin&pool_max_conns=32"
fi
[ -n "$pg_url" ] && stores+=(postgres) || echo "no initdb and pg_ctl and no POSTGRES_URL: no Postgres rows" >&2

# start_example STORE ON: starts the example; sets url and example_pid.
start_example() {
  local port args=()
  port=$(free_port)
  args=(-addr "127.0.0.1:$port" -idempotency="$2")
  [ "$1" = redis ] && args+=(-redis "$redis_url")
  if [ "$1" = postgres ]; then
    if [ "${3:-}" = burst ]; then # a pool of 4 under 24 connections, each create 20 ms slow
      args+=(-postgres "$pg_admin&pool_max_conns=4" -latency 20ms)
    else
      args+=(-postgres "$pg_url")
    fi
    if [ -n "$pg_data" ]; then # a throwaway server: each run starts from empty tables
      "$pg_bin/psql" -qX "$pg_admin" -c 'SET client_min_messages = warning; DROP TABLE IF EXISTS requisitions, idempotency_records' >/dev/null
    fi
  fi
  GIN_MODE=release "$work/example" "${args[@]}" >"$work/example.log" 2>&1 &
  example_pid=$!
  pids+=("$example_pid")
  wait_port "$port"
  url="http://127.0.0.1:$port"
}

# run SCRIPT: prints "rps p50 p99" of one wrk run against $url.
run() {
  local key out
  key=$(python3 -c 'import uuid; print(uuid.uuid4())')
  curl -s -o /dev/null -X POST "$url/api/requisitions" -H 'Authorization: Bearer alice' \
    -H 'Content-Type: application/json' -H "Idempotency-Key: $key" \
    -d '{"program":"Family Planning","facility":"Comfort Health Clinic"}'
  local script=$1 conns=$CONNS
  [ "$1" = burst ] && script=newkey conns=24
  BENCH_KEY=$key wrk -t1 -c"$conns" -d"$WARMUP" -s "bench/$script.lua" "$url" >/dev/null
  out=$(BENCH_KEY=$key wrk -t1 -c"$conns" -d"$DURATION" --latency -s "bench/$script.lua" "$url")
  echo "$out" | awk '
    function ms(v) { # wrk prints 485.00us, 1.09ms or 1.20s
      if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /s$/) return v * 1000; return v
    }
    /Requests\/sec/ {rps=$2}
    /^ +50%/ {p50=ms($2)}
    /^ +99%/ {p99=ms($2)}
    END {printf "%s %.2f %.2f\n", rps, p50, p99}'
}

median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

if [ -n "${STORES:-}" ]; then # e.g. STORES=postgres: only those rows
  wanted=()
  for store in "${stores[@]}"; do [[ " $STORES " == *" $store "* ]] && wanted+=("$store"); done
  stores=("${wanted[@]}")
fi

echo "machine: $(nproc) cores, $(uname -m), $(go version | cut -d' ' -f3); wrk -t1 -c$CONNS -d$DURATION, median of $ROUNDS rounds"
printf '%-8s %-8s %12s %9s %9s %12s %9s %7s\n' store scenario "on req/s" "p50 ms" "p99 ms" "off req/s" "p50 ms" ratio
for store in "${stores[@]}"; do
  scenarios=(nokey newkey replay mix)
  [ "$store" = postgres ] && scenarios=(newkey replay burst)
  for scenario in "${scenarios[@]}"; do
    : >"$work/on"; : >"$work/off"
    for _ in $(seq 1 "$ROUNDS"); do
      for on in true false; do
        start_example "$store" "$on" "$scenario"
        run "$scenario" >>"$work/$([ "$on" = true ] && echo on || echo off)"
        kill "$example_pid"; wait "$example_pid" 2>/dev/null || true
      done
    done
    on_rps=$(cut -d' ' -f1 "$work/on" | median); off_rps=$(cut -d' ' -f1 "$work/off" | median)
    on_p50=$(cut -d' ' -f2 "$work/on" | median); on_p99=$(cut -d' ' -f3 "$work/on" | median)
    off_p50=$(cut -d' ' -f2 "$work/off" | median)
    # The ratio is the median of each round's on/off pair, run back to back,
    # so that a machine whose speed drifts between rounds skews it least.
    ratio=$(paste -d' ' <(cut -d' ' -f1 "$work/on") <(cut -d' ' -f1 "$work/off") | awk '{printf "%.3f\n", $1 / $2}' | median)
    printf '%-8s %-8s %12.0f %9s %9s %12.0f %9s %6.2fx\n' "$store" "$scenario" "$on_rps" "$on_p50" "$on_p99" "$off_rps" "$off_p50" "$ratio"
  done
done
