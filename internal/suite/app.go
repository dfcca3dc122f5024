package suite

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	idem "github.com/ginidem/idempotency"
)

// Keys used across the tests: UUID v4s, as the default validator wants.
const (
	Key1 = "9b2f4b1e-0c1d-4f6a-8e2b-3c4d5e6f7a8b"
	Key2 = "1d8c6e2a-7b3f-4c5d-9e1f-2a3b4c5d6e7f"
)

// App is a real Gin engine behind a real HTTP server, with the middleware
// mounted on a set of test routes that count how often they run.
type App struct {
	t       *testing.T
	Srv     *httptest.Server
	Store   idem.Store
	Advance func(time.Duration)
	Calls   atomic.Int32  // handler runs, all routes
	gate    chan struct{} // /slow blocks until it is closed or sent to
	entered chan struct{} // /slow reports each entry
	opened  sync.Once
}

// Open lets every /slow handler finish. It also runs at cleanup, before the
// server closes, so that a failing test fails instead of hanging.
func (a *App) Open() { a.opened.Do(func() { close(a.gate) }) }

// NewApp serves the test routes with the middleware (opts) over the store
// of h.
func NewApp(t *testing.T, h Harness, opts ...idem.Option) *App {
	t.Helper()
	store, advance := h.New(t)
	a := &App{t: t, Store: store, Advance: advance, gate: make(chan struct{}), entered: make(chan struct{}, 100)}
	r := gin.New()
	r.Use(gin.Recovery())
	r.Use(idem.New(append([]idem.Option{idem.WithStore(store)}, opts...)...))
	a.routes(r)
	a.Srv = httptest.NewServer(r)
	t.Cleanup(a.Srv.Close)
	t.Cleanup(a.Open)
	return a
}

// routes installs the test handlers on r.
func (a *App) routes(r gin.IRoutes) {
	create := func(c *gin.Context) {
		n := a.Calls.Add(1)
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
		a.Calls.Add(1)
		var code int
		fmt.Sscan(c.Param("code"), &code)
		c.String(code, "status %d", code)
	})
	r.POST("/panic", func(c *gin.Context) {
		a.Calls.Add(1)
		panic("boom")
	})
	r.POST("/nothing", func(c *gin.Context) { a.Calls.Add(1) })
	r.POST("/nocontent", func(c *gin.Context) {
		a.Calls.Add(1)
		c.Header("Location", "/things/done")
		c.Status(http.StatusNoContent)
	})
	r.POST("/slow", func(c *gin.Context) {
		n := a.Calls.Add(1)
		a.entered <- struct{}{}
		<-a.gate
		c.Header("Location", "/things/slow")
		c.JSON(http.StatusCreated, gin.H{"n": n})
	})
	r.POST("/stream", func(c *gin.Context) {
		a.Calls.Add(1)
		c.Header("Location", "/streams/1")
		c.Header("Content-Type", "text/event-stream")
		for i := range 3 {
			fmt.Fprintf(c.Writer, "data: %d\n\n", i)
			c.Writer.Flush()
		}
	})
	r.POST("/big", func(c *gin.Context) {
		a.Calls.Add(1)
		c.Header("Location", "/big/1")
		c.Data(http.StatusOK, "application/octet-stream", []byte(strings.Repeat("x", 4096)))
	})
}

// Resp is a response, read in full.
type Resp struct {
	Status int
	Header http.Header
	Body   string
}

// Problem decodes the body as an RFC 9457 Problem.
func (r Resp) Problem(t *testing.T) idem.Problem {
	t.Helper()
	assert.Equal(t, "application/problem+json", r.Header.Get("Content-Type"))
	var p idem.Problem
	require.NoError(t, json.Unmarshal([]byte(r.Body), &p), r.Body)
	assert.Equal(t, r.Status, p.Status)
	assert.NotEmpty(t, p.Title)
	assert.NotEmpty(t, p.Detail)
	return p
}

