package idempotency_test

import (
	"context"
	"strconv"
	"testing"

	idem "github.com/ginidem/idempotency"
)

// benchRunner measures Runner.Do on store: a new key each call, or one key
// replayed. The function itself does nothing, so ns/op is the cost the
// Runner adds to a call.
func benchRunner(b *testing.B, store idem.Store) {
	runner := idem.NewRunner(idem.WithStore(store))
	noop := func(context.Context, idem.Tx) ([]byte, error) { return []byte("ok"), nil }
	ctx := context.Background()
	b.Run("new-key", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			if _, err := runner.Do(ctx, idem.Call{Key: "bench-" + strconv.Itoa(i), Payload: []byte("p")}, noop); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("replay", func(b *testing.B) {
		call := idem.Call{Key: "bench-replay", Payload: []byte("p")}
		if _, err := runner.Do(ctx, call, noop); err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		for b.Loop() {
			if _, err := runner.Do(ctx, call, noop); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func BenchmarkRunnerMemory(b *testing.B) { benchRunner(b, idem.NewMemoryStore()) }

func BenchmarkRunnerRedis(b *testing.B) { benchRunner(b, redisBenchStore(b)) }
