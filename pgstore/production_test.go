package pgstore_test

// The conditions every production service has, on a real Postgres: a
// pool smaller than a burst, a handler that reads through the pool while
// its transaction is open, a lease shorter than the handler, a server that
// ends idle transactions, a handler statement that fails, a client that
// hangs up, and a response larger than the cap (SPEC 13, 22, 31, 32).

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	idem "github.com/ginidem/idempotency"
	"github.com/ginidem/idempotency/internal/pgtest"
	"github.com/ginidem/idempotency/pgstore"
)

// keyN is the n-th of a set of distinct UUID v4 keys.
func keyN(n int) string { return fmt.Sprintf("00000000-0000-4000-8000-%012d", n) }

// events collects the middleware's events by kind.
type events struct {
	mu    sync.Mutex
	kinds map[idem.EventKind]int
	done  chan idem.Event // completions and releases, when set
}

func newEvents() *events {
	return &events{kinds: map[idem.EventKind]int{}, done: make(chan idem.Event, 64)}
}

func (e *events) hook(_ context.Context, ev idem.Event) {
	e.mu.Lock()
	e.kinds[ev.Kind]++
	e.mu.Unlock()
	if ev.Kind == idem.EventCompleted || ev.Kind == idem.EventReleased {
		e.done <- ev
	}
}

func (e *events) count(k idem.EventKind) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.kinds[k]
}

// waitDone waits for the next completion or release.
func (e *events) waitDone(t *testing.T) idem.Event {
	t.Helper()
	select {
	case ev := <-e.done:
		return ev
	case <-time.After(30 * time.Second):
		t.Fatal("no completion or release")
		return idem.Event{}
	}
}

// sendAll sends n keyed requests at once, each with a key of its own, and
// returns their answers.
func sendAll(url string, n int) []resp {
	out := make([]resp, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i] = send(url, keyN(i), fmt.Sprintf("item %d", i))
		}()
	}
	wg.Wait()
	return out
}

// statuses counts answers by status ("error" for a request that failed).
func statuses(rs []resp) map[string]int {
	m := map[string]int{}
	for _, r := range rs {
		if r.err != nil {
			m["error"]++
			continue
		}
		m[fmt.Sprint(r.status)]++
	}
	return m
}

// slowOrder inserts an order through the request's transaction, then holds
// the transaction open for the given seconds of database time (pg_sleep):
// a handler whose transaction is slow.
func slowOrder(seconds float64, runs *atomic.Int32) gin.HandlerFunc {
	return func(c *gin.Context) {
		runs.Add(1)
		tx := pgstore.Tx(c)
		if tx == nil {
			c.String(http.StatusInternalServerError, "no transaction")
			return
		}
		body, _ := io.ReadAll(c.Request.Body)
		ctx := c.Request.Context()
		if _, err := tx.Exec(ctx, "INSERT INTO orders (item) VALUES ($1)", string(body)); err != nil {
			c.String(http.StatusInternalServerError, "insert: %v", err)
			return
		}
		if _, err := tx.Exec(ctx, "SELECT pg_sleep($1)", seconds); err != nil {
			c.String(http.StatusInternalServerError, "sleep: %v", err)
			return
		}
		c.String(http.StatusCreated, "created")
	}
}

// TestSpec22_ABurstLargerThanThePoolQueues: 24 keyed requests at once,
// each holding its transaction for 300 ms, on a pool of 4 connections.
// Waiting for a connection is queueing, not a store failure: every request
// succeeds, as it would without the middleware, and the circuit breaker
// never opens.
func TestSpec22_ABurstLargerThanThePoolQueues(t *testing.T) {
	db := pgtest.NewDB(t, pgtest.MaxConns(4))
	db.Exec(t, ordersSchema)
	store := newStore(t, db)
	ev := newEvents()
	var runs atomic.Int32
	r := gin.New()
	r.POST("/orders", idem.New(idem.WithStore(store), idem.WithEventHook(ev.hook)), slowOrder(0.3, &runs))
	url := serve(t, r).URL + "/orders"

	got := sendAll(url, 24)
	assert.Equal(t, map[string]int{"201": 24}, statuses(got))
	assert.Equal(t, 24, db.Count(t, "orders"))
	assert.Equal(t, 0, ev.count(idem.EventBreakerOpen), "a wait for the pool never opens the breaker")
	assert.Equal(t, 0, ev.count(idem.EventStoreError))
	assert.True(t, send(url, keyN(3), "item 3").replayed())
	assert.Equal(t, int32(24), runs.Load())
}

