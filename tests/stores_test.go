package tests

import (
	"context"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	idem "github.com/ginidem/idempotency"
	"github.com/ginidem/idempotency/internal/idemtest"
	"github.com/ginidem/idempotency/internal/pgtest"
	"github.com/ginidem/idempotency/internal/redistest"
	"github.com/ginidem/idempotency/internal/suite"
	"github.com/ginidem/idempotency/pgstore"
)

func TestMain(m *testing.M) {
	gin.SetMode(gin.TestMode)
	code := m.Run()
	pgtest.StopShared() // the throwaway Postgres, if a test started it
	os.Exit(code)
}

// postgresHarnesses returns the Postgres stores for the shared suites, on
// the test binary's throwaway Postgres (see internal/pgtest; the tests skip
// when there is none, and fail under IDEM_REQUIRE_POSTGRES): pgstore with
// its local cache, as users run it, and without it, so that every replay
// reads the row. Each test gets a fresh schema, and a clock that moves the
// database's time (pgstore.WithClock). Both are TxStores: keyed requests
// run in a transaction.
func postgresHarnesses() []suite.Harness {
	build := func(opts ...pgstore.Option) func(t *testing.T) (idem.Store, func(time.Duration)) {
		return func(t *testing.T) (idem.Store, func(time.Duration)) {
			// Each keyed request holds a connection for its transaction,
			// more than the default pool allows on a small machine.
			db := pgtest.NewDB(t, pgtest.MaxConns(32))
			clock := idemtest.NewFakeClock()
			store := pgstore.New(db.Pool, append([]pgstore.Option{pgstore.WithClock(clock.Now)}, opts...)...)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			require.NoError(t, store.Migrate(ctx))
			warmUp(ctx, t, db.Pool, 24)
			return store, clock.Advance
		}
	}
	return []suite.Harness{
		{Name: "postgres", Tx: true, New: build()},
		{Name: "postgres-nocache", Tx: true, New: build(pgstore.WithLocalCache(0, 0))},
	}
}

// warmUp opens n connections of pool before a test, as a service's pool
// has them open after its first requests: the suites measure the
// middleware, not how long a loaded machine takes to start 20 backends at
// once, which can pass the 1 s store timeout under the race detector.
func warmUp(ctx context.Context, t *testing.T, pool *pgxpool.Pool, n int) {
	conns := make([]*pgxpool.Conn, 0, n)
	for range n {
		conn, err := pool.Acquire(ctx)
		require.NoError(t, err)
		conns = append(conns, conn)
	}
	for _, conn := range conns {
		conn.Release()
	}
}

// redisHarnesses returns the Redis stores, built as the root module's
// tests build them for the shared suites (redisHarnesses in
// redis_store_test.go): a real redis-server (miniredis when the binary is
// missing) and, when IDEM_REDIS_CLUSTER is set, a Redis Cluster, each with
// the local cache on and its clock moving with Redis' keys.
func redisHarnesses() []suite.Harness {
	var hs []suite.Harness
	for _, target := range redistest.Targets(false) {
		hs = append(hs, suite.Harness{Name: target.Name, New: func(t *testing.T) (idem.Store, func(time.Duration)) {
			client, prefix, advance := target.Open(t)
			var offset atomic.Int64
			clock := func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }
			store := idem.NewRedisStore(client, idem.WithRedisKeyPrefix(prefix), idem.WithRedisClock(clock))
			return store, func(d time.Duration) {
				advance(d)
				offset.Add(int64(d))
			}
		}})
	}
	return hs
}

// forEachStore runs fn as a subtest on every store: memory, Redis (and
// Cluster), and Postgres. The tests here that run on every store are those
// that need a module the root module does not require (gin-contrib,
// Prometheus, pgstore itself).
func forEachStore(t *testing.T, fn func(t *testing.T, h suite.Harness)) {
	stores := append([]suite.Harness{suite.MemoryHarness()}, redisHarnesses()...)
	for _, h := range append(stores, postgresHarnesses()...) {
		t.Run(h.Name, func(t *testing.T) { fn(t, h) })
	}
}

// onPostgres runs a shared suite as a subtest on each Postgres store; the
// root module runs it on the others.
func onPostgres(t *testing.T, run func(*testing.T, suite.Harness)) {
	for _, h := range postgresHarnesses() {
		t.Run(h.Name, func(t *testing.T) { run(t, h) })
	}
}
