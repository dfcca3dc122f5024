package pgstore_test

// What the tests share: clocks, a migrated store, a context with a
// deadline. The shared suites, the store-level conformance table among
// them, run on pgstore from the tests module (tests/suites_test.go).

import (
	"context"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	idem "github.com/ginidem/idempotency"
	"github.com/ginidem/idempotency/internal/idemtest"
	"github.com/ginidem/idempotency/internal/pgtest"
	"github.com/ginidem/idempotency/pgstore"
)

// fakeClock is a manually advanced clock.
type fakeClock = idemtest.FakeClock

func newFakeClock() *fakeClock { return idemtest.NewFakeClock() }

// shiftedClock is the real clock moved forward by Advance: for a store that
// shares a table with a process on the real clock (the crash tests).
type shiftedClock struct{ shift atomic.Int64 }

func (c *shiftedClock) Now() time.Time          { return time.Now().Add(time.Duration(c.shift.Load())) }
func (c *shiftedClock) Advance(d time.Duration) { c.shift.Add(int64(d)) }

// newStore returns a migrated store on db.
func newStore(t testing.TB, db *pgtest.DB, opts ...pgstore.Option) *pgstore.Store {
	t.Helper()
	s := pgstore.New(db.Pool, opts...)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	require.NoError(t, s.Migrate(ctx))
	return s
}

// storeCtx is a context with a deadline, as the middleware gives every
// store call.
func storeCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// testClaim is the first request of a key in the store-level tests.
var testClaim = &idem.Record{Fingerprint: []byte("fp-1"), Method: http.MethodPost, Path: "/things"}
