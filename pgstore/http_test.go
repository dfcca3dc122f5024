package pgstore_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	idem "github.com/ginidem/idempotency"
	"github.com/ginidem/idempotency/internal/pgtest"
	"github.com/ginidem/idempotency/pgstore"
)

// pgApp is the order handler behind a real Gin engine and HTTP server, with
// the middleware on a Postgres store.
type pgApp struct {
	db    *pgtest.DB
	store *pgstore.Store
	url   string // of POST /orders
	runs  atomic.Int32
	hadTx atomic.Bool
}

func newPGApp(t *testing.T, storeOpts []pgstore.Option, opts ...idem.Option) *pgApp {
	t.Helper()
	db := pgtest.NewDB(t)
	db.Exec(t, ordersSchema)
	a := &pgApp{db: db, store: newStore(t, db, storeOpts...)}
	a.url = serve(t, newEngine(db, a.store, &a.runs, &a.hadTx, opts...)).URL + "/orders"
	return a
}

// problem checks that r is an RFC 9457 problem of status and returns it.
func problem(t *testing.T, r resp, status int) idem.Problem {
	t.Helper()
	require.NoError(t, r.err)
	require.Equal(t, status, r.status, r.body)
	assert.Equal(t, "application/problem+json", r.header.Get("Content-Type"))
	var p idem.Problem
	require.NoError(t, json.Unmarshal([]byte(r.body), &p), r.body)
	assert.Equal(t, status, p.Status)
	return p
}

// TestSpec17_ReplayIsByteIdentical: the first request runs the handler,
// which writes through the request's transaction; a retry gets the same
// status, Location and body, marked Idempotent-Replayed, and the handler
// does not run again: one order.
func TestSpec17_ReplayIsByteIdentical(t *testing.T) {
	for _, cached := range []bool{true, false} {
		t.Run(fmt.Sprintf("cache=%v", cached), func(t *testing.T) {
			var opts []pgstore.Option
			if !cached {
				opts = append(opts, pgstore.WithLocalCache(0, 0))
			}
			a := newPGApp(t, opts)
			first := send(a.url, key1, `{"item":"book"}`)
			require.NoError(t, first.err)
			require.Equal(t, http.StatusCreated, first.status, first.body)
			assert.False(t, first.replayed())
			requireTx(t, &a.hadTx)

			again := send(a.url, key1, `{"item":"book"}`)
			require.NoError(t, again.err)
			assert.Equal(t, http.StatusCreated, again.status)
			assert.True(t, again.replayed())
			assert.Equal(t, first.body, again.body)
			assert.Equal(t, first.header.Get("Location"), again.header.Get("Location"))
			assert.Equal(t, first.header.Get("Content-Type"), again.header.Get("Content-Type"))
			assert.Equal(t, int32(1), a.runs.Load())
			assert.Equal(t, 1, a.db.Count(t, "orders"))

			other := send(a.url, key2, `{"item":"book"}`)
			assert.Equal(t, http.StatusCreated, other.status, "another key runs")
			assert.Equal(t, 2, a.db.Count(t, "orders"))
		})
	}
}

// TestSpec16_MismatchIs409: the same key with another payload is refused
// and the handler does not run.
func TestSpec16_MismatchIs409(t *testing.T) {
	a := newPGApp(t, nil)
	require.Equal(t, http.StatusCreated, send(a.url, key1, `{"item":"book"}`).status)
	p := problem(t, send(a.url, key1, `{"item":"pen"}`), http.StatusConflict)
	assert.Equal(t, idem.ProblemKeyMismatch, p.Type)
	assert.Equal(t, int32(1), a.runs.Load())
	assert.Equal(t, 1, a.db.Count(t, "orders"))
}

