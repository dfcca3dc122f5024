package pgstore_test

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/gin-gonic/gin"
	"github.com/google/uuid"

	"github.com/ginidem/idempotency/internal/idemtest"
	"github.com/ginidem/idempotency/internal/pgtest"
	"github.com/ginidem/idempotency/pgstore"
)

// BenchmarkPostgres serves the order handler, which inserts one row, through
// a Gin engine: without the middleware ("bare", a single INSERT), then with
// it on a Postgres store of the same database, for new keys (the insert
// and the record commit in one transaction) and for replays (from the local
// cache, and from Postgres). Each case after "bare" reports its throughput
// as a ratio to bare's in the same run ("x-bare"; 1.00 is no cost).
func BenchmarkPostgres(b *testing.B) {
	db := pgtest.NewDB(b)
	db.Exec(b, ordersSchema)
	var runs atomic.Int32
	bare := gin.New()
	bare.POST("/orders", orderHandler(db.Pool, &runs, nil))
	cached := newEngine(db, newStore(b, db), &runs, nil)
	uncached := newEngine(db, pgstore.New(db.Pool, pgstore.WithLocalCache(0, 0)), &runs, nil)

	var bareNs float64
	serveAll := func(b *testing.B, h http.Handler, keys []string) {
		b.ReportAllocs()
		b.ResetTimer()
		for i := range b.N {
			r := httptest.NewRequest(http.MethodPost, "/orders", strings.NewReader(`{"item":"book"}`))
			r.Header.Set("Authorization", defaultAuth)
			if keys != nil {
				r.Header.Set("Idempotency-Key", keys[i%len(keys)])
			}
			w := httptest.NewRecorder()
			h.ServeHTTP(w, r)
			if w.Code != http.StatusCreated {
				b.Fatalf("status %d: %s", w.Code, w.Body)
			}
		}
		b.StopTimer()
		ns := float64(b.Elapsed().Nanoseconds()) / float64(b.N)
		if keys == nil {
			bareNs = ns
		} else if bareNs > 0 {
			b.ReportMetric(bareNs/ns, "x-bare")
		}
	}
	newKeys := func(n int) []string {
		keys := make([]string, n)
		for i := range keys {
			keys[i] = uuid.NewString()
		}
		return keys
	}

	b.Run("bare", func(b *testing.B) { serveAll(b, bare, nil) })
	b.Run("newkey", func(b *testing.B) { serveAll(b, cached, newKeys(b.N)) })
	b.Run("replay", func(b *testing.B) { serveAll(b, cached, []string{uuid.NewString()}) })
	b.Run("replay-uncached", func(b *testing.B) { serveAll(b, uncached, []string{uuid.NewString()}) })
}

// BenchmarkRunnerPostgres measures Runner.Do on a Postgres store, as
// BenchmarkRunnerMemory and BenchmarkRunnerRedis do on theirs (the root
// module's bench_runner_test.go; bench/functions.sh prints them together):
// a function that does nothing, under a new key each call and under one key
// replayed, from the local cache and from Postgres. ns/op is the cost Do
// adds to a call; cpu-ns/op this process's CPU time per call (the
// Postgres server's is not counted); trips/op the statements sent per call,
// each a round trip. The function never uses its transaction, which then
// never opens: a new key is the acquisition and the completion.
func BenchmarkRunnerPostgres(b *testing.B) {
	for _, c := range []struct {
		name string
		opts []pgstore.Option
	}{
		{"local-cache", nil},
		{"no-cache", []pgstore.Option{pgstore.WithLocalCache(0, 0)}},
	} {
		b.Run(c.name, func(b *testing.B) {
			var counter statementCounter
			db := pgtest.NewDB(b, traced(&counter))
			idemtest.BenchRunner(b, newStore(b, db, c.opts...), counter.n.Load)
		})
	}
}
