package pgstore_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	idem "github.com/ginidem/idempotency"
	"github.com/ginidem/idempotency/internal/pgtest"
	"github.com/ginidem/idempotency/pgstore"
)

// statementCounter is a pgx tracer that counts the statements a pool sends:
// each is one round trip.
type statementCounter struct{ n atomic.Int64 }

func (c *statementCounter) TraceQueryStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	c.n.Add(1)
	return ctx
}

func (c *statementCounter) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

// delta runs step and returns the statements sent meanwhile.
func (c *statementCounter) delta(step func()) int64 {
	before := c.n.Load()
	step()
	return c.n.Load() - before
}

func traced(counter *statementCounter) func(*pgxpool.Config) {
	return func(cfg *pgxpool.Config) { cfg.ConnConfig.Tracer = counter }
}

const lease, ttl = time.Minute, time.Hour

// completeKey acquires key and completes it with rec.
func completeKey(t *testing.T, s idem.Store, key string, rec *idem.Record) {
	t.Helper()
	ctx := storeCtx(t)
	token, held, err := s.Acquire(ctx, key, testClaim, lease)
	require.NoError(t, err)
	require.Nil(t, held)
	require.NoError(t, s.Complete(ctx, key, token, rec, ttl))
}

var completed = &idem.Record{State: idem.Completed, Fingerprint: testClaim.Fingerprint, Method: "POST", Path: "/things",
	Status: 201, Header: http.Header{"Location": {"/things/1"}}, Body: []byte(`{"id":1}`)}

// TestSpec10_OneRoundTripPerStep: acquiring a new key, reading a held one,
// completing, releasing and extending are one statement each; a replay of
// a record this process has seen is none.
func TestSpec10_OneRoundTripPerStep(t *testing.T) {
	var counter statementCounter
	db := pgtest.NewDB(t, traced(&counter))
	s := newStore(t, db)
	ctx := storeCtx(t)

	var token string
	assert.Equal(t, int64(1), counter.delta(func() {
		var err error
		token, _, err = s.Acquire(ctx, "k", testClaim, lease)
		require.NoError(t, err)
	}), "a new key")
	assert.Equal(t, int64(1), counter.delta(func() {
		_, held, err := s.Acquire(ctx, "k", testClaim, lease)
		require.NoError(t, err)
		require.NotNil(t, held)
	}), "an in-flight key")
	assert.Equal(t, int64(1), counter.delta(func() { require.NoError(t, s.Extend(ctx, "k", token, lease)) }), "extend")
	assert.Equal(t, int64(1), counter.delta(func() { require.NoError(t, s.Complete(ctx, "k", token, completed, ttl)) }), "complete")
	assert.Equal(t, int64(0), counter.delta(func() {
		_, held, err := s.Acquire(ctx, "k", testClaim, lease)
		require.NoError(t, err)
		require.NotNil(t, held)
		assert.Equal(t, completed.Body, held.Body)
	}), "a replay this process has seen: from the local cache")

	other := pgstore.New(db.Pool) // another process: its cache is empty
	assert.Equal(t, int64(1), counter.delta(func() {
		_, held, err := other.Acquire(ctx, "k", testClaim, lease)
		require.NoError(t, err)
		require.NotNil(t, held)
	}), "a replay another process wrote: one round trip")
	var xmax string
	require.NoError(t, db.Pool.QueryRow(ctx, "SELECT xmax::text FROM idempotency_records WHERE key = 'k'").Scan(&xmax))
	assert.Equal(t, "0", xmax, "a held key is read, not locked: the replay wrote nothing")
	assert.Equal(t, int64(0), counter.delta(func() {
		_, _, err := other.Acquire(ctx, "k", testClaim, lease)
		require.NoError(t, err)
	}), "then cached there too")

	token, _, err := s.Acquire(ctx, "k2", testClaim, lease)
	require.NoError(t, err)
	assert.Equal(t, int64(1), counter.delta(func() { require.NoError(t, s.Release(ctx, "k2", token)) }), "release")
	assert.Equal(t, int64(0), counter.delta(func() {
		assert.ErrorIs(t, s.Release(ctx, "k2", "not a token"), idem.ErrNotOwner)
	}), "a token the store never issued costs no round trip")
}