// TestSpec18_InFlightIs409: a duplicate while the first request still runs
// gets 409 with Retry-After; the first then commits, and a later retry gets
// its answer.
func TestSpec18_InFlightIs409(t *testing.T) {
	db := pgtest.NewDB(t)
	db.Exec(t, ordersSchema)
	store := newStore(t, db)
	gate, entered := make(chan struct{}), make(chan struct{}, 1)
	var runs atomic.Int32
	inner := orderHandler(db.Pool, &runs, nil)
	r := gin.New()
	r.POST("/orders", idem.New(idem.WithStore(store)), func(c *gin.Context) {
		entered <- struct{}{}
		<-gate
		inner(c)
	})
	url := serve(t, r).URL + "/orders"
	first := async(url, key1, `{"item":"book"}`)
	select {
	case <-entered:
	case <-time.After(30 * time.Second):
		t.Fatal("the handler was not entered")
	}
	dup := send(url, key1, `{"item":"book"}`)
	p := problem(t, dup, http.StatusConflict)
	assert.Equal(t, idem.ProblemInFlight, p.Type)
	assert.Equal(t, "1", dup.header.Get("Retry-After"))
	close(gate)
	res := recv(t, first)
	require.Equal(t, http.StatusCreated, res.status, res.body)
	again := send(url, key1, `{"item":"book"}`)
	assert.True(t, again.replayed())
	assert.Equal(t, res.body, again.body)
	assert.Equal(t, int32(1), runs.Load())
}

// TestSpec31_HandlerWithoutTheTransactionStillWorks: a handler that writes
// through the pool, not the request's transaction, runs once and is
// replayed, as on any store.
func TestSpec31_HandlerWithoutTheTransactionStillWorks(t *testing.T) {
	db := pgtest.NewDB(t)
	db.Exec(t, ordersSchema)
	store := newStore(t, db)
	var runs atomic.Int32
	r := gin.New()
	r.POST("/orders", idem.New(idem.WithStore(store)), func(c *gin.Context) {
		runs.Add(1)
		var id int64
		if err := db.Pool.QueryRow(c.Request.Context(), "INSERT INTO orders (item) VALUES ('pool') RETURNING id").Scan(&id); err != nil {
			c.String(http.StatusInternalServerError, "%v", err)
			return
		}
		c.JSON(http.StatusCreated, gin.H{"id": id})
	})
	url := serve(t, r).URL + "/orders"
	first := send(url, key1, "{}")
	require.Equal(t, http.StatusCreated, first.status, first.body)
	again := send(url, key1, "{}")
	assert.True(t, again.replayed())
	assert.Equal(t, first.body, again.body)
	assert.Equal(t, int32(1), runs.Load())
	assert.Equal(t, 1, db.Count(t, "orders"))
}

// TestSpec31_NoKeyNoTransaction: a request without a key runs without the
// middleware's transaction: pgstore.Tx returns nil.
func TestSpec31_NoKeyNoTransaction(t *testing.T) {
	a := newPGApp(t, nil)
	res := send(a.url, "", `{"item":"book"}`)
	require.Equal(t, http.StatusCreated, res.status, res.body)
	assert.False(t, a.hadTx.Load())
	assert.Equal(t, 1, a.db.Count(t, "orders"), "written through the pool")
	assert.Equal(t, 0, a.db.Count(t, "idempotency_records"))
}

// TestSpec31_HandlerCannotEndTheTransaction: the transaction the handler
// gets refuses Commit and Rollback (the middleware ends it), and a nested
// transaction (a savepoint) works as usual.
func TestSpec31_HandlerCannotEndTheTransaction(t *testing.T) {
	db := pgtest.NewDB(t)
	db.Exec(t, ordersSchema)
	store := newStore(t, db)
	r := gin.New()
	r.POST("/orders", idem.New(idem.WithStore(store)), func(c *gin.Context) {
		tx := pgstore.Tx(c)
		if tx == nil {
			c.String(http.StatusInternalServerError, "no transaction")
			return
		}
		ctx := c.Request.Context()
		assert.ErrorIs(t, tx.Commit(ctx), pgstore.ErrHandlerCommit)
		assert.ErrorIs(t, tx.Rollback(ctx), pgstore.ErrHandlerCommit)
		err := pgx.BeginFunc(ctx, tx, func(sp pgx.Tx) error {
			_, err := sp.Exec(ctx, "INSERT INTO orders (item) VALUES ('kept')")
			return err
		})
		assert.NoError(t, err)
		_ = pgx.BeginFunc(ctx, tx, func(sp pgx.Tx) error {
			if _, err := sp.Exec(ctx, "INSERT INTO orders (item) VALUES ('undone')"); err != nil {
				return err
			}
			return errors.New("undo the savepoint")
		})
		c.String(http.StatusCreated, "ok")
	})
	url := serve(t, r).URL + "/orders"
	res := send(url, key1, "{}")
	require.Equal(t, http.StatusCreated, res.status, res.body)
	var items []string
	rows, err := db.Pool.Query(context.Background(), "SELECT item FROM orders")
	require.NoError(t, err)
	items, err = pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	assert.Equal(t, []string{"kept"}, items)
}

