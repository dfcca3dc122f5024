package idempotency_test

import (
	"context"
	"strconv"
	"testing"

	"github.com/redis/go-redis/v9"

	idem "github.com/ginidem/idempotency"
)

// benchRunner measures Runner.Do on store: a new key each call, or one key
// replayed. The function itself does nothing, so ns/op is the cost the
// Runner adds to a call (bench/functions.sh prints them as a table). Each
// case also reports cpu-ns/op, this process's CPU time per call, which
// moves less than ns/op when other work shares the machine; and, when
// trips is not nil (it returns the store round trips so far), the store
// round trips per call as trips/op.
func benchRunner(b *testing.B, store idem.Store, trips func() int) {
	runner := idem.NewRunner(idem.WithStore(store))
	noop := func(context.Context, idem.Tx) ([]byte, error) { return []byte("ok"), nil }
	ctx := context.Background()
	measure := func(b *testing.B, loop func()) {
		b.ReportAllocs()
		var before int
		if trips != nil {
			before = trips()
		}
		cpu := cpuTime()
		b.ResetTimer()
		loop()
		b.StopTimer()
		b.ReportMetric(float64(cpuTime()-cpu)/float64(b.N), "cpu-ns/op")
		if trips != nil {
			b.ReportMetric(float64(trips()-before)/float64(b.N), "trips/op")
		}
	}
	next := 0 // the benchmark runs its function again with a larger b.N: keys stay new
	b.Run("new-key", func(b *testing.B) {
		keys := make([]string, b.N) // made before the timer starts
		for i := range keys {
			keys[i] = "bench-" + strconv.Itoa(next+i)
		}
		next += b.N
		measure(b, func() {
			for i := range b.N {
				if _, err := runner.Do(ctx, idem.Call{Key: keys[i], Payload: []byte("p")}, noop); err != nil {
					b.Fatal(err)
				}
			}
		})
	})
	b.Run("replay", func(b *testing.B) {
		call := idem.Call{Key: "bench-replay", Payload: []byte("p")}
		if _, err := runner.Do(ctx, call, noop); err != nil {
			b.Fatal(err)
		}
		measure(b, func() {
			for range b.N {
				res, err := runner.Do(ctx, call, noop)
				if err != nil || !res.Replayed {
					b.Fatalf("not a replay: %v", err)
				}
			}
		})
	})
}

func BenchmarkRunnerMemory(b *testing.B) {
	benchRunner(b, idem.NewMemoryStore(idem.WithMaxEntries(1<<22)), nil)
}

// BenchmarkRunnerRedis is benchRunner on a single-node redis-server of its
// own (skipped without redis-server), its round trips counted on the
// client: with the store's local cache, as users run it, a replay makes
// none; without it, one.
func BenchmarkRunnerRedis(b *testing.B) {
	b.Run("local-cache", func(b *testing.B) {
		store, trips := runnerRedisStore(b)
		benchRunner(b, store, trips)
	})
	b.Run("no-cache", func(b *testing.B) {
		store, trips := runnerRedisStore(b, idem.WithRedisLocalCache(0, 0))
		benchRunner(b, store, trips)
	})
}

// runnerRedisStore is a RedisStore on a redis-server of the benchmark's
// own, and a function that returns the round trips its client has made so
// far (commandCounter, redis_commands_test.go: one per command sent alone,
// one per pipeline).
func runnerRedisStore(b *testing.B, opts ...idem.RedisStoreOption) (idem.Store, func() int) {
	srv := startRedisServer(b)
	client := redis.NewClient(&redis.Options{Addr: srv.addr, ContextTimeoutEnabled: true})
	b.Cleanup(func() { client.Close() })
	counter := countCommands(client)
	return idem.NewRedisStore(client, opts...), func() int {
		counter.mu.Lock()
		defer counter.mu.Unlock()
		return counter.trips
	}
}
