package tests

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	idem "github.com/ginidem/idempotency"
	"github.com/ginidem/idempotency/internal/pgtest"
	"github.com/ginidem/idempotency/internal/redistest"
	"github.com/ginidem/idempotency/internal/suite"
)

// The SIGKILL tests of pgstore (pgstore/crash_test.go), on the Redis store:
// the handler writes its order to Postgres in a transaction of its own,
// through the pool, as the handler of a Redis-store user does. The record
// and the order are then two writes to two systems, and the process can
// die between them. docs/transactions.md records the outcomes.

// The child's environment: the point where it stops, and where its Redis,
// key prefix and database are.
const (
	crashModeEnv   = "IDEM_CRASH_CHILD_MODE"
	crashRedisEnv  = "IDEM_CRASH_CHILD_REDIS"
	crashPrefixEnv = "IDEM_CRASH_CHILD_PREFIX"
	crashDSNEnv    = "IDEM_CRASH_CHILD_DSN"
)

// The points where the child prints a marker and blocks, to be killed.
const (
	crashInserted  = "inserted"  // the handler inserted its order; its transaction is open
	crashCommitted = "committed" // the handler committed its order; the record is still in flight
	crashCompleted = "completed" // the record is completed in Redis; the answer is not sent yet
)

// crashOrdersSchema is the handler's table.
const crashOrdersSchema = `CREATE TABLE orders (id bigserial PRIMARY KEY, item text NOT NULL)`

// crashOrderHandler inserts one order in a transaction of its own on pool
// and answers 201 with its Location. It calls pause at each of its points
// (the child blocks at one of them); runs counts its runs.
func crashOrderHandler(pool *pgxpool.Pool, runs *atomic.Int32, pause func(point string)) gin.HandlerFunc {
	return func(c *gin.Context) {
		runs.Add(1)
		ctx := c.Request.Context()
		tx, err := pool.Begin(ctx)
		if err != nil {
			c.String(http.StatusInternalServerError, "begin: %v", err)
			return
		}
		defer tx.Rollback(context.WithoutCancel(ctx)) // nothing after the commit
		var id int64
		if err := tx.QueryRow(ctx, "INSERT INTO orders (item) VALUES ('crash') RETURNING id").Scan(&id); err != nil {
			c.String(http.StatusInternalServerError, "insert: %v", err)
			return
		}
		pause(crashInserted)
		if err := tx.Commit(ctx); err != nil {
			c.String(http.StatusInternalServerError, "commit: %v", err)
			return
		}
		pause(crashCommitted)
		c.Header("Location", fmt.Sprintf("/orders/%d", id))
		c.JSON(http.StatusCreated, gin.H{"id": id, "item": "crash"})
	}
}

// TestSpec31_RedisCrashChild is the child process of the Redis crash
// tests: the order service on a Redis store, which prints its URL, then
// blocks at the point its mode names, printing it, until it is killed.
func TestSpec31_RedisCrashChild(t *testing.T) {
	mode := os.Getenv(crashModeEnv)
	if mode == "" {
		t.Skip("the child process of the TestSpec31_RedisKilled* tests; runs only as that child")
	}
	pool, err := pgxpool.New(context.Background(), os.Getenv(crashDSNEnv))
	require.NoError(t, err)
	client := redis.NewClient(&redis.Options{Addr: os.Getenv(crashRedisEnv), ContextTimeoutEnabled: true})
	stop := func(point string) {
		if point == mode {
			os.Stdout.WriteString(point + "\n")
			select {} // killed here
		}
	}
	r := gin.New()
	r.Use(func(c *gin.Context) { // outside the middleware: runs after the record is completed
		c.Next()
		stop(crashCompleted)
	})
	r.Use(idem.New(idem.WithStore(idem.NewRedisStore(client, idem.WithRedisKeyPrefix(os.Getenv(crashPrefixEnv))))))
	var runs atomic.Int32
	r.POST("/orders", crashOrderHandler(pool, &runs, stop))
	srv := httptest.NewServer(r)
	os.Stdout.WriteString(srv.URL + "\n")
	select {}
}

