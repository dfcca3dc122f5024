package pgstore_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	idem "github.com/ginidem/idempotency"
	"github.com/ginidem/idempotency/internal/pgtest"
	"github.com/ginidem/idempotency/pgstore"
)

func TestMain(m *testing.M) {
	gin.SetMode(gin.TestMode)
	if mode := os.Getenv(crashChildEnv); mode != "" {
		runCrashChild(mode) // never returns: the parent kills it
	}
	code := m.Run()
	pgtest.StopShared()
	os.Exit(code)
}

// Keys used across the tests: UUID v4s, as the middleware's default
// validator wants.
const (
	key1 = "9b2f4b1e-0c1d-4f6a-8e2b-3c4d5e6f7a8b"
	key2 = "1d8c6e2a-7b3f-4c5d-9e1f-2a3b4c5d6e7f"
)

// defaultAuth identifies the caller: keyed requests need a known caller.
const defaultAuth = "Bearer caller"

// ordersSchema is the handler's own table, in the test's schema.
const ordersSchema = `CREATE TABLE orders (
    id   bigserial PRIMARY KEY,
    item text NOT NULL
)`

// querier is what the order handler writes through: the request's
// transaction, or the pool.
type querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// orderHandler inserts one order, through the request's transaction when
// the middleware gave it one (else through the pool, as a handler that
// does not use the transaction), and answers 201 with its Location. It
// counts its runs and reports in tx whether it had a transaction.
func orderHandler(pool *pgxpool.Pool, runs *atomic.Int32, hadTx *atomic.Bool) gin.HandlerFunc {
	return func(c *gin.Context) {
		runs.Add(1)
		body, _ := io.ReadAll(c.Request.Body)
		var q querier = pool
		if tx := pgstore.Tx(c); tx != nil {
			q = tx
			if hadTx != nil {
				hadTx.Store(true)
			}
		}
		var id int64
		if err := q.QueryRow(c.Request.Context(), "INSERT INTO orders (item) VALUES ($1) RETURNING id", string(body)).Scan(&id); err != nil {
			c.String(http.StatusInternalServerError, "insert: %v", err)
			return
		}
		c.Header("Location", fmt.Sprintf("/orders/%d", id))
		c.JSON(http.StatusCreated, gin.H{"id": id, "item": string(body)})
	}
}

// resp is a response, read in full, or the error that ended the request.
type resp struct {
	status int
	header http.Header
	body   string
	err    error
}

func (r resp) replayed() bool { return r.header.Get("Idempotent-Replayed") == "true" }

// send posts body to url with an idempotency key (none when key is "").
func send(url, key, body string) resp {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		return resp{err: err}
	}
	if key != "" {
		hr.Header.Set("Idempotency-Key", key)
	}
	hr.Header.Set("Authorization", defaultAuth)
	res, err := http.DefaultClient.Do(hr)
	if err != nil {
		return resp{err: err}
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	return resp{status: res.StatusCode, header: res.Header, body: string(b), err: err}
}

// async sends in the background; the answer arrives on the channel.
func async(url, key, body string) <-chan resp {
	ch := make(chan resp, 1)
	go func() { ch <- send(url, key, body) }()
	return ch
}

func recv(t *testing.T, ch <-chan resp) resp {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(30 * time.Second):
		t.Fatal("no response")
		return resp{}
	}
}

// serve runs r behind a real HTTP server for the test.
func serve(t *testing.T, r http.Handler) *httptest.Server {
	srv := httptest.NewServer(r)
	t.Cleanup(srv.Close)
	return srv
}

// newEngine is a Gin engine with the middleware on store (and opts) and the
// order handler on POST /orders.
func newEngine(db *pgtest.DB, store idem.Store, runs *atomic.Int32, hadTx *atomic.Bool, opts ...idem.Option) *gin.Engine {
	r := gin.New()
	r.Use(gin.Recovery())
	r.Use(idem.New(append([]idem.Option{idem.WithStore(store)}, opts...)...))
	r.POST("/orders", orderHandler(db.Pool, runs, hadTx))
	return r
}

// requireTx fails the test, with the reason, when the handler ran without
// a transaction: the middleware did not begin one on the TxStore.
func requireTx(t *testing.T, hadTx *atomic.Bool) {
	t.Helper()
	require.True(t, hadTx.Load(), "pgstore.Tx(c) was nil in the handler: the middleware did not begin the request's transaction on the TxStore")
}