// TestSpec22_AHandlerReadingThroughThePoolDoesNotDeadlock: handlers that
// read through the pool while their transaction is open, as many at once
// as the pool has connections. The store never lets request transactions
// take the last connection, so the reads find one and every request ends.
func TestSpec22_AHandlerReadingThroughThePoolDoesNotDeadlock(t *testing.T) {
	db := pgtest.NewDB(t, pgtest.MaxConns(2))
	db.Exec(t, ordersSchema)
	store := newStore(t, db)
	var runs atomic.Int32
	r := gin.New()
	r.POST("/orders", idem.New(idem.WithStore(store)), func(c *gin.Context) {
		runs.Add(1)
		ctx := c.Request.Context()
		if _, err := pgstore.Tx(c).Exec(ctx, "INSERT INTO orders (item) VALUES ('x')"); err != nil {
			c.String(http.StatusInternalServerError, "insert: %v", err)
			return
		}
		var n int
		if err := db.Pool.QueryRow(ctx, "SELECT count(*) FROM orders").Scan(&n); err != nil {
			c.String(http.StatusInternalServerError, "read: %v", err)
			return
		}
		c.String(http.StatusCreated, "%d", n)
	})
	url := serve(t, r).URL + "/orders"

	got := sendAll(url, 6)
	assert.Equal(t, map[string]int{"201": 6}, statuses(got))
	assert.Equal(t, 6, db.Count(t, "orders"))
}

// TestSpec10_TheTransactionHoldsTheKeyPastItsLease: handlers whose
// transaction outlasts the lease, as many as the pool has connections. No
// renewal needs a connection: the transaction's lock holds the key, so
// duplicates get 409 even after the lease's end, and every first request
// commits.
func TestSpec10_TheTransactionHoldsTheKeyPastItsLease(t *testing.T) {
	db := pgtest.NewDB(t, pgtest.MaxConns(4))
	db.Exec(t, ordersSchema)
	store := newStore(t, db)
	var runs atomic.Int32
	r := gin.New()
	r.POST("/orders", idem.New(idem.WithStore(store), idem.WithLease(500*time.Millisecond)), slowOrder(2, &runs))
	url := serve(t, r).URL + "/orders"

	firsts := make([]<-chan resp, 4)
	for i := range firsts {
		firsts[i] = async(url, keyN(i), fmt.Sprintf("item %d", i))
	}
	// Three transactions open at once (all but one of the pool's
	// connections); the fourth request waits for its turn, its lease renewed.
	require.Eventually(t, func() bool { // the open transactions' leases have run out
		return db.Count(t, "idempotency_records WHERE state = 1 AND expires_at < statement_timestamp()") == 3
	}, 10*time.Second, 20*time.Millisecond)
	for i := range firsts {
		dup := send(url, keyN(i), fmt.Sprintf("item %d", i))
		assert.Equal(t, http.StatusConflict, dup.status, "key %d is still held: %s", i, dup.body)
	}
	for _, ch := range firsts {
		res := recv(t, ch)
		assert.Equal(t, http.StatusCreated, res.status, res.body)
	}
	assert.Equal(t, int32(4), runs.Load())
	assert.Equal(t, 4, db.Count(t, "orders"))
	assert.True(t, send(url, keyN(0), "item 0").replayed())
}

