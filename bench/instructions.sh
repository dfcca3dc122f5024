#!/usr/bin/env bash
# instructions.sh - user-space instructions per new key, counted by
# valgrind's callgrind, of redis-server and of a service: a measure that
# does not depend on how busy the machine is.
#
# Usage: bench/instructions.sh [-n N] SERVICE...
#   SERVICE  [NAME=]PATH: a directory holding a main package (built with go
#            build) or an executable serving the requisition contract of
#            ../shared/peers/bench.sh (flags -addr -redis -idempotency).
#   -n N     requests of the short run (default 200); the long run sends 3N
#
# For each service, and each of: Redis under callgrind with the service
# sending new keys; the service under callgrind sending new keys; the
# service under callgrind without the middleware (-idempotency=false), it
# sends N and then 3N sequential requests over one keep-alive connection,
# and divides the difference of the totals by 2N, so that start-up and
# shutdown cancel out. The service's figure is the new key's minus the
# base request's, without the Go scheduler's and timers' functions, whose
# counts under valgrind follow timing rather than work.
#
# Needs valgrind, redis-server, redis-cli, curl and python3. Go services
# run with GODEBUG=asyncpreemptoff=1,cpu.rdtscp=off, without which
# callgrind stops on Go's preemption signals or on RDTSCP.
set -euo pipefail

N=200
SERVICES=()
while [ $# -gt 0 ]; do
  case "$1" in
    -n) N=$2; shift 2 ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    -*) echo "unknown option $1" >&2; exit 2 ;;
    *) SERVICES+=("$1"); shift ;;
  esac
