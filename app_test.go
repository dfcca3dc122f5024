package idempotency_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	idem "github.com/ginidem/idempotency"
	"github.com/ginidem/idempotency/internal/pgtest"
)

func TestMain(m *testing.M) {
	gin.SetMode(gin.TestMode)
	code := m.Run()
	pgtest.StopShared() // the throwaway Postgres, if a test started it
	os.Exit(code)
}

// Keys used across the tests: UUID v4s, as the default validator wants.
const (
	key1 = "9b2f4b1e-0c1d-4f6a-8e2b-3c4d5e6f7a8b"
	key2 = "1d8c6e2a-7b3f-4c5d-9e1f-2a3b4c5d6e7f"
)

// app is a real Gin engine behind a real HTTP server, with the middleware
// mounted on a set of test routes that count how often they run.
type app struct {
	t       *testing.T
	srv     *httptest.Server
	store   idem.Store
	advance func(time.Duration)
	calls   atomic.Int32  // handler runs, all routes
	gate    chan struct{} // /slow blocks until it is closed or sent to
	entered chan struct{} // /slow reports each entry
	opened  sync.Once
}

// open lets every /slow handler finish. It also runs at cleanup, before the
// server closes, so that a failing test fails instead of hanging.
func (a *app) open() { a.opened.Do(func() { close(a.gate) }) }

// newApp serves the test routes with the middleware (opts) over the store
// of h.
func newApp(t *testing.T, h storeHarness, opts ...idem.Option) *app {
	t.Helper()
	store, advance := h.new(t)
	a := &app{t: t, store: store, advance: advance, gate: make(chan struct{}), entered: make(chan struct{}, 100)}
	r := gin.New()
	r.Use(gin.Recovery())
	r.Use(idem.New(append([]idem.Option{idem.WithStore(store)}, opts...)...))
	a.routes(r)
	a.srv = httptest.NewServer(r)
	t.Cleanup(a.srv.Close)
	t.Cleanup(a.open)
	return a
}

// routes installs the test handlers on r.
func (a *app) routes(r gin.IRoutes) {
	create := func(c *gin.Context) {
		n := a.calls.Add(1)
		body, _ := io.ReadAll(c.Request.Body)
		c.Header("Location", fmt.Sprintf("/things/%d", n))
		c.Header("X-Not-Replayed", "yes")
		c.SetCookie("session", "secret", 60, "/", "", false, true)
		c.JSON(http.StatusCreated, gin.H{"n": n, "echo": string(body)})
	}
	r.POST("/things", create)
	r.PATCH("/things", create)
	r.PUT("/things", create)
	r.POST("/other", create)
	r.POST("/status/:code", func(c *gin.Context) {
		a.calls.Add(1)
		var code int
		fmt.Sscan(c.Param("code"), &code)
		c.String(code, "status %d", code)
	})
	r.POST("/panic", func(c *gin.Context) {
		a.calls.Add(1)
		panic("boom")
	})
	r.POST("/nothing", func(c *gin.Context) { a.calls.Add(1) })
	r.POST("/nocontent", func(c *gin.Context) {
		a.calls.Add(1)
		c.Header("Location", "/things/done")
		c.Status(http.StatusNoContent)
	})
	r.POST("/slow", func(c *gin.Context) {
		n := a.calls.Add(1)
		a.entered <- struct{}{}
		<-a.gate
		c.Header("Location", "/things/slow")
		c.JSON(http.StatusCreated, gin.H{"n": n})
	})
	r.POST("/stream", func(c *gin.Context) {
		a.calls.Add(1)
		c.Header("Location", "/streams/1")
		c.Header("Content-Type", "text/event-stream")
		for i := range 3 {
			fmt.Fprintf(c.Writer, "data: %d\n\n", i)
			c.Writer.Flush()
		}
	})
	r.POST("/big", func(c *gin.Context) {
		a.calls.Add(1)
		c.Header("Location", "/big/1")
		c.Data(http.StatusOK, "application/octet-stream", []byte(strings.Repeat("x", 4096)))
	})
}

// resp is a response, read in full.
type resp struct {
	status int
	header http.Header
	body   string
}

// problem decodes the body as an RFC 9457 problem.
func (r resp) problem(t *testing.T) idem.Problem {
	t.Helper()
	assert.Equal(t, "application/problem+json", r.header.Get("Content-Type"))
	var p idem.Problem
	require.NoError(t, json.Unmarshal([]byte(r.body), &p), r.body)
	assert.Equal(t, r.status, p.Status)
	assert.NotEmpty(t, p.Title)
	assert.NotEmpty(t, p.Detail)
	return p
}

func (r resp) replayed() bool { return r.header.Get("Idempotent-Replayed") == "true" }

// req describes one request to the app.
type req struct {
	method, path, body string
	key                string // "" sends no key
	header             http.Header
	auth               string // Authorization value; "" sends defaultAuth
	anonymous          bool   // send no Authorization at all
}

// defaultAuth identifies the caller of a request that names none: keyed
// requests need a known caller (SPEC 6).
const defaultAuth = "Bearer caller"

func post(path, key, body string) req {
	return req{method: http.MethodPost, path: path, key: key, body: body}
}

func (a *app) do(r req) resp {
	a.t.Helper()
	return a.doCtx(context.Background(), r)
}

func (a *app) doCtx(ctx context.Context, r req) resp {
	a.t.Helper()
	hr, err := http.NewRequestWithContext(ctx, r.method, a.srv.URL+r.path, strings.NewReader(r.body))
	require.NoError(a.t, err)
	for name, values := range r.header {
		hr.Header[name] = values
	}
	if r.key != "" {
		hr.Header.Set("Idempotency-Key", r.key)
	}
	switch {
	case r.auth != "":
		hr.Header.Set("Authorization", r.auth)
	case !r.anonymous && hr.Header.Get("Authorization") == "":
		hr.Header.Set("Authorization", defaultAuth)
	}
	res, err := a.srv.Client().Do(hr)
	require.NoError(a.t, err)
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	require.NoError(a.t, err)
	return resp{status: res.StatusCode, header: res.Header, body: string(body)}
}