// TestSpec10_ConcurrentAcquiresOnManyKeys: many requests race on many keys,
// also over keys whose lease just ended: each key has exactly one winner,
// and no acquisition fails, including those whose statement saw the row
// change hands.
func TestSpec10_ConcurrentAcquiresOnManyKeys(t *testing.T) {
	clock := newFakeClock()
	s := newStore(t, pgtest.NewDB(t, func(cfg *pgxpool.Config) { cfg.MaxConns = 8 }), pgstore.WithClock(clock.Now))
	ctx := storeCtx(t)
	const keys, racers = 100, 8
	for round := range 2 { // the second round takes over expired leases
		var wins [keys]atomic.Int32
		var wg sync.WaitGroup
		for range racers {
			wg.Go(func() {
				for k := range keys {
					token, held, err := s.Acquire(ctx, fmt.Sprintf("key-%d", k), testClaim, lease)
					if !assert.NoError(t, err) {
						return
					}
					if token != "" {
						wins[k].Add(1)
					} else {
						assert.NotNil(t, held)
					}
				}
			})
		}
		wg.Wait()
		for k := range keys {
			assert.Equal(t, int32(1), wins[k].Load(), "round %d, key %d", round, k)
		}
		clock.Advance(lease + time.Second)
	}
}

// TestSpec25_CorruptRowsAreErrors: a row that is not a record this package
// wrote is an error wrapping ErrCorruptRecord for that request, never a
// panic or a huge allocation; the row is left alone.
func TestSpec25_CorruptRowsAreErrors(t *testing.T) {
	db := pgtest.NewDB(t)
	s := newStore(t, db, pgstore.WithMaxBodySize(1024))
	cases := []struct {
		name, set string
		args      []any
	}{
		{"unknown state", "state = 7", nil},
		{"unknown header format", "header = '\\x02'::bytea", nil},
		{"truncated header", "header = '\\x0101'::bytea", nil},
		{"header count beyond the bytes", "header = '\\x01ffffffff0f'::bytea", nil},
		{"header length beyond the bytes", "header = '\\x0101ff7f'::bytea", nil},
		{"header varint overflow", "header = '\\x01ffffffffffffffffffff01'::bytea", nil},
		{"invalid header name", "header = $2", []any{[]byte("\x01\x01\x03a b\x01\x01x")}},
		{"non-canonical header name", "header = $2", []any{[]byte("\x01\x01\x08location\x01\x01x")}},
		{"invalid header value", "header = $2", []any{[]byte("\x01\x01\x08Location\x01\x02\x00\n")}},
		{"trailing header bytes", "header = $2", []any{[]byte("\x01\x01\x08Location\x01\x01xjunk")}},
		{"too many headers", "header = $2", []any{manyHeaders(65)}},
		{"body over the maximum", "body = $2", []any{make([]byte, 4096)}},
		{"path over the maximum", "path = repeat('x', 3145728)", nil},
		{"header column over the maximum", "header = $2", []any{make([]byte, 3<<20)}},
		{"body on a record without body", "body = '\\x00'::bytea, body_omitted = true", nil},
		{"status out of range", "status = 1000", nil},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			key := fmt.Sprintf("k%d", i)
			completeKey(t, pgstore.New(db.Pool, pgstore.WithLocalCache(0, 0)), key, completed)
			db.Exec(t, "UPDATE idempotency_records SET "+tc.set+" WHERE key = $1", append([]any{key}, tc.args...)...)
			_, held, err := s.Acquire(storeCtx(t), key, testClaim, lease)
			assert.ErrorIs(t, err, pgstore.ErrCorruptRecord)
			assert.Nil(t, held)
			assert.Equal(t, 1, db.Count(t, fmt.Sprintf("idempotency_records WHERE key = '%s'", key)), "left alone")
		})
	}
}

