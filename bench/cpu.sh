#!/usr/bin/env bash
# cpu.sh - CPU time per request of a service, its Redis and wrk, with and
# without the idempotency middleware: a measure that a busy machine disturbs
# far less than requests per second.
#
# Usage: bench/cpu.sh [-rounds N] [-duration D] [-strace] [-perf DIR] SERVICE...
#   SERVICE    [NAME=]PATH: a directory holding a main package (built with
#              go build), or an executable, serving the requisition contract of
#              ../shared/peers/bench.sh (flags -addr -redis -idempotency;
#              POST /api/requisitions with "Authorization: Bearer alice").
#              This repository's service is ./example.
#   -rounds N    rounds, median reported (default 3)
#   -duration D  wrk duration per run (default 4s)
#   -strace      also count the service's system calls per request
#                (strace -c -f, in a run of its own: strace slows it down)
#   -perf DIR    also record perf profiles (perf record -g) of the service
#                and of Redis in each run, into DIR
#
# Each service runs on one private redis-server (--save '' --appendonly
# no). Per round it runs wrk -t1 -c16 twice, each against a fresh instance:
#   base    -idempotency=false, no key
#   newkey  the middleware on, a fresh UUID v4 Idempotency-Key per request
# and reads the CPU time (user + system, /proc/PID/stat) that the service
# and redis-server used during the run, and wrk's own (time -f). Dividing
# by the requests served gives microseconds of CPU per request; "added" is
# newkey minus base. On a machine whose cores are all busy, throughput is
# the cores divided by the CPU time per request, so the added CPU time,
# halved on 2 cores, is close to the microseconds a new key adds to a
# request (1e6/newkey - 1e6/base in bench.sh), and it hardly depends on
# what else runs. For the newkey runs it also prints Redis' INFO
# commandstats per request (calls and usec_per_call of each command).
set -euo pipefail

ROUNDS=3
DURATION=4s
STRACE=""
PERFDIR=""
SERVICES=()
while [ $# -gt 0 ]; do
  case "$1" in
    -rounds) ROUNDS=$2; shift 2 ;;
    -duration) DURATION=$2; shift 2 ;;
    -strace) STRACE=1; shift ;;
    -perf) PERFDIR=$(mkdir -p "$2" && cd "$2" && pwd); shift 2 ;;
    -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
    -*) echo "unknown option $1" >&2; exit 2 ;;
    *) SERVICES+=("$1"); shift ;;
  esac