// TestSpec22_IdleTransactionsAreNotOpenedEarly: a server that ends
// transactions idle for 300 ms, and a handler whose slow part (600 ms)
// comes before its first write. The request's transaction opens at that
// write, so the keyed request succeeds like an unkeyed one.
func TestSpec22_IdleTransactionsAreNotOpenedEarly(t *testing.T) {
	db := pgtest.NewDB(t, func(cfg *pgxpool.Config) {
		cfg.ConnConfig.RuntimeParams["idle_in_transaction_session_timeout"] = "300"
	})
	db.Exec(t, ordersSchema)
	store := newStore(t, db)
	r := gin.New()
	r.POST("/orders", idem.New(idem.WithStore(store)), func(c *gin.Context) {
		ctx := c.Request.Context()
		if _, err := db.Pool.Exec(ctx, "SELECT pg_sleep(0.6)"); err != nil { // the slow part: a read elsewhere
			c.String(http.StatusInternalServerError, "read: %v", err)
			return
		}
		if _, err := pgstore.Tx(c).Exec(ctx, "INSERT INTO orders (item) VALUES ('x')"); err != nil {
			c.String(http.StatusInternalServerError, "insert: %v", err)
			return
		}
		c.String(http.StatusCreated, "created")
	})
	url := serve(t, r).URL + "/orders"
	res := send(url, key1, "{}")
	require.Equal(t, http.StatusCreated, res.status, res.body)
	assert.True(t, send(url, key1, "{}").replayed())
	assert.Equal(t, 1, db.Count(t, "orders"))
}

// TestSpec31_AFailedStatementKeepsTheHandlersAnswer: the handler's insert
// hits a unique violation and the handler answers 409. The client gets that
// answer, a retry gets it replayed, and the handler's writes in the failed
// transaction (a row inserted before the violation) are not committed.
func TestSpec31_AFailedStatementKeepsTheHandlersAnswer(t *testing.T) {
	db := pgtest.NewDB(t)
	db.Exec(t, `CREATE TABLE accounts (name text PRIMARY KEY)`)
	db.Exec(t, `CREATE TABLE audit (line text NOT NULL)`)
	db.Exec(t, `INSERT INTO accounts VALUES ('taken')`)
	store := newStore(t, db)
	var runs atomic.Int32
	r := gin.New()
	r.POST("/accounts", idem.New(idem.WithStore(store)), func(c *gin.Context) {
		runs.Add(1)
		tx, ctx := pgstore.Tx(c), c.Request.Context()
		if _, err := tx.Exec(ctx, "INSERT INTO audit VALUES ('attempt')"); err != nil {
			c.String(http.StatusInternalServerError, "audit: %v", err)
			return
		}
		_, err := tx.Exec(ctx, "INSERT INTO accounts VALUES ('taken')")
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "23505" {
			c.String(http.StatusConflict, "name taken")
			return
		}
		c.String(http.StatusCreated, "created")
	})
	url := serve(t, r).URL + "/accounts"
	for attempt := range 3 {
		res := send(url, key1, "{}")
		require.Equal(t, http.StatusConflict, res.status, "attempt %d: %s", attempt, res.body)
		assert.Equal(t, "name taken", res.body)
		assert.Equal(t, attempt > 0, res.replayed(), "attempt %d", attempt)
	}
	assert.Equal(t, int32(1), runs.Load())
	assert.Equal(t, 0, db.Count(t, "audit"), "the failed transaction's writes are not committed")
	assert.Equal(t, 1, db.Count(t, "idempotency_records WHERE state = 2"))
}