// TestSpec27_RandomHeaderBytesNeverPanic: whatever bytes the header column
// holds, Acquire returns the record or an ErrCorruptRecord, never panics.
func TestSpec27_RandomHeaderBytesNeverPanic(t *testing.T) {
	db := pgtest.NewDB(t)
	s := newStore(t, db, pgstore.WithLocalCache(0, 0))
	ctx := storeCtx(t)
	completeKey(t, s, "k", completed)
	rng := rand.New(rand.NewPCG(1, 2))
	for range 300 {
		b := make([]byte, rng.IntN(40))
		for i := range b {
			b[i] = byte(rng.IntN(256))
		}
		if len(b) > 0 && rng.IntN(2) == 0 {
			b[0] = 1 // mostly the right version, to get past it
		}
		db.Exec(t, "UPDATE idempotency_records SET header = $1 WHERE key = 'k'", b)
		_, held, err := s.Acquire(ctx, "k", testClaim, lease)
		if err != nil {
			require.ErrorIs(t, err, pgstore.ErrCorruptRecord, "%x", b)
		} else {
			require.NotNil(t, held)
		}
	}
}

// manyHeaders encodes n header names in the header column's format.
func manyHeaders(n int) []byte {
	b := []byte{1, byte(n)}
	for i := range n {
		name := fmt.Sprintf("X-H%d", i)
		b = append(b, byte(len(name)))
		b = append(b, name...)
		b = append(b, 1, 1, 'v')
	}
	return b
}

// TestSpec15_RecordsBeyondTheBoundsKeepNoBody: a body over the store's
// maximum, or headers beyond the decoder's bounds, are kept as a record
// without body (duplicates get 409 with the Location), never refused.
func TestSpec15_RecordsBeyondTheBoundsKeepNoBody(t *testing.T) {
	db := pgtest.NewDB(t)
	s := newStore(t, db, pgstore.WithMaxBodySize(16), pgstore.WithLocalCache(0, 0))
	ctx := storeCtx(t)

	completeKey(t, s, "big", &idem.Record{State: idem.Completed, Status: 200,
		Header: http.Header{"Location": {"/big"}, "Content-Type": {"text/plain"}}, Body: []byte(strings.Repeat("x", 17))})
	_, held, err := s.Acquire(ctx, "big", testClaim, lease)
	require.NoError(t, err)
	require.NotNil(t, held)
	assert.True(t, held.BodyOmitted)
	assert.Empty(t, held.Body)
	assert.Equal(t, http.Header{"Location": {"/big"}, "Content-Type": {"text/plain"}}, held.Header)

	h := http.Header{"Location": {"/many"}}
	for i := range 70 {
		h.Set(fmt.Sprintf("X-H%d", i), "v")
	}
	completeKey(t, s, "many", &idem.Record{State: idem.Completed, Status: 201, Header: h, Body: []byte("ok")})
	_, held, err = s.Acquire(ctx, "many", testClaim, lease)
	require.NoError(t, err)
	require.NotNil(t, held)
	assert.True(t, held.BodyOmitted)
	assert.Equal(t, http.Header{"Location": {"/many"}}, held.Header)

	completeKey(t, s, "empty", &idem.Record{State: idem.Completed, Status: 204})
	_, held, err = s.Acquire(ctx, "empty", testClaim, lease)
	require.NoError(t, err)
	require.NotNil(t, held)
	assert.Equal(t, 204, held.Status)
	assert.Nil(t, held.Header)
	assert.Nil(t, held.Body)
	assert.False(t, held.BodyOmitted)
}

