package idempotency_test

import (
	"testing"

	"github.com/redis/go-redis/v9"

	idem "github.com/ginidem/idempotency"
	"github.com/ginidem/idempotency/internal/idemtest"
)

func BenchmarkRunnerMemory(b *testing.B) {
	idemtest.BenchRunner(b, idem.NewMemoryStore(idem.WithMaxEntries(1<<22)), nil)
}

// BenchmarkRunnerRedis is idemtest.BenchRunner on a single-node redis-server of its
// own (skipped without redis-server), its round trips counted on the
// client: with the store's local cache, as users run it, a replay makes
// none; without it, two (a SET NX that finds the key taken, then the
// script that reads it).
func BenchmarkRunnerRedis(b *testing.B) {
	b.Run("local-cache", func(b *testing.B) {
		store, trips := runnerRedisStore(b)
		idemtest.BenchRunner(b, store, trips)
	})
	b.Run("no-cache", func(b *testing.B) {
		store, trips := runnerRedisStore(b, idem.WithRedisLocalCache(0, 0))
		idemtest.BenchRunner(b, store, trips)
	})
}

// runnerRedisStore is a RedisStore on a redis-server of the benchmark's
// own, and a function that returns the round trips its client has made so
// far (commandCounter, redis_commands_test.go: one per command sent alone,
// one per pipeline).
func runnerRedisStore(b *testing.B, opts ...idem.RedisStoreOption) (idem.Store, func() int64) {
	srv := startRedisServer(b)
	client := redis.NewClient(&redis.Options{Addr: srv.addr, ContextTimeoutEnabled: true})
	b.Cleanup(func() { client.Close() })
	counter := countCommands(client)
	return idem.NewRedisStore(client, opts...), func() int64 {
		counter.mu.Lock()
		defer counter.mu.Unlock()
		return int64(counter.trips)
	}
}