// TestSpec13_AClientThatHangsUpGetsTheReplay: the client goes away while
// the handler's statement runs through the request's transaction with the
// request's context. The statement is not cancelled: the transaction
// commits with the record, and the client's retry gets the replay.
func TestSpec13_AClientThatHangsUpGetsTheReplay(t *testing.T) {
	db := pgtest.NewDB(t)
	db.Exec(t, ordersSchema)
	store := newStore(t, db)
	ev := newEvents()
	var runs atomic.Int32
	started := make(chan struct{}, 1)
	r := gin.New()
	r.POST("/orders", idem.New(idem.WithStore(store), idem.WithEventHook(ev.hook)), func(c *gin.Context) {
		runs.Add(1)
		tx, ctx := pgstore.Tx(c), c.Request.Context()
		if _, err := tx.Exec(ctx, "INSERT INTO orders (item) VALUES ('x')"); err != nil {
			c.String(http.StatusInternalServerError, "insert: %v", err)
			return
		}
		started <- struct{}{}
		if _, err := tx.Exec(ctx, "SELECT pg_sleep(1)"); err != nil {
			c.String(http.StatusInternalServerError, "slow part: %v", err)
			return
		}
		c.String(http.StatusCreated, "created")
	})
	url := serve(t, r).URL + "/orders"

	ctx, hangUp := context.WithCancel(context.Background())
	gone := make(chan error, 1)
	go func() {
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader("{}"))
		req.Header.Set("Idempotency-Key", key1)
		req.Header.Set("Authorization", defaultAuth)
		res, err := http.DefaultClient.Do(req)
		if err == nil {
			res.Body.Close()
		}
		gone <- err
	}()
	<-started
	hangUp()
	require.Error(t, <-gone, "the client went away")
	done := ev.waitDone(t)
	require.Equal(t, idem.EventCompleted, done.Kind, "the handler's work finished and was kept")
	res := send(url, key1, "{}")
	require.Equal(t, http.StatusCreated, res.status, res.body)
	assert.True(t, res.replayed())
	assert.Equal(t, int32(1), runs.Load())
	assert.Equal(t, 1, db.Count(t, "orders"))
}

// TestSpec31_AResponseOverTheCapCommitsThenStreams: on a transactional
// store a response is held until the commit, but never more than the
// response cap: one that outgrows it commits first, then streams, and is
// kept without a body. The test sees the first bytes, the committed order
// and the completed record while the handler is still writing.
func TestSpec31_AResponseOverTheCapCommitsThenStreams(t *testing.T) {
	db := pgtest.NewDB(t)
	db.Exec(t, ordersSchema)
	store := newStore(t, db)
	const limit, chunk, chunks = 64 << 10, 16 << 10, 16
	more := make(chan struct{})
	var runs atomic.Int32
	r := gin.New()
	r.POST("/export", idem.New(idem.WithStore(store), idem.WithMaxResponseBytes(limit)), func(c *gin.Context) {
		runs.Add(1)
		if _, err := pgstore.Tx(c).Exec(c.Request.Context(), "INSERT INTO orders (item) VALUES ('export')"); err != nil {
			c.String(http.StatusInternalServerError, "insert: %v", err)
			return
		}
		c.Header("Location", "/exports/1")
		c.Status(http.StatusCreated)
		line := strings.Repeat("x", chunk)
		for i := range chunks {
			if i == chunks/2 {
				<-more // the test looks while the handler is half-way
			}
			if _, err := c.Writer.WriteString(line); err != nil {
				return
			}
		}
	})
	url := serve(t, r).URL + "/export"

	req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader("{}"))
	req.Header.Set("Idempotency-Key", key1)
	req.Header.Set("Authorization", defaultAuth)
	answer := make(chan *http.Response, 1)
	go func() {
		res, err := http.DefaultClient.Do(req)
		assert.NoError(t, err)
		answer <- res
	}()
	var res *http.Response
	select {
	case res = <-answer:
	case <-time.After(30 * time.Second):
		close(more)
		t.Fatal("no answer before the handler finished: the whole response was held")
	}
	defer res.Body.Close()
	require.Equal(t, http.StatusCreated, res.StatusCode)
	head := make([]byte, limit)
	_, err := io.ReadFull(res.Body, head)
	require.NoError(t, err, "the held bytes came first")
	assert.Equal(t, 1, db.Count(t, "orders"), "committed before the first byte left")
	assert.Equal(t, 1, db.Count(t, "idempotency_records WHERE state = 2 AND body_omitted"))
	close(more)
	rest, err := io.ReadAll(res.Body)
	require.NoError(t, err)
	assert.Equal(t, chunk*chunks, limit+len(rest), "the whole response")

	dup := send(url, key1, "{}")
	assert.Equal(t, http.StatusConflict, dup.status, "kept without a body, like a stream")
	assert.Equal(t, "/exports/1", dup.header.Get("Location"))
	assert.Equal(t, int32(1), runs.Load())
}