// TestSpec30_LocalCacheStaleness: the local cache answers a replay without a
// round trip, but never past its row's expiry, and never more than its
// maximum age (1 minute) after it read the row: a record deleted through
// another process stops being replayed here within that bound.
func TestSpec30_LocalCacheStaleness(t *testing.T) {
	var counter statementCounter
	db := pgtest.NewDB(t, traced(&counter))
	clock := newFakeClock()
	s := newStore(t, db, pgstore.WithClock(clock.Now))
	other := pgstore.New(db.Pool, pgstore.WithClock(clock.Now))
	ctx := storeCtx(t)

	completeKey(t, s, "k", completed)
	require.NoError(t, other.Delete(ctx, "k"))
	clock.Advance(59 * time.Second)
	assert.Equal(t, int64(0), counter.delta(func() {
		_, held, err := s.Acquire(ctx, "k", testClaim, lease)
		require.NoError(t, err)
		assert.NotNil(t, held, "within its maximum age, the cache still replays")
	}))
	clock.Advance(2 * time.Second)
	token, held, err := s.Acquire(ctx, "k", testClaim, lease)
	require.NoError(t, err)
	assert.Nil(t, held, "past it, the deleted record is gone here too")
	assert.NotEmpty(t, token)

	// A record that lives shorter than the cache's maximum age leaves the
	// cache with its row.
	token, _, err = s.Acquire(ctx, "short", testClaim, lease)
	require.NoError(t, err)
	require.NoError(t, s.Complete(ctx, "short", token, completed, 10*time.Second))
	clock.Advance(11 * time.Second)
	_, held, err = s.Acquire(ctx, "short", testClaim, lease)
	require.NoError(t, err)
	assert.Nil(t, held)

	// Delete drops the record from this process's cache at once.
	completeKey(t, s, "d", completed)
	require.NoError(t, s.Delete(ctx, "d"))
	_, held, err = s.Acquire(ctx, "d", testClaim, lease)
	require.NoError(t, err)
	assert.Nil(t, held)

	// A shorter maximum age.
	short := newStore(t, db, pgstore.WithClock(clock.Now), pgstore.WithLocalCacheMaxAge(time.Second))
	completeKey(t, short, "m", completed)
	clock.Advance(2 * time.Second)
	assert.Equal(t, int64(1), counter.delta(func() {
		_, held, err := short.Acquire(ctx, "m", testClaim, lease)
		require.NoError(t, err)
		assert.NotNil(t, held)
	}))
}

// TestSpec30_LocalCacheBounds: the cache keeps at most its entries and
// bytes; a record evicted from it is read from Postgres again.
func TestSpec30_LocalCacheBounds(t *testing.T) {
	var counter statementCounter
	db := pgtest.NewDB(t, traced(&counter))
	s := newStore(t, db, pgstore.WithLocalCache(2, 1<<20))
	ctx := storeCtx(t)
	for _, k := range []string{"a", "b", "c"} {
		completeKey(t, s, k, completed)
	}
	roundTrips := func(key string) int64 {
		return counter.delta(func() {
			_, held, err := s.Acquire(ctx, key, testClaim, lease)
			require.NoError(t, err)
			require.NotNil(t, held)
		})
	}
	assert.Equal(t, int64(0), roundTrips("c"))
	assert.Equal(t, int64(0), roundTrips("b"))
	assert.Equal(t, int64(1), roundTrips("a"), "the least recently used went first")

	big := newStore(t, db, pgstore.WithLocalCache(100, 1000)) // room for no 2 KiB record
	completeKey(t, big, "big", &idem.Record{State: idem.Completed, Status: 200, Body: make([]byte, 2048)})
	assert.Equal(t, int64(1), counter.delta(func() {
		_, held, err := big.Acquire(ctx, "big", testClaim, lease)
		require.NoError(t, err)
		require.NotNil(t, held)
	}))
}

// TestSpec19_Sweep: Sweep deletes expired rows, at most limit at a time,
// and never a live one.
func TestSpec19_Sweep(t *testing.T) {
	db := pgtest.NewDB(t)
	clock := newFakeClock()
	s := newStore(t, db, pgstore.WithClock(clock.Now))
	ctx := storeCtx(t)
	for i := range 5 {
		completeKey(t, s, fmt.Sprintf("old%d", i), completed) // ttl 1 h
	}
	_, _, err := s.Acquire(ctx, "lease", testClaim, lease) // in flight, 1 min
	require.NoError(t, err)
	clock.Advance(2 * time.Minute)
	_, _, err = s.Acquire(ctx, "live", testClaim, lease)
	require.NoError(t, err)

	n, err := s.Sweep(ctx, 0)
	require.NoError(t, err)
	assert.Equal(t, 0, n)
	n, err = s.Sweep(ctx, 10)
	require.NoError(t, err)
	assert.Equal(t, 1, n, "only the expired lease")

	clock.Advance(time.Hour)
	n, err = s.Sweep(ctx, 4)
	require.NoError(t, err)
	assert.Equal(t, 4, n, "at most the limit")
	n, err = s.Sweep(ctx, 4)
	require.NoError(t, err)
	assert.Equal(t, 2, n, "the last completed record and the expired lease of live")
	assert.Equal(t, 0, db.Count(t, "idempotency_records"))
}

