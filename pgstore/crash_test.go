package pgstore_test

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
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	idem "github.com/ginidem/idempotency"
	"github.com/ginidem/idempotency/internal/pgtest"
	"github.com/ginidem/idempotency/pgstore"
)

// The crash tests' child process: TestMain runs runCrashChild instead of
// the tests when crashChildEnv names a mode.
const (
	crashChildEnv = "PGSTORE_CRASH_CHILD" // crashBeforeCommit, crashAfterCommit or crashPoolAfterCommit
	crashDSNEnv   = "PGSTORE_CRASH_DSN"   // the parent test's database
)

const (
	// crashBeforeCommit: the handler inserts its order through the
	// request's transaction, prints "inserted" and blocks, before the
	// commit.
	crashBeforeCommit = "before-commit"
	// crashAfterCommit: the handler inserts and answers 201; a middleware
	// mounted outside the idempotency middleware prints "committed" once
	// the chain inside it has returned (the record and the order are
	// committed, the answer not yet sent), and blocks.
	crashAfterCommit = "after-commit"
	// crashPoolAfterCommit: the handler ignores the request's transaction
	// and inserts its order through the pool, in a statement of its own,
	// then prints "committed" and blocks, before the middleware writes the
	// record.
	crashPoolAfterCommit = "pool-after-commit"
)

// runCrashChild serves the order handler on a Postgres store and prints
// its URL, then the mode's marker when a request reaches the point where
// the parent kills it. A handler without a transaction prints
// "no-transaction" instead.
func runCrashChild(mode string) {
	pool, err := pgxpool.New(context.Background(), os.Getenv(crashDSNEnv))
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(2)
	}
	r := gin.New()
	if mode == crashAfterCommit {
		r.Use(func(c *gin.Context) {
			c.Next()
			os.Stdout.WriteString("committed\n")
			select {} // killed here, before the server sends the answer
		})
	}
	r.Use(idem.New(idem.WithStore(pgstore.New(pool))))
	r.POST("/orders", func(c *gin.Context) {
		if mode == crashPoolAfterCommit {
			if _, err := pool.Exec(c.Request.Context(), "INSERT INTO orders (item) VALUES ('crash')"); err != nil {
				os.Stdout.WriteString("error: " + err.Error() + "\n")
				c.String(http.StatusInternalServerError, "insert: %v", err)
				return
			}
			os.Stdout.WriteString("committed\n")
			select {} // killed here, before the record is written
		}
		tx := pgstore.Tx(c)
		if tx == nil {
			os.Stdout.WriteString("no-transaction\n")
			c.String(http.StatusInternalServerError, "no transaction")
			return
		}
		var id int64
		if err := tx.QueryRow(c.Request.Context(), "INSERT INTO orders (item) VALUES ('crash') RETURNING id").Scan(&id); err != nil {
			os.Stdout.WriteString("error: " + err.Error() + "\n")
			c.String(http.StatusInternalServerError, "insert: %v", err)
			return
		}
		if mode == crashBeforeCommit {
			os.Stdout.WriteString("inserted\n")
			select {} // killed here, before the commit
		}
		c.Header("Location", fmt.Sprintf("/orders/%d", id))
		c.JSON(http.StatusCreated, gin.H{"id": id, "item": "crash"})
	})
	srv := httptest.NewServer(r)
	os.Stdout.WriteString(srv.URL + "\n")
	select {}
}

// crashChild starts a child in mode on db, sends it one keyed request, and
// kills it with SIGKILL at the mode's marker. It returns the answer the
// request got (an error: the child died first).
func crashChild(t *testing.T, db *pgtest.DB, mode string) resp {
	t.Helper()
	child := exec.Command(os.Args[0], "-test.run=^$")
	child.Env = append(os.Environ(), crashChildEnv+"="+mode, crashDSNEnv+"="+db.DSN)
	child.Stderr = os.Stderr
	out, err := child.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, child.Start())
	t.Cleanup(func() { _ = child.Process.Kill(); _ = child.Wait() })
	lines := bufio.NewScanner(out)
	require.True(t, lines.Scan(), "the child prints its URL")
	url := strings.TrimSpace(lines.Text())
	require.True(t, strings.HasPrefix(url, "http://"), "the child printed %q", url)

	answer := async(url+"/orders", key1, `{"item":"book"}`)
	marker := map[string]string{crashBeforeCommit: "inserted", crashAfterCommit: "committed", crashPoolAfterCommit: "committed"}[mode]
	got := make(chan string, 1)
	go func() {
		for lines.Scan() {
			if line := lines.Text(); line == marker || line == "no-transaction" || strings.HasPrefix(line, "error:") {
				got <- line
				return
			}
		}
		got <- "child exited"
	}()
	select {
	case line := <-got:
		if line != marker {
			_ = child.Process.Kill()
			if line == "no-transaction" {
				t.Fatal("pgstore.Tx(c) was nil in the child's handler: the middleware did not begin the request's transaction on the TxStore")
			}
			t.Fatalf("the child said %q, waiting for %q", line, marker)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("the child did not reach %q", marker)
	}
	require.NoError(t, child.Process.Kill()) // SIGKILL
	_ = child.Wait()
	return recv(t, answer)
}

// survivor serves the order handler on a store of db whose clock the test
// moves forward, as a second process of the service would.
func survivor(t *testing.T, db *pgtest.DB, runs *atomic.Int32, hadTx *atomic.Bool) (url string, advance func(time.Duration)) {
	clock := &shiftedClock{}
	store := pgstore.New(db.Pool, pgstore.WithClock(clock.Now))
	srv := serve(t, newEngine(db, store, runs, hadTx))
	return srv.URL + "/orders", clock.Advance
}