// Replayed reports whether the answer is a replay.
func (r Resp) Replayed() bool { return r.Header.Get("Idempotent-Replayed") == "true" }

// Req describes one request to the app.
type Req struct {
	Method, Path, Body string
	Key                string // "" sends no key
	Header             http.Header
	Auth               string // Authorization value; "" sends defaultAuth
	Anonymous          bool   // send no Authorization at all
}

// DefaultAuth identifies the caller of a request that names none: keyed
// requests need a known caller (SPEC 6).
const DefaultAuth = "Bearer caller"

// Post is a POST of body to path, with key ("" sends none).
func Post(path, key, body string) Req {
	return Req{Method: http.MethodPost, Path: path, Key: key, Body: body}
}

// Do sends r and returns the answer, read in full.
func (a *App) Do(r Req) Resp {
	a.t.Helper()
	return a.DoCtx(context.Background(), r)
}

// DoCtx sends r with ctx and returns the answer, read in full.
func (a *App) DoCtx(ctx context.Context, r Req) Resp {
	a.t.Helper()
	hr, err := http.NewRequestWithContext(ctx, r.Method, a.Srv.URL+r.Path, strings.NewReader(r.Body))
	require.NoError(a.t, err)
	for name, values := range r.Header {
		hr.Header[name] = values
	}
	if r.Key != "" {
		hr.Header.Set("Idempotency-Key", r.Key)
	}
	switch {
	case r.Auth != "":
		hr.Header.Set("Authorization", r.Auth)
	case !r.Anonymous && hr.Header.Get("Authorization") == "":
		hr.Header.Set("Authorization", DefaultAuth)
	}
	res, err := a.Srv.Client().Do(hr)
	require.NoError(a.t, err)
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	require.NoError(a.t, err)
	return Resp{Status: res.StatusCode, Header: res.Header, Body: string(body)}
}

// WaitEntered waits for n entries into /slow.
func (a *App) WaitEntered(n int) {
	a.t.Helper()
	for range n {
		select {
		case <-a.entered:
		case <-time.After(10 * time.Second):
			a.t.Fatal("the slow handler was not entered")
		}
	}
}

// Async sends r in the background; the result arrives on the channel.
func (a *App) Async(r Req) <-chan Resp {
	ch := make(chan Resp, 1)
	go func() { ch <- a.Do(r) }()
	return ch
}

// DoBounded sends r and fails, rather than hangs, when no answer comes: a
// duplicate that wrongly ran /slow would wait on the gate.
func (a *App) DoBounded(r Req) Resp {
	a.t.Helper()
	return Recv(a.t, a.Async(r))
}

// Recv returns the answer on ch, and fails the test when none comes.
func Recv(t *testing.T, ch <-chan Resp) Resp {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("no response")
		return Resp{}
	}
}

// CountingStore wraps a store and counts its calls; hooks may block or fail
// a call.
type CountingStore struct {
	idem.Store
	mu                                  sync.Mutex
	acquires, completes, releases, exts int
	OnExtend                            func()
	OnAcquire                           func(held *idem.Record)
	Fail                                atomic.Bool // every call fails
}

// ErrStoreDown is the error of a CountingStore call told to fail.
var ErrStoreDown = fmt.Errorf("store down")

// Acquire counts the call and passes it on.
func (s *CountingStore) Acquire(ctx context.Context, key string, claim *idem.Record, lease time.Duration) (string, *idem.Record, error) {
	s.mu.Lock()
	s.acquires++
	s.mu.Unlock()
	if s.Fail.Load() {
		return "", nil, ErrStoreDown
	}
	token, held, err := s.Store.Acquire(ctx, key, claim, lease)
	if s.OnAcquire != nil {
		s.OnAcquire(held)
	}
	return token, held, err
}