// TestSpec29_MigrateIsIdempotent: Migrate creates the table and its expiry
// index once, may run again and concurrently (replicas starting together),
// and the table name is configurable.
func TestSpec29_MigrateIsIdempotent(t *testing.T) {
	db := pgtest.NewDB(t)
	ctx := storeCtx(t)
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() { assert.NoError(t, pgstore.New(db.Pool).Migrate(ctx)) })
	}
	wg.Wait()
	require.NoError(t, pgstore.New(db.Pool).Migrate(ctx), "again")
	var index string
	require.NoError(t, db.Pool.QueryRow(ctx,
		"SELECT indexdef FROM pg_indexes WHERE schemaname = $1 AND indexname = 'idempotency_records_expires_at_idx'", db.Schema).Scan(&index))
	assert.Contains(t, index, "(expires_at)")

	for _, table := range []string{"orders_idem", "select"} { // a reserved word is a name too
		s := newStore(t, db, pgstore.WithTable(table))
		completeKey(t, s, "k", completed)
		assert.Equal(t, 1, db.Count(t, `"`+table+`"`))
	}
}

// TestNewPanicsOnInvalidConfiguration: New panics, with a "pgstore:"
// prefix, on a nil pool or a table name that is not a plain identifier.
func TestNewPanicsOnInvalidConfiguration(t *testing.T) {
	db := pgtest.NewDB(t)
	assert.PanicsWithValue(t, "pgstore: New with a nil pool", func() { pgstore.New(nil) })
	for _, name := range []string{"", "Records", "1records", "idem records", `idem"; DROP TABLE x; --`, "public.records", strings.Repeat("a", 49)} {
		assert.Panics(t, func() { pgstore.New(db.Pool, pgstore.WithTable(name)) }, name)
		func() {
			defer func() { assert.True(t, strings.HasPrefix(fmt.Sprint(recover()), "pgstore: "), name) }()
			pgstore.New(db.Pool, pgstore.WithTable(name))
		}()
	}
	assert.NotPanics(t, func() { pgstore.New(db.Pool, pgstore.WithTable(strings.Repeat("a", 48))) })
}

// TestSpec23_CompletionRetryIsIdempotent: a completion retried after its
// reply was lost finds its own record and succeeds; another record under
// the same token is still refused.
func TestSpec23_CompletionRetryIsIdempotent(t *testing.T) {
	db := pgtest.NewDB(t)
	s := pgstore.New(db.Pool, pgstore.WithLocalCache(0, 0))
	require.NoError(t, s.Migrate(context.Background()))
	ctx := context.Background()
	claim := &idem.Record{Fingerprint: []byte("fp"), Method: "POST", Path: "/orders"}
	token, _, err := s.Acquire(ctx, "k", claim, time.Minute)
	require.NoError(t, err)
	rec := &idem.Record{State: idem.Completed, Fingerprint: claim.Fingerprint, Method: "POST", Path: "/orders",
		Status: 201, Body: []byte(`{"id":1}`), Header: http.Header{
			"Content-Type": {"application/json"}, "Location": {"/orders/1"}, "Link": {"<a>", "<b>"}, "Vary": {"Accept"},
		}}
	require.NoError(t, s.Complete(ctx, "k", token, rec, time.Hour))
	for range 10 {
		require.NoError(t, s.Complete(ctx, "k", token, rec, time.Hour), "the same record again")
	}
	other := *rec
	other.Status, other.Body = 200, []byte(`{"id":2}`)
	assert.ErrorIs(t, s.Complete(ctx, "k", token, &other, time.Hour), idem.ErrNotOwner)
}

// TestSpec34_AZeroStoreIsRefused: the middleware refuses a zero Store when
// it is built, instead of answering 500 to every keyed request.
func TestSpec34_AZeroStoreIsRefused(t *testing.T) {
	assert.PanicsWithValue(t, "idempotency: WithStore with an unusable store: pgstore: a nil or zero Store (no pool): make it with pgstore.New",
		func() { idem.New(idem.WithStore(&pgstore.Store{})) })
}