// TestSpec31_KilledBeforeCommit: a process is killed (SIGKILL) after its
// handler inserted an order through the request's transaction and before
// the commit. The insert dies with the connection; the key is still in
// flight until its lease ends, then a retry on another process runs the
// handler once: exactly one order, and later retries replay it.
func TestSpec31_KilledBeforeCommit(t *testing.T) {
	db := pgtest.NewDB(t)
	db.Exec(t, ordersSchema)
	newStore(t, db) // migrated
	first := crashChild(t, db, crashBeforeCommit)
	require.Error(t, first.err, "the killed process never answered")
	assert.Equal(t, 0, db.Count(t, "orders"), "the uncommitted insert is not visible")
	// Postgres ends the dead process's transaction, and with it the key's
	// lock, once it sees the connection closed; the tests of this package
	// run one at a time, so no other advisory lock is held.
	require.Eventually(t, func() bool {
		return db.Count(t, "pg_locks WHERE locktype = 'advisory' AND granted") == 0
	}, 10*time.Second, 10*time.Millisecond, "the killed process's transaction still holds the key's lock")

	var runs atomic.Int32
	var hadTx atomic.Bool
	url, advance := survivor(t, db, &runs, &hadTx)
	res := send(url, key1, `{"item":"book"}`)
	require.NoError(t, res.err)
	assert.Equal(t, http.StatusConflict, res.status, "the dead process's lease still holds the key: %s", res.body)
	assert.Equal(t, int32(0), runs.Load())

	advance(time.Minute + time.Second) // the lease (1 min) ends: nobody renews it
	res = send(url, key1, `{"item":"book"}`)
	require.NoError(t, res.err)
	require.Equal(t, http.StatusCreated, res.status, res.body)
	assert.False(t, res.replayed())
	requireTx(t, &hadTx)
	again := send(url, key1, `{"item":"book"}`)
	require.NoError(t, again.err)
	assert.Equal(t, http.StatusCreated, again.status)
	assert.True(t, again.replayed())
	assert.Equal(t, res.body, again.body)
	assert.Equal(t, int32(1), runs.Load(), "the handler ran once")
	assert.Equal(t, 1, db.Count(t, "orders"), "exactly one order")
}

// TestSpec31_KilledAfterCommit: a process is killed (SIGKILL) after the
// request's transaction committed the order and the record, before the
// answer was sent. A retry on another process gets the committed answer
// (a replay), and the handler does not run again: exactly one order.
func TestSpec31_KilledAfterCommit(t *testing.T) {
	db := pgtest.NewDB(t)
	db.Exec(t, ordersSchema)
	newStore(t, db)
	first := crashChild(t, db, crashAfterCommit)
	require.Error(t, first.err, "the killed process never answered")
	require.Equal(t, 1, db.Count(t, "orders"), "the order committed")

	var runs atomic.Int32
	url, _ := survivor(t, db, &runs, nil)
	res := send(url, key1, `{"item":"book"}`)
	require.NoError(t, res.err)
	assert.Equal(t, http.StatusCreated, res.status, res.body)
	assert.True(t, res.replayed(), "the committed answer, replayed")
	var id int64
	require.NoError(t, db.Pool.QueryRow(context.Background(), "SELECT id FROM orders").Scan(&id))
	assert.JSONEq(t, fmt.Sprintf(`{"id":%d,"item":"crash"}`, id), res.body)
	assert.Equal(t, fmt.Sprintf("/orders/%d", id), res.header.Get("Location"))
	assert.Equal(t, int32(0), runs.Load(), "the handler did not run again")
	assert.Equal(t, 1, db.Count(t, "orders"), "exactly one order")
}

// TestSpec31_KilledAfterCommitWithoutTheTransaction measures the window
// that the request's transaction closes: a handler that ignores it commits
// its order through the pool, and the process is killed (SIGKILL) before
// the middleware writes the record. The key stays in flight; one lease
// later a retry runs the handler again, and there are two orders. This is
// what a handler gets on any store when its effect and the record are two
// commits (TestSpec31_RedisKilledAfterCommit in the root package measures
// the same on Redis); see docs/transactions.md.
func TestSpec31_KilledAfterCommitWithoutTheTransaction(t *testing.T) {
	db := pgtest.NewDB(t)
	db.Exec(t, ordersSchema)
	newStore(t, db)
	first := crashChild(t, db, crashPoolAfterCommit)
	require.Error(t, first.err, "the killed process never answered")
	require.Equal(t, 1, db.Count(t, "orders"), "the order committed")

	var runs atomic.Int32
	url, advance := survivor(t, db, &runs, nil)
	res := send(url, key1, `{"item":"book"}`)
	require.NoError(t, res.err)
	assert.Equal(t, http.StatusConflict, res.status, "the dead process's lease still holds the key: %s", res.body)
	advance(time.Minute + time.Second) // the lease (1 min) ends: nobody renews it
	res = send(url, key1, `{"item":"book"}`)
	require.NoError(t, res.err)
	require.Equal(t, http.StatusCreated, res.status, res.body)
	assert.False(t, res.replayed(), "not a replay: the record was never written")
	assert.Equal(t, int32(1), runs.Load(), "the handler ran again")
	assert.Equal(t, 2, db.Count(t, "orders"), "the effect happened twice")
}