// TestSpec31_HandlerFailureRollsBack: a handler that writes through the
// transaction and then answers 5xx leaves nothing: its insert rolls back,
// the key is released, and the retry runs again.
func TestSpec31_HandlerFailureRollsBack(t *testing.T) {
	db := pgtest.NewDB(t)
	db.Exec(t, ordersSchema)
	store := newStore(t, db)
	var fail atomic.Bool
	fail.Store(true)
	var runs atomic.Int32
	inner := orderHandler(db.Pool, &runs, nil)
	r := gin.New()
	r.POST("/orders", idem.New(idem.WithStore(store)), func(c *gin.Context) {
		if fail.Load() {
			runs.Add(1)
			if tx := pgstore.Tx(c); tx != nil {
				_, _ = tx.Exec(c.Request.Context(), "INSERT INTO orders (item) VALUES ('failed')")
			}
			c.String(http.StatusInternalServerError, "downstream failed")
			return
		}
		inner(c)
	})
	url := serve(t, r).URL + "/orders"
	res := send(url, key1, `{"item":"book"}`)
	assert.Equal(t, http.StatusInternalServerError, res.status)
	assert.Equal(t, "downstream failed", res.body, "a response that is not kept is sent as the handler wrote it")
	assert.Equal(t, 0, db.Count(t, "orders"), "rolled back")
	assert.Equal(t, 0, db.Count(t, "idempotency_records"), "the key is released")

	fail.Store(false)
	res = send(url, key1, `{"item":"book"}`)
	require.Equal(t, http.StatusCreated, res.status, res.body)
	assert.Equal(t, int32(2), runs.Load())
	assert.Equal(t, 1, db.Count(t, "orders"))
}

// TestSpec31_FailedCommitAnswersAProblemAndReleases: when COMMIT fails (here
// on a deferred unique constraint the handler's inserts violate), the
// client gets a problem, never the handler's 201; nothing is kept, the
// key is released, and the retry runs again.
func TestSpec31_FailedCommitAnswersAProblemAndReleases(t *testing.T) {
	db := pgtest.NewDB(t)
	db.Exec(t, `CREATE TABLE tickets (
        seat int NOT NULL,
        CONSTRAINT one_per_seat UNIQUE (seat) DEFERRABLE INITIALLY DEFERRED
    )`)
	store := newStore(t, db)
	var doubleBook atomic.Bool
	doubleBook.Store(true)
	var runs atomic.Int32
	var hadTx atomic.Bool
	r := gin.New()
	r.POST("/tickets", idem.New(idem.WithStore(store)), func(c *gin.Context) {
		runs.Add(1)
		tx := pgstore.Tx(c)
		if tx == nil {
			c.String(http.StatusInternalServerError, "no transaction")
			return
		}
		hadTx.Store(true)
		sql := "INSERT INTO tickets (seat) VALUES (1)"
		if doubleBook.Load() {
			sql = "INSERT INTO tickets (seat) VALUES (1), (1)" // fails only at COMMIT
		}
		if _, err := tx.Exec(c.Request.Context(), sql); err != nil {
			c.String(http.StatusInternalServerError, "%v", err)
			return
		}
		c.String(http.StatusCreated, "booked")
	})
	url := serve(t, r).URL + "/tickets"
	res := send(url, key1, "{}")
	requireTx(t, &hadTx)
	p := problem(t, res, http.StatusServiceUnavailable)
	assert.Equal(t, idem.ProblemStoreUnavailable, p.Type)
	assert.NotContains(t, res.body, "booked")
	assert.Equal(t, 0, db.Count(t, "tickets"))
	assert.Equal(t, 0, db.Count(t, "idempotency_records"), "the key is released")

	doubleBook.Store(false)
	res = send(url, key1, "{}")
	require.Equal(t, http.StatusCreated, res.status, res.body)
	assert.Equal(t, "booked", res.body)
	assert.Equal(t, int32(2), runs.Load())
	assert.Equal(t, 1, db.Count(t, "tickets"))
	again := send(url, key1, "{}")
	assert.True(t, again.replayed())
	assert.Equal(t, int32(2), runs.Load())
}