// waitEntered waits for n entries into /slow.
func (a *app) waitEntered(n int) {
	a.t.Helper()
	for range n {
		select {
		case <-a.entered:
		case <-time.After(10 * time.Second):
			a.t.Fatal("the slow handler was not entered")
		}
	}
}

// async sends r in the background; the result arrives on the channel.
func (a *app) async(r req) <-chan resp {
	ch := make(chan resp, 1)
	go func() { ch <- a.do(r) }()
	return ch
}

// doBounded sends r and fails, rather than hangs, when no answer comes: a
// duplicate that wrongly ran /slow would wait on the gate.
func (a *app) doBounded(r req) resp {
	a.t.Helper()
	return recv(a.t, a.async(r))
}

func recv(t *testing.T, ch <-chan resp) resp {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("no response")
		return resp{}
	}
}

// countingStore wraps a store and counts its calls; hooks may block or fail
// a call.
type countingStore struct {
	idem.Store
	mu                                  sync.Mutex
	acquires, completes, releases, exts int
	onExtend                            func()
	onAcquire                           func(held *idem.Record)
	fail                                atomic.Bool // every call fails
}

var errStoreDown = fmt.Errorf("store down")

func (s *countingStore) Acquire(ctx context.Context, key string, claim *idem.Record, lease time.Duration) (string, *idem.Record, error) {
	s.mu.Lock()
	s.acquires++
	s.mu.Unlock()
	if s.fail.Load() {
		return "", nil, errStoreDown
	}
	token, held, err := s.Store.Acquire(ctx, key, claim, lease)
	if s.onAcquire != nil {
		s.onAcquire(held)
	}
	return token, held, err
}

func (s *countingStore) Complete(ctx context.Context, key, token string, rec *idem.Record, ttl time.Duration) error {
	s.mu.Lock()
	s.completes++
	s.mu.Unlock()
	if s.fail.Load() {
		return errStoreDown
	}
	return s.Store.Complete(ctx, key, token, rec, ttl)
}

func (s *countingStore) Release(ctx context.Context, key, token string) error {
	s.mu.Lock()
	s.releases++
	s.mu.Unlock()
	if s.fail.Load() {
		return errStoreDown
	}
	return s.Store.Release(ctx, key, token)
}

func (s *countingStore) Extend(ctx context.Context, key, token string, lease time.Duration) error {
	s.mu.Lock()
	s.exts++
	s.mu.Unlock()
	if s.fail.Load() {
		return errStoreDown
	}
	err := s.Store.Extend(ctx, key, token, lease)
	if s.onExtend != nil {
		s.onExtend() // after the store call, so the test sees the renewed lease
	}
	return err
}

func (s *countingStore) counts() (acquires, completes, releases, extends int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.acquires, s.completes, s.releases, s.exts
}

// counted wraps the harness's store in a countingStore; a TxStore stays
// one (see countingTxStore).
func counted(h storeHarness, cs **countingStore) storeHarness {
	return storeHarness{name: h.name, tx: h.tx, new: func(t *testing.T) (idem.Store, func(time.Duration)) {
		s, advance := h.new(t)
		*cs = &countingStore{Store: s}
		if _, ok := s.(idem.TxStore); ok {
			return countingTxStore{*cs}, advance
		}
		return *cs, advance
	}}
}

// countingTxStore is a countingStore over a TxStore that stays a TxStore,
// so that the middleware still runs keyed requests in transactions. The
// commit writes the record, so it counts as a completion, and fails like
// one.
type countingTxStore struct{ *countingStore }

func (s countingTxStore) Begin(ctx context.Context, key, token string) (idem.Tx, error) {
	if s.fail.Load() {
		return nil, errStoreDown
	}
	tx, err := s.Store.(idem.TxStore).Begin(ctx, key, token)
	if err != nil {
		return nil, err
	}
	return &countingTx{Tx: tx, s: s.countingStore}, nil
}

// countingTx counts the commit of a countingTxStore's transaction.
type countingTx struct {
	idem.Tx
	s *countingStore
}

func (tx *countingTx) Commit(ctx context.Context, rec *idem.Record, ttl time.Duration) error {
	tx.s.mu.Lock()
	tx.s.completes++
	tx.s.mu.Unlock()
	if tx.s.fail.Load() {
		_ = tx.Tx.Rollback(ctx)
		return errStoreDown
	}
	return tx.Tx.Commit(ctx, rec, ttl)
}

// events collects the middleware's events.
type events struct {
	mu   sync.Mutex
	list []idem.Event
	ch   chan idem.Event
}

func newEvents() *events { return &events{ch: make(chan idem.Event, 1000)} }

func (e *events) hook(_ context.Context, ev idem.Event) {
	e.mu.Lock()
	e.list = append(e.list, ev)
	e.mu.Unlock()
	e.ch <- ev
}

func (e *events) all() []idem.Event {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]idem.Event(nil), e.list...)
}

func (e *events) kinds() []idem.EventKind {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []idem.EventKind
	for _, ev := range e.list {
		out = append(out, ev.Kind)
	}
	return out
}

// waitFor waits until an event of kind arrives.
func (e *events) waitFor(t *testing.T, kind idem.EventKind) idem.Event {
	t.Helper()
	for {
		select {
		case ev := <-e.ch:
			if ev.Kind == kind {
				return ev
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("no %s event", kind)
			return idem.Event{}
		}
	}
}