// redisCrash is one crash test's set-up: the orders table, the Redis the
// child and the survivor share, and the survivor, another process of the
// service whose lease the test can let run out.
type redisCrash struct {
	db      *pgtest.DB
	advance func(time.Duration) // moves Redis' time forward for the test's keys
	url     string              // the survivor's POST /orders
	runs    atomic.Int32        // the survivor's handler runs
}

// newRedisCrash starts a child that stops at mode, sends it one keyed
// order, kills it there with SIGKILL, and starts the survivor. The child's
// request gets no answer.
func newRedisCrash(t *testing.T, mode string) *redisCrash {
	t.Helper()
	db := pgtest.NewDB(t) // skips without Postgres
	db.Exec(t, crashOrdersSchema)
	client, prefix, advance := redistest.Targets(false)[0].Open(t) // a real redis-server where installed
	single, ok := client.(*redis.Client)
	require.True(t, ok)

	child := exec.Command(os.Args[0], "-test.run=^TestSpec31_RedisCrashChild$")
	child.Env = append(os.Environ(), crashModeEnv+"="+mode, crashRedisEnv+"="+single.Options().Addr,
		crashPrefixEnv+"="+prefix, crashDSNEnv+"="+db.DSN)
	child.Stderr = os.Stderr
	out, err := child.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, child.Start())
	t.Cleanup(func() { _ = child.Process.Kill(); _ = child.Wait() })
	lines := bufio.NewScanner(out)
	require.True(t, lines.Scan(), "the child prints its URL")
	childURL := strings.TrimSpace(lines.Text())
	require.True(t, strings.HasPrefix(childURL, "http://"), "the child printed %q", childURL)

	answer := make(chan error, 1)
	go func() { answer <- postCrashOrder(childURL + "/orders").err }()
	marker := make(chan string, 1)
	go func() {
		if lines.Scan() {
			marker <- lines.Text()
		}
		close(marker)
	}()
	select {
	case got := <-marker:
		require.Equal(t, mode, got, "the child stopped elsewhere")
	case <-time.After(30 * time.Second):
		t.Fatalf("the child did not reach %q", mode)
	}
	require.NoError(t, child.Process.Kill()) // SIGKILL
	_ = child.Wait()
	select {
	case err := <-answer:
		require.Error(t, err, "the killed process never answered")
	case <-time.After(30 * time.Second):
		t.Fatal("the request to the killed child did not end")
	}

	rc := &redisCrash{db: db, advance: advance}
	r := gin.New()
	r.Use(idem.New(idem.WithStore(idem.NewRedisStore(client, idem.WithRedisKeyPrefix(prefix)))))
	r.POST("/orders", crashOrderHandler(db.Pool, &rc.runs, func(string) {}))
	srv := httptest.NewServer(r)
	t.Cleanup(srv.Close)
	rc.url = srv.URL + "/orders"
	return rc
}

// crashAnswer is the answer to one order, or the error that ended it.
type crashAnswer struct {
	status   int
	location string
	replayed bool
	body     string
	err      error
}

// postCrashOrder posts the crash tests' order with key1.
func postCrashOrder(url string) crashAnswer {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(`{"item":"book"}`))
	if err != nil {
		return crashAnswer{err: err}
	}
	hr.Header.Set("Idempotency-Key", suite.Key1)
	hr.Header.Set("Authorization", suite.DefaultAuth)
	res, err := http.DefaultClient.Do(hr)
	if err != nil {
		return crashAnswer{err: err}
	}
	defer res.Body.Close()
	var body strings.Builder
	_, err = bufio.NewReader(res.Body).WriteTo(&body)
	return crashAnswer{status: res.StatusCode, location: res.Header.Get("Location"),
		replayed: res.Header.Get("Idempotent-Replayed") == "true", body: body.String(), err: err}
}