// TestSpec31_LostLeaseAtCommitRollsBack: when the key changed hands while
// the handler ran (here another owner's token is written over the row, as
// after an expired lease taken by a retry), the fenced UPDATE finds no row
// of this request: the handler's insert rolls back with it, and the client
// gets a problem, not the 201.
func TestSpec31_LostLeaseAtCommitRollsBack(t *testing.T) {
	db := pgtest.NewDB(t)
	db.Exec(t, ordersSchema)
	store := newStore(t, db)
	var runs atomic.Int32
	var hadTx atomic.Bool
	inner := orderHandler(db.Pool, &runs, &hadTx)
	r := gin.New()
	r.POST("/orders", idem.New(idem.WithStore(store)), func(c *gin.Context) {
		inner(c)
		// Another request takes the key over (on another connection).
		_, err := db.Pool.Exec(context.Background(), "UPDATE idempotency_records SET token = gen_random_uuid()")
		assert.NoError(t, err)
	})
	url := serve(t, r).URL + "/orders"
	res := send(url, key1, `{"item":"book"}`)
	requireTx(t, &hadTx)
	problem(t, res, http.StatusServiceUnavailable)
	assert.Equal(t, 0, db.Count(t, "orders"), "the insert rolled back with the record")
	var state int
	require.NoError(t, db.Pool.QueryRow(context.Background(), "SELECT state FROM idempotency_records").Scan(&state))
	assert.Equal(t, int(idem.InFlight), state, "the new owner's record is untouched")
}

// TestSpec31_AnswerOnlyAfterCommit: the client receives nothing until the
// record and the handler's writes have committed. A store wrapper holds the
// commit while the test looks at what the response writer has received:
// nothing, neither the status nor a byte of the body.
func TestSpec31_AnswerOnlyAfterCommit(t *testing.T) {
	db := pgtest.NewDB(t)
	db.Exec(t, ordersSchema)
	inCommit, release := make(chan struct{}, 1), make(chan struct{})
	store := &gatedStore{Store: newStore(t, db), inCommit: inCommit, release: release}
	var runs atomic.Int32
	var hadTx atomic.Bool
	engine := newEngine(db, store, &runs, &hadTx)
	w := httptest.NewRecorder()
	req := httptest.NewRequest(http.MethodPost, "/orders", strings.NewReader(`{"item":"book"}`))
	req.Header.Set("Idempotency-Key", key1)
	req.Header.Set("Authorization", defaultAuth)
	served := make(chan struct{})
	go func() {
		defer close(served)
		engine.ServeHTTP(w, req)
	}()
	select {
	case <-inCommit: // the server goroutine waits in Commit: w is still until release
	case <-served:
		t.Fatalf("answered without a commit (pgstore.Tx set: %v): %d %s", hadTx.Load(), w.Code, w.Body)
	}
	assert.Zero(t, w.Body.Len(), "no byte of the body before the commit")
	assert.Equal(t, http.StatusOK, w.Code, "no status written before the commit (the recorder's default)")
	assert.Equal(t, 0, db.Count(t, "orders"), "not committed yet")
	close(release)
	<-served
	require.Equal(t, http.StatusCreated, w.Code, w.Body.String())
	assert.Equal(t, 1, db.Count(t, "orders"))
	var state int
	require.NoError(t, db.Pool.QueryRow(context.Background(), "SELECT state FROM idempotency_records").Scan(&state))
	assert.Equal(t, int(idem.Completed), state)
}