// Complete counts the call and passes it on.
func (s *CountingStore) Complete(ctx context.Context, key, token string, rec *idem.Record, ttl time.Duration) error {
	s.mu.Lock()
	s.completes++
	s.mu.Unlock()
	if s.Fail.Load() {
		return ErrStoreDown
	}
	return s.Store.Complete(ctx, key, token, rec, ttl)
}

// Release counts the call and passes it on.
func (s *CountingStore) Release(ctx context.Context, key, token string) error {
	s.mu.Lock()
	s.releases++
	s.mu.Unlock()
	if s.Fail.Load() {
		return ErrStoreDown
	}
	return s.Store.Release(ctx, key, token)
}

// Extend counts the call and passes it on.
func (s *CountingStore) Extend(ctx context.Context, key, token string, lease time.Duration) error {
	s.mu.Lock()
	s.exts++
	s.mu.Unlock()
	if s.Fail.Load() {
		return ErrStoreDown
	}
	err := s.Store.Extend(ctx, key, token, lease)
	if s.OnExtend != nil {
		s.OnExtend() // after the store call, so the test sees the renewed lease
	}
	return err
}

// Counts returns how many calls of each kind the store got.
func (s *CountingStore) Counts() (acquires, completes, releases, extends int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.acquires, s.completes, s.releases, s.exts
}

// Counted wraps the harness's store in a countingStore; a TxStore stays
// one (see countingTxStore).
func Counted(h Harness, cs **CountingStore) Harness {
	return Harness{Name: h.Name, Tx: h.Tx, New: func(t *testing.T) (idem.Store, func(time.Duration)) {
		s, advance := h.New(t)
		*cs = &CountingStore{Store: s}
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
type countingTxStore struct{ *CountingStore }

func (s countingTxStore) Begin(ctx context.Context, key, token string) (idem.Tx, error) {
	if s.Fail.Load() {
		return nil, ErrStoreDown
	}
	tx, err := s.Store.(idem.TxStore).Begin(ctx, key, token)
	if err != nil {
		return nil, err
	}
	return &countingTx{Tx: tx, s: s.CountingStore}, nil
}

// countingTx counts the commit of a countingTxStore's transaction.
type countingTx struct {
	idem.Tx
	s *CountingStore
}

func (tx *countingTx) Commit(ctx context.Context, rec *idem.Record, ttl time.Duration) error {
	tx.s.mu.Lock()
	tx.s.completes++
	tx.s.mu.Unlock()
	if tx.s.Fail.Load() {
		_ = tx.Tx.Rollback(ctx)
		return ErrStoreDown
	}
	return tx.Tx.Commit(ctx, rec, ttl)
}

// Events collects the middleware's Events.
type Events struct {
	mu   sync.Mutex
	list []idem.Event
	ch   chan idem.Event
}

// NewEvents returns an empty collector; pass its Hook to WithEventHook.
func NewEvents() *Events { return &Events{ch: make(chan idem.Event, 1000)} }

// Hook is the event hook that collects.
func (e *Events) Hook(_ context.Context, ev idem.Event) {
	e.mu.Lock()
	e.list = append(e.list, ev)
	e.mu.Unlock()
	e.ch <- ev
}

// All returns the events so far.
func (e *Events) All() []idem.Event {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]idem.Event(nil), e.list...)
}

// Kinds returns the kinds of the events so far.
func (e *Events) Kinds() []idem.EventKind {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []idem.EventKind
	for _, ev := range e.list {
		out = append(out, ev.Kind)
	}
	return out
}

// WaitFor waits until an event of kind arrives.
func (e *Events) WaitFor(t *testing.T, kind idem.EventKind) idem.Event {
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

// WaitForKey waits for an event of kind for the store key key, skipping
// the others.
func (e *Events) WaitForKey(t *testing.T, kind idem.EventKind, key string) idem.Event {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case ev := <-e.ch:
			if ev.Kind == kind && ev.Key == key {
				return ev
			}
		case <-deadline:
			t.Fatalf("no %s event for %s", kind, key)
			return idem.Event{}
		}
	}
}
