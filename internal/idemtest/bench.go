package idemtest

import (
	"context"
	"strconv"
	"testing"

	idem "github.com/ginidem/idempotency"
)

// BenchRunner measures Runner.Do on store: a new key each call
// ("new-key"), or one key replayed ("replay"). The function itself does
// nothing, so ns/op is the cost the Runner adds to a call
// (bench/functions.sh prints them as a table). Each case also reports
// cpu-ns/op, this process's CPU time per call, which moves less than ns/op
// when other work shares the machine; and, when trips is not nil (it
// returns the store round trips so far), the round trips per call as
// trips/op.
func BenchRunner(b *testing.B, store idem.Store, trips func() int64) {
	runner := idem.NewRunner(idem.WithStore(store))
	noop := func(context.Context, idem.Tx) ([]byte, error) { return []byte("ok"), nil }
	ctx := context.Background()
	measure := func(b *testing.B, loop func()) {
		b.ReportAllocs()
		var before int64
		if trips != nil {
			before = trips()
		}
		cpu := CPUTime()
		b.ResetTimer()
		loop()
		b.StopTimer()
		b.ReportMetric(float64(CPUTime()-cpu)/float64(b.N), "cpu-ns/op")
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