// gatedStore wraps a Store: the commit of each request transaction reports
// on inCommit and waits for release. Its transactions forward PgxTx, so
// pgstore.Tx finds the handler's transaction through the wrapper.
type gatedStore struct {
	*pgstore.Store
	inCommit chan<- struct{}
	release  <-chan struct{}
}

func (s *gatedStore) Begin(ctx context.Context, key, token string) (idem.Tx, error) {
	tx, err := s.Store.Begin(ctx, key, token)
	if err != nil {
		return nil, err
	}
	return &gatedTx{Tx: tx, s: s}, nil
}

type gatedTx struct {
	idem.Tx
	s *gatedStore
}

func (t *gatedTx) Commit(ctx context.Context, rec *idem.Record, ttl time.Duration) error {
	t.s.inCommit <- struct{}{}
	<-t.s.release
	return t.Tx.Commit(context.Background(), rec, ttl) // the gate may outlast the commit's deadline
}

func (t *gatedTx) PgxTx() pgx.Tx { return t.Tx.(interface{ PgxTx() pgx.Tx }).PgxTx() }

var _ idem.TxStore = (*gatedStore)(nil)

// TestSpec31_TransactionUnit: the store's transactions without the
// middleware: Commit writes the record and the handler's rows together,
// refuses a token that lost the key (rolling back), and Rollback is safe
// after Commit.
func TestSpec31_TransactionUnit(t *testing.T) {
	db := pgtest.NewDB(t)
	db.Exec(t, ordersSchema)
	s := newStore(t, db)
	ctx := storeCtx(t)
	insert := func(tx idem.Tx) {
		t.Helper()
		_, err := tx.(interface{ PgxTx() pgx.Tx }).PgxTx().Exec(ctx, "INSERT INTO orders (item) VALUES ('x')")
		require.NoError(t, err)
	}

	token, _, err := s.Acquire(ctx, "a", testClaim, lease)
	require.NoError(t, err)
	tx, err := s.Begin(ctx, "a", token)
	require.NoError(t, err)
	insert(tx)
	require.NoError(t, tx.Commit(ctx, completed, ttl))
	assert.NoError(t, tx.Rollback(ctx), "safe after Commit")
	assert.Error(t, tx.Commit(ctx, completed, ttl), "once")
	assert.Equal(t, 1, db.Count(t, "orders"))
	_, held, err := pgstore.New(db.Pool).Acquire(ctx, "a", testClaim, lease)
	require.NoError(t, err)
	require.NotNil(t, held)
	assert.Equal(t, completed.Body, held.Body)
	assert.Equal(t, completed.Header, held.Header)

	token, _, err = s.Acquire(ctx, "b", testClaim, lease)
	require.NoError(t, err)
	tx, err = s.Begin(ctx, "b", token)
	require.NoError(t, err)
	insert(tx)
	require.NoError(t, s.Delete(ctx, "b")) // the key is forgotten meanwhile
	assert.ErrorIs(t, tx.Commit(ctx, completed, ttl), idem.ErrNotOwner)
	assert.Equal(t, 1, db.Count(t, "orders"), "the insert rolled back")
	assert.Equal(t, 0, db.Count(t, "idempotency_records WHERE key = 'b'"))

	token, _, err = s.Acquire(ctx, "c", testClaim, lease)
	require.NoError(t, err)
	tx, err = s.Begin(ctx, "c", token)
	require.NoError(t, err)
	insert(tx)
	require.NoError(t, tx.Rollback(ctx))
	require.NoError(t, tx.Rollback(ctx), "twice")
	assert.Equal(t, 1, db.Count(t, "orders"))
	require.NoError(t, s.Release(ctx, "c", token), "the key is still this request's")

	_, err = s.Begin(ctx, "c", "not a token")
	assert.ErrorIs(t, err, idem.ErrNotOwner)
	assert.Equal(t, int32(0), db.Pool.Stat().AcquiredConns(), "every connection went back to the pool")
}