done
[ ${#SERVICES[@]} -gt 0 ] || { echo "usage: $0 [-n N] SERVICE..." >&2; exit 2; }
for tool in valgrind callgrind_annotate callgrind_control redis-server redis-cli curl python3; do
  command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 2; }
done

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

freeport() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_http() {
  for _ in $(seq 300); do
    curl -s -o /dev/null -H 'Authorization: Bearer dave' "http://127.0.0.1:$1/api/requisitions" && return 0
    sleep 0.2
  done
  echo "service on port $1 did not start" >&2; return 1
}
wait_redis() { for _ in $(seq 100); do redis-cli -p "$1" ping >/dev/null 2>&1 && return 0; sleep 0.2; done; return 1; }

# send PORT N MODE: N sequential POSTs, a new key each (newkey) or none (base)
send() {
  python3 - "$1" "$2" "$3" <<'EOF'
import http.client, sys, uuid
port, n, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
c = http.client.HTTPConnection('127.0.0.1', port)
for _ in range(n):
    h = {'Content-Type': 'application/json', 'Authorization': 'Bearer alice'}
    if mode == 'newkey':
        h['Idempotency-Key'] = str(uuid.uuid4())
    c.request('POST', '/api/requisitions', body='{"program":"p1","facility":"f1"}', headers=h)
    r = c.getresponse(); r.read()
    if r.status != 201:
        sys.exit('status %d' % r.status)
EOF
}

# self_counts FILE: "instructions<TAB>function" per function, exclusive
self_counts() {
  callgrind_annotate --auto=no --inclusive=no --threshold=100 "$1" 2>/dev/null |
    awk '$1 ~ /^[0-9,]+$/ && $2 != "(100.0%)" { v = $1; gsub(/,/, "", v); f = $0
      sub(/^ *[0-9,]+ +\([0-9. %]+\) +/, "", f); sub(/ \[.*$/, "", f); sub(/^[^:]*:/, "", f); print v "\t" f }'
}

# run WHO BIN MODE N OUT: one run; WHO is redis or service (what callgrind watches)
run() {
  local who=$1 bin=$2 mode=$3 n=$4 out=$5 rport sport rpid spid on=true
  [ "$mode" = base ] && on=false
  rport=$(freeport); sport=$(freeport)
  if [ "$who" = redis ]; then
    valgrind --tool=callgrind --callgrind-out-file="$out" redis-server --port "$rport" --save '' --appendonly no >/dev/null 2>&1 &
  else
    redis-server --port "$rport" --save '' --appendonly no >/dev/null 2>&1 &
  fi
  rpid=$!; PIDS+=("$rpid"); wait_redis "$rport"
  if [ "$who" = service ]; then
    GODEBUG=asyncpreemptoff=1,cpu.rdtscp=off valgrind --tool=callgrind --callgrind-out-file="$out" \
      "$bin" -addr "127.0.0.1:$sport" -redis "redis://127.0.0.1:$rport/0" -idempotency=$on >/dev/null 2>&1 &
  else
    "$bin" -addr "127.0.0.1:$sport" -redis "redis://127.0.0.1:$rport/0" -idempotency=$on >/dev/null 2>&1 &
  fi
  spid=$!; PIDS+=("$spid"); wait_http "$sport"
  send "$sport" "$n" "$mode"
  if [ "$who" = service ]; then
    callgrind_control -d "$spid" >/dev/null 2>&1; sleep 1 # the dump: a killed process writes none
    mv "$out".1 "$out" 2>/dev/null || true
    kill -9 "$spid"; wait "$spid" 2>/dev/null || true
    kill "$rpid"; wait "$rpid" 2>/dev/null || true
  else
    kill "$spid"; wait "$spid" 2>/dev/null || true
    redis-cli -p "$rport" shutdown nosave >/dev/null 2>&1 || true; wait "$rpid" 2>/dev/null || true
  fi
  self_counts "$out" >"$out.self"
}

# per_request SHORT LONG [scheduler]: instructions per request between the two runs
per_request() {
  python3 - "$@" <<'EOF'
import collections, sys
def load(fn):
    d = collections.Counter()
    for line in open(fn):
        v, f = line.rstrip('\n').split('\t', 1)
        d[f] += int(v)
    return d
SCHED = ('sched', 'findRunnable', 'netpoll', 'park', 'mcall', 'futex', 'spin', 'runqgrab', 'stealWork',
         'osyield', 'procyield', 'usleep', 'lock2', 'unlock2', 'goready', 'ready', 'wakep', 'notesleep',
         'notewakeup', 'mPark', 'stopm', 'startm', 'execute', 'gogo', 'casgstatus', 'checkTimers', 'runqget',
         'runqput', 'globrunq', 'pidle', 'nanotime', 'gosched', 'exitsyscall', 'entersyscall',
         'reentersyscall', 'sysmon', 'retake', 'timer', 'Timer', 'semasleep', 'semawakeup', 'handoff',
         'acquirep', 'releasep')
a, b, n = load(sys.argv[1]), load(sys.argv[2]), 2 * int(sys.argv[3])
skip = len(sys.argv) > 4
total = 0
for f in set(a) | set(b):
    if skip and f.startswith('runtime.') and any(s in f for s in SCHED):
        continue
    total += b[f] - a[f]
print(round(total / n))
EOF
}

printf '%-16s %14s %14s\n' service "Redis/new key" "service/new key"
for s in "${SERVICES[@]}"; do
  name=$(basename "$s")
  case "$s" in *=*) name=${s%%=*}; s=${s#*=} ;; esac
  if [ -d "$s" ]; then
    (cd "$s" && go build -o "$WORK/$name.bin" .)
    bin="$WORK/$name.bin"
  else
    bin="$(cd "$(dirname "$s")" && pwd)/$(basename "$s")"
  fi
  for m in 1 3; do
    run redis "$bin" newkey $((m * N)) "$WORK/$name.redis.$m"
    run service "$bin" newkey $((m * N)) "$WORK/$name.newkey.$m"
    run service "$bin" base $((m * N)) "$WORK/$name.base.$m"
  done
  r=$(per_request "$WORK/$name.redis.1.self" "$WORK/$name.redis.3.self" "$N")
  k=$(per_request "$WORK/$name.newkey.1.self" "$WORK/$name.newkey.3.self" "$N" noscheduler)
  b=$(per_request "$WORK/$name.base.1.self" "$WORK/$name.base.3.self" "$N" noscheduler)
  printf '%-16s %14s %14s\n' "$name" "$r" "$((k - b))"
done
