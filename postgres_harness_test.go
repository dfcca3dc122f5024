package idempotency_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	idem "github.com/ginidem/idempotency"
	"github.com/ginidem/idempotency/internal/pgtest"
	"github.com/ginidem/idempotency/pgstore"
)

// postgresHarnesses returns the Postgres stores for the shared suites, on
// the test binary's throwaway Postgres (see internal/pgtest; the tests skip
// when there is none): pgstore with its local cache, as users run it, and
// without it, so that every replay reads the row. Each test gets a fresh
// schema, and a clock that moves the database's time (pgstore.WithClock).
// Both are TxStores: keyed requests run in a transaction.
func postgresHarnesses() []storeHarness {
	build := func(opts ...pgstore.Option) func(t *testing.T) (idem.Store, func(time.Duration)) {
		return func(t *testing.T) (idem.Store, func(time.Duration)) {
			// Each keyed request holds a connection for its transaction,
			// more than the default pool allows on a small machine.
			db := pgtest.NewDB(t, pgtest.MaxConns(32))
			clock := newFakeClock()
			store := pgstore.New(db.Pool, append([]pgstore.Option{pgstore.WithClock(clock.Now)}, opts...)...)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			require.NoError(t, store.Migrate(ctx))
			return store, clock.Advance
		}
	}
	return []storeHarness{
		{name: "postgres", tx: true, new: build()},
		{name: "postgres-nocache", tx: true, new: build(pgstore.WithLocalCache(0, 0))},
	}
}
