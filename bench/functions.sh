#!/usr/bin/env bash
# functions.sh - what idempotency.Runner.Do adds to a function that does
# nothing, on each store: microseconds per call for a new key and for a
# replay, allocations, and store round trips per call.
#
# Usage: bench/functions.sh            # 5 counts of each benchmark, 1 s each
#        COUNT=10 BENCHTIME=2s bench/functions.sh
#        STORES="memory redis" bench/functions.sh   # some of memory, redis, postgres
#
# It runs the benchmarks with -benchmem, -count COUNT:
#   BenchmarkRunnerMemory, BenchmarkRunnerRedis   (bench_runner_test.go)
#   BenchmarkRunnerPostgres                       (pgstore/bench_test.go)
# Redis is a redis-server of the benchmark's own (single node; skipped
# without redis-server), Postgres a throwaway server made with initdb and
# pg_ctl (skipped without them; see DEVELOPERS.md), or IDEM_POSTGRES_URL.
# Each row is the median of the counts. Columns:
#   µs/call  wall time per Do (ns/op): what a caller waits
#   cpu µs   this process's CPU time per Do (user + system, every goroutine);
#            it moves less than µs/call when other work shares the machine.
#            The Redis and Postgres servers' CPU is not in it.
#   allocs   heap allocations per Do (allocs/op)
#   trips    store round trips per Do, counted on the client: Redis commands
#            sent alone plus pipelines (a go-redis hook), Postgres statements
#            (a pgx tracer)
# "local cache" and "no cache" are the stores' own local cache of completed
# records, on (the default) and off: a replay from the cache makes no round
# trip. The function's result is 2 bytes; it never uses its transaction, so
# on Postgres none opens.
set -euo pipefail
cd "$(dirname "$0")/.."

COUNT=${COUNT:-5}
BENCHTIME=${BENCHTIME:-1s}
STORES=${STORES:-memory redis postgres}

out=$(mktemp "${TMPDIR:-/tmp}/functions.XXXXXX")
trap 'rm -f "$out"' EXIT

pattern=""
for s in $STORES; do
  case "$s" in
    memory) pattern="${pattern:+$pattern|}Memory" ;;
    redis) pattern="${pattern:+$pattern|}Redis" ;;
    postgres) ;;
    *) echo "unknown store $s (memory, redis, postgres)" >&2; exit 2 ;;
  esac
done
if [ -n "$pattern" ]; then
  echo "== go test -bench '^BenchmarkRunner($pattern)\$' -benchmem -count $COUNT -benchtime $BENCHTIME" >&2
  go test -run '^$' -bench "^BenchmarkRunner($pattern)\$" -benchmem -count "$COUNT" -benchtime "$BENCHTIME" . | tee -a "$out" >&2
fi
case " $STORES " in
  *" postgres "*)
    echo "== (pgstore) go test -bench '^BenchmarkRunnerPostgres\$' -benchmem -count $COUNT -benchtime $BENCHTIME" >&2
    (cd pgstore && go test -run '^$' -bench '^BenchmarkRunnerPostgres$' -benchmem -count "$COUNT" -benchtime "$BENCHTIME" .) | tee -a "$out" >&2
    ;;
esac

python3 - "$out" "$COUNT" <<'EOF'
import re, statistics, sys
path, count = sys.argv[1], sys.argv[2]
runs = {}
cpu = ""
for line in open(path):
    if line.startswith("cpu:"):
        cpu = line.split(":", 1)[1].strip()
    m = re.match(r"BenchmarkRunner(\w+)/(\S+?)(?:-\d+)?\s+\d+\s+(.*)", line)
    if not m:
        continue
    store, case, metrics = m.groups()
    parts = case.split("/")
    mode, variant = parts[-1], "/".join(parts[:-1])
    values = {unit: float(v) for v, unit in re.findall(r"([\d.]+) (\S+)", metrics)}
    runs.setdefault((store, variant), {}).setdefault(mode, []).append(values)

def med(samples, unit):
    xs = [s[unit] for s in samples if unit in s]
    return statistics.median(xs) if xs else None

def fmt(v, scale=1.0, digits=1):
    return "-" if v is None else f"{v / scale:.{digits}f}"

names = {"local-cache": "local cache", "no-cache": "no cache"}
rows = []
for (store, variant), modes in runs.items():
    name = store.lower() + (" (" + names.get(variant, variant) + ")" if variant else "")
    new, rep = modes.get("new-key", []), modes.get("replay", [])
    rows.append([
        name,
        fmt(med(new, "ns/op"), 1e3), fmt(med(new, "cpu-ns/op"), 1e3),
        fmt(med(rep, "ns/op"), 1e3), fmt(med(rep, "cpu-ns/op"), 1e3),
        fmt(med(new, "allocs/op"), digits=0) + " / " + fmt(med(rep, "allocs/op"), digits=0),
        (fmt(med(new, "trips/op"), digits=2) + " / " + fmt(med(rep, "trips/op"), digits=2)) if med(new, "trips/op") is not None else "0 / 0",
    ])
head = ["store", "new key µs/call", "cpu µs", "replay µs/call", "cpu µs", "allocs new / replay", "trips new / replay"]
widths = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
print(f"Runner.Do on a function that does nothing: median of {count} counts" + (f" ({cpu})" if cpu else ""))
print("  ".join(h.ljust(w) for h, w in zip(head, widths)))
for r in rows:
    print("  ".join(c.ljust(w) for c, w in zip(r, widths)))
EOF