// retryAfterLease sends the order to the survivor while the dead child's
// lease holds the key (409), then once the lease has run out, and returns
// that answer.
func (rc *redisCrash) retryAfterLease(t *testing.T) crashAnswer {
	t.Helper()
	held := postCrashOrder(rc.url)
	require.NoError(t, held.err)
	assert.Equal(t, http.StatusConflict, held.status, "the dead process's lease still holds the key: %s", held.body)
	rc.advance(time.Minute + time.Second) // the lease (1 min) ends: nobody renews it
	res := postCrashOrder(rc.url)
	require.NoError(t, res.err)
	require.Equal(t, http.StatusCreated, res.status, res.body)
	return res
}

// TestSpec31_RedisKilledBeforeCommit: the process is killed after the
// handler's INSERT and before its commit. The insert dies with the
// handler's connection, and the key stays in flight until its lease ends;
// then a retry runs the handler once: exactly one order, as on pgstore
// (the handler's own transaction covers this case on any store).
func TestSpec31_RedisKilledBeforeCommit(t *testing.T) {
	rc := newRedisCrash(t, crashInserted)
	assert.Equal(t, 0, rc.db.Count(t, "orders"), "the uncommitted insert is gone")
	res := rc.retryAfterLease(t)
	assert.False(t, res.replayed)
	again := postCrashOrder(rc.url)
	require.NoError(t, again.err)
	assert.True(t, again.replayed)
	assert.Equal(t, res.body, again.body)
	assert.Equal(t, int32(1), rc.runs.Load(), "the handler ran once after the crash")
	assert.Equal(t, 1, rc.db.Count(t, "orders"), "exactly one order")
}

// TestSpec31_RedisKilledAfterCommit: the process is killed after the
// handler committed its order and before the answer, at the last point
// before the middleware completes the record in Redis. This is the window
// that pgstore.Tx closes and the Redis store cannot: the order is
// committed, but Redis still holds the key in flight, so one lease later a
// retry runs the handler again and commits a second order. The measured
// outcome, asserted here, is two orders; on pgstore the same crash leaves
// one (pgstore/crash_test.go, TestSpec31_KilledAfterCommit), because the
// order and the record commit together.
func TestSpec31_RedisKilledAfterCommit(t *testing.T) {
	rc := newRedisCrash(t, crashCommitted)
	require.Equal(t, 1, rc.db.Count(t, "orders"), "the order committed")
	res := rc.retryAfterLease(t)
	assert.False(t, res.replayed, "not a replay: Redis never got the record")
	assert.Equal(t, int32(1), rc.runs.Load(), "the handler ran again")
	assert.Equal(t, 2, rc.db.Count(t, "orders"), "the effect happened twice: the Redis store's window")
	again := postCrashOrder(rc.url)
	require.NoError(t, again.err)
	assert.True(t, again.replayed, "from now on the second answer is replayed")
	assert.Equal(t, res.body, again.body)
}

// TestSpec31_RedisKilledAfterCompletion: the process is killed after the
// middleware completed the record in Redis and before the answer was sent.
// A retry gets the committed answer, replayed, and the handler does not run
// again: exactly one order. Past the completion, Redis closes the window.
func TestSpec31_RedisKilledAfterCompletion(t *testing.T) {
	rc := newRedisCrash(t, crashCompleted)
	require.Equal(t, 1, rc.db.Count(t, "orders"), "the order committed")
	res := postCrashOrder(rc.url)
	require.NoError(t, res.err)
	assert.Equal(t, http.StatusCreated, res.status, res.body)
	assert.True(t, res.replayed, "the recorded answer, replayed")
	var id int64
	require.NoError(t, rc.db.Pool.QueryRow(context.Background(), "SELECT id FROM orders").Scan(&id))
	assert.JSONEq(t, fmt.Sprintf(`{"id":%d,"item":"crash"}`, id), res.body)
	assert.Equal(t, fmt.Sprintf("/orders/%d", id), res.location)
	assert.Equal(t, int32(0), rc.runs.Load(), "the handler did not run again")
	assert.Equal(t, 1, rc.db.Count(t, "orders"), "exactly one order")
}