// TestSpec22_AnAcquisitionQueuesOnABusyPool: every connection of the pool
// is busy for longer than the store timeout when a keyed request arrives.
// Its acquisition waits for a connection with the request's own context,
// as an unkeyed request's statement would, and then succeeds: the store
// timeout counts from the end of the wait.
func TestSpec22_AnAcquisitionQueuesOnABusyPool(t *testing.T) {
	db := pgtest.NewDB(t, pgtest.MaxConns(2))
	db.Exec(t, ordersSchema)
	store := newStore(t, db)
	var runs atomic.Int32
	const storeTimeout = 500 * time.Millisecond // its statements must fit in it on a loaded machine
	r := gin.New()
	r.POST("/orders", idem.New(idem.WithStore(store), idem.WithStoreTimeout(storeTimeout)),
		orderHandler(db.Pool, &runs, nil))
	url := serve(t, r).URL + "/orders"

	ctx := context.Background()
	var busy []*pgxpool.Conn
	for range 2 {
		conn, err := db.Pool.Acquire(ctx)
		require.NoError(t, err)
		busy = append(busy, conn)
	}
	waited := db.Pool.Stat().EmptyAcquireWaitTime()
	answer := async(url, key1, "{}")
	require.Eventually(t, func() bool { return db.Pool.Stat().EmptyAcquireCount() > 0 }, 10*time.Second, time.Millisecond,
		"the acquisition waits for a connection")
	// The pool stays busy for three store timeouts, then frees up.
	time.AfterFunc(3*storeTimeout, func() {
		for _, conn := range busy {
			conn.Release()
		}
	})
	res := recv(t, answer)
	require.Equal(t, http.StatusCreated, res.status, res.body)
	assert.Greater(t, db.Pool.Stat().EmptyAcquireWaitTime()-waited, storeTimeout, "it waited past the store timeout")
	assert.Equal(t, int32(1), runs.Load())
}

// TestSpec29_DoNotKeepRollsTheTransactionBack: a handler that writes
// through the request's transaction and then asks that its answer not be
// kept gets its answer sent, its writes rolled back and its key released:
// the retry runs again.
func TestSpec29_DoNotKeepRollsTheTransactionBack(t *testing.T) {
	db := pgtest.NewDB(t)
	db.Exec(t, ordersSchema)
	store := newStore(t, db)
	var runs atomic.Int32
	r := gin.New()
	r.POST("/orders", idem.New(idem.WithStore(store)), func(c *gin.Context) {
		runs.Add(1)
		if _, err := pgstore.Tx(c).Exec(c.Request.Context(), "INSERT INTO orders (item) VALUES ('x')"); err != nil {
			c.String(http.StatusInternalServerError, "insert: %v", err)
			return
		}
		idem.DoNotKeep(c)
		c.String(http.StatusOK, "queue full, retry")
	})
	url := serve(t, r).URL + "/orders"
	for range 2 {
		res := send(url, key1, "{}")
		require.Equal(t, http.StatusOK, res.status, res.body)
		assert.False(t, res.replayed())
	}
	assert.Equal(t, int32(2), runs.Load())
	assert.Equal(t, 0, db.Count(t, "orders"), "rolled back")
	assert.Equal(t, 0, db.Count(t, "idempotency_records"), "released")
}