done
[ ${#SERVICES[@]} -gt 0 ] || { echo "usage: $0 [options] SERVICE..." >&2; exit 2; }
for tool in wrk redis-server redis-cli curl python3; do
  command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 2; }
done
[ -z "$STRACE" ] || command -v strace >/dev/null || { echo "-strace needs strace" >&2; exit 2; }
[ -z "$PERFDIR" ] || command -v perf >/dev/null || { echo "-perf needs perf" >&2; exit 2; }

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

freeport() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
CLK=$(getconf CLK_TCK)
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END{ if (NR%2) print a[(NR+1)/2]; else printf "%.1f\n", (a[NR/2]+a[NR/2+1])/2 }'; }

BODY='{"program":"p1","facility":"f1"}'
cat >"$WORK/common.lua" <<EOF
wrk.method = "POST"
wrk.path = "/api/requisitions"
wrk.body = '$BODY'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer alice"
EOF
cat "$WORK/common.lua" - >"$WORK/base.lua" <<'EOF'
request = function() return wrk.format() end
EOF
cat "$WORK/common.lua" - >"$WORK/newkey.lua" <<'EOF'
local random = math.random
local template = "xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx"
init = function(args) math.randomseed(tonumber(args[1]) or os.time()) end
request = function()
  wrk.headers["Idempotency-Key"] = (string.gsub(template, "[xy]", function(c)
    return string.format("%x", (c == "x") and random(0, 15) or random(8, 11))
  end))
  return wrk.format()
end
EOF

# build
NAMES=(); BINS=()
for s in "${SERVICES[@]}"; do
  name=$(basename "$s")
  case "$s" in *=*) name=${s%%=*}; s=${s#*=} ;; esac
  if [ -d "$s" ]; then
    echo "building $s" >&2
    (cd "$s" && go build -o "$WORK/$name.bin" .)
    BINS+=("$WORK/$name.bin")
  elif [ -x "$s" ]; then
    BINS+=("$(cd "$(dirname "$s")" && pwd)/$(basename "$s")")
  else
    echo "not a directory or executable: $s" >&2; exit 2
  fi
  NAMES+=("$name")
done

RPORT=$(freeport)
redis-server --port "$RPORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$WORK" >"$WORK/redis.log" 2>&1 &
RPID=$!; PIDS+=("$RPID")
for _ in $(seq 50); do redis-cli -p "$RPORT" ping >/dev/null 2>&1 && break; sleep 0.1; done

# run NAME BIN MODE TAG -> sets CPU_S CPU_R CPU_W REQS RPS (us per request)
run() {
  local name=$1 bin=$2 mode=$3 tag=$4 port spid on=true s0 r0 s1 r1 pp1="" pp2="" stp=""
  [ "$mode" = base ] && on=false
  port=$(freeport)
  redis-cli -p "$RPORT" flushall >/dev/null
  "$bin" -addr "127.0.0.1:$port" -redis "redis://127.0.0.1:$RPORT/0" -idempotency=$on >"$WORK/svc.log" 2>&1 &
  spid=$!; PIDS+=("$spid")
  for _ in $(seq 100); do
    curl -s -o /dev/null -H 'Authorization: Bearer dave' "http://127.0.0.1:$port/api/requisitions" && break
    sleep 0.1
  done
  wrk -t1 -c16 -d1s -s "$WORK/$mode.lua" "http://127.0.0.1:$port/api/requisitions" -- "$RANDOM" >/dev/null 2>&1 # warm-up
  redis-cli -p "$RPORT" config resetstat >/dev/null
  if [ -n "$PERFDIR" ]; then
    perf record -q -F 999 -g -o "$PERFDIR/$name.$mode.$tag.service.data" -p "$spid" >/dev/null 2>&1 & pp1=$!
    perf record -q -F 999 -g -o "$PERFDIR/$name.$mode.$tag.redis.data" -p "$RPID" >/dev/null 2>&1 & pp2=$!
    sleep 0.3
  fi
  if [ "$tag" = strace ]; then
    strace -c -f -q -o "$WORK/strace.txt" -p "$spid" & stp=$!
    sleep 0.5
  fi
  s0=$(ticks "$spid"); r0=$(ticks "$RPID")
  /usr/bin/time -f "%U %S" -o "$WORK/wrk.time" \
    wrk -t1 -c16 -d"$DURATION" -s "$WORK/$mode.lua" "http://127.0.0.1:$port/api/requisitions" -- "$RANDOM$RANDOM" >"$WORK/wrk.out" 2>&1
  s1=$(ticks "$spid"); r1=$(ticks "$RPID")
  [ -z "$pp1" ] || { kill -INT "$pp1" "$pp2"; wait "$pp1" "$pp2" 2>/dev/null || true; }
  [ -z "$stp" ] || { kill -INT "$stp"; wait "$stp" 2>/dev/null || true; }
  REQS=$(awk '/requests in/{print $1}' "$WORK/wrk.out")
  RPS=$(awk '/^Requests\/sec:/{print $2}' "$WORK/wrk.out")
  read -r wu ws <"$WORK/wrk.time"
  CPU_S=$(awk -v t=$((s1 - s0)) -v n="$REQS" -v c="$CLK" 'BEGIN{printf "%.1f", t*1e6/c/n}')
  CPU_R=$(awk -v t=$((r1 - r0)) -v n="$REQS" -v c="$CLK" 'BEGIN{printf "%.1f", t*1e6/c/n}')
  CPU_W=$(awk -v u="$wu" -v s="$ws" -v n="$REQS" 'BEGIN{printf "%.1f", (u+s)*1e6/n}')
  if [ "$mode" = newkey ] && [ "$tag" != strace ]; then
    redis-cli -p "$RPORT" info commandstats | tr -d '\r' | grep '^cmdstat_' | grep -v 'cmdstat_\(info\|config\|flushall\|ping\)' |
      awk -F'[:,=]' -v n="$REQS" '{printf "%s=%.2f/req@%sus ", substr($1, 9), $3/n, $7}' >"$WORK/cmdstats.$name"
    echo >>"$WORK/cmdstats.$name"
    cat "$WORK/cmdstats.$name" >>"$WORK/cmdstats.all.$name"
  fi
  if [ "$tag" = strace ]; then
    awk -v n="$REQS" -v m="$mode" '$1 ~ /^[0-9.]+$/ && $NF != "total" {
      printf "%s %s %.2f\n", m, $NF, $4/n }' "$WORK/strace.txt" |
      sort -k3 -gr | head -8 >>"$WORK/strace.$name"
  fi
  kill "$spid"; wait "$spid" 2>/dev/null || true
}

echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
# Rounds alternate the services and the order of the modes, so that a
# machine whose speed drifts treats them alike.
for r in $(seq 1 "$ROUNDS"); do
  for i in "${!NAMES[@]}"; do
    name=${NAMES[$i]}; bin=${BINS[$i]}
    order="base newkey"; [ $(((r + i) % 2)) -eq 0 ] && order="newkey base"
    for mode in $order; do
      run "$name" "$bin" "$mode" "r$r"
      echo "  $name round $r $mode: $RPS req/s, CPU us/req service $CPU_S redis $CPU_R wrk $CPU_W (load $(cut -d' ' -f1 /proc/loadavg))" >&2
      echo "$CPU_S $CPU_R $CPU_W $RPS" >>"$WORK/cpu.$name.$mode"
    done
  done
done
ROWS=()
for name in "${NAMES[@]}"; do
  col() { median $(awk -v c="$2" '{print $c}' "$WORK/cpu.$name.$1"); }
  ROWS+=("$(awk -v n="$name" -v a="$(col base 1)" -v b="$(col base 2)" -v c="$(col base 3)" \
    -v d="$(col newkey 1)" -v e="$(col newkey 2)" -v f="$(col newkey 3)" 'BEGIN{
    printf "%-16s %8.1f %8.1f %8.1f %8.1f | %8.1f %8.1f %8.1f %8.1f | %8.1f %8.1f %8.1f %8.1f", n, a, b, c, a+b+c, d, e, f, d+e+f, d-a, e-b, f-c, (d+e+f)-(a+b+c) }')")
done
if [ -n "$STRACE" ]; then
  for i in "${!NAMES[@]}"; do
    for mode in base newkey; do run "${NAMES[$i]}" "${BINS[$i]}" "$mode" strace; done
  done
fi

echo
echo "CPU microseconds per request, median of $ROUNDS rounds (wrk -t1 -c16 -d$DURATION); load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-16s %8s %8s %8s %8s | %8s %8s %8s %8s | %8s %8s %8s %8s\n' "" base base base base newkey newkey newkey newkey added added added added
printf '%-16s %8s %8s %8s %8s | %8s %8s %8s %8s | %8s %8s %8s %8s\n' service service redis wrk total service redis wrk total service redis wrk total
for row in "${ROWS[@]}"; do echo "$row"; done
echo
echo "Requests per second, medians of the same rounds (interleaved); us+ = 1e6/newkey - 1e6/base, as in bench.sh:"
printf '%-16s %10s %10s %8s\n' service "base r/s" "newkey r/s" "us+new"
for name in "${NAMES[@]}"; do
  b=$(median $(awk '{print $4}' "$WORK/cpu.$name.base")); n=$(median $(awk '{print $4}' "$WORK/cpu.$name.newkey"))
  awk -v s="$name" -v b="$b" -v n="$n" 'BEGIN{printf "%-16s %10.0f %10.0f %8.1f\n", s, b, n, (b>0&&n>0)?1e6/n-1e6/b:0}'
done
for name in "${NAMES[@]}"; do
  echo
  echo "$name: Redis commandstats per new key, each round (command=calls/req@usec_per_call):"
  sed 's/^/  /' "$WORK/cmdstats.all.$name" 2>/dev/null || true
  if [ -n "$STRACE" ]; then
    echo "$name: system calls per request (strace -c -f, a run of its own):"
    sed 's/^/  /' "$WORK/strace.$name"
  fi
done
