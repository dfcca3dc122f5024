package client

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Test seams: options that replace the clock, the pause and the jitter.

func withSleep(f func(ctx context.Context, d time.Duration) error) Option {
	return optionFunc(func(c *config) { c.sleep = f })
}

func withClock(now func() time.Time) Option {
	return optionFunc(func(c *config) { c.now = now })
}

func withJitter(f func(time.Duration) time.Duration) Option {
	return optionFunc(func(c *config) { c.jitter = f })
}

// waits records the pauses asked for, and returns at once (unless the
// context is done), so that tests never sleep.
type waits struct {
	mu sync.Mutex
	ds []time.Duration
}

func (w *waits) sleep(ctx context.Context, d time.Duration) error {
	w.mu.Lock()
	w.ds = append(w.ds, d)
	w.mu.Unlock()
	return ctx.Err()
}

func (w *waits) all() []time.Duration {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]time.Duration(nil), w.ds...)
}

// attempts collects what the WithOnAttempt hook saw.
type attempts struct {
	mu sync.Mutex
	as []Attempt
}

func (a *attempts) hook(at Attempt) {
	a.mu.Lock()
	a.as = append(a.as, at)
	a.mu.Unlock()
}

func (a *attempts) all() []Attempt {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]Attempt(nil), a.as...)
}

// seen is one request as a fake server received it.
type seen struct {
	method string
	key    string
	keys   []string // every value of the key header
	body   []byte
}

// fakeServer answers the n-th request (0-based) with respond(n, w, r) and
// records what it received.
type fakeServer struct {
	*httptest.Server
	mu   sync.Mutex
	reqs []seen
}

func newFakeServer(t *testing.T, respond func(n int, w http.ResponseWriter, r *http.Request)) *fakeServer {
	t.Helper()
	fs := &fakeServer{}
	fs.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		if err != nil {
			return // the client went away mid-body
		}
		fs.mu.Lock()
		n := len(fs.reqs)
		fs.reqs = append(fs.reqs, seen{
			method: r.Method,
			key:    r.Header.Get(KeyHeader),
			keys:   r.Header.Values(KeyHeader),
			body:   b,
		})
		fs.mu.Unlock()
		respond(n, w, r)
	}))
	t.Cleanup(fs.Close)
	return fs
}

func (fs *fakeServer) seen() []seen {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	return append([]seen(nil), fs.reqs...)
}

// statuses answers the n-th request with codes[n] (the last code repeats)
// and a body "attempt n+1".
func statuses(codes ...int) func(int, http.ResponseWriter, *http.Request) {
	return func(n int, w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(codes[min(n, len(codes)-1)])
		_, _ = io.WriteString(w, "attempt "+string(rune('1'+n)))
	}
}

// newTestTransport builds a Transport over a fresh base transport that keeps
// no idle connections (so net/http never resends a request on its own), with
// waits recorded instead of slept, full jitter replaced by its ceiling, and
// the attempts collected.
func newTestTransport(t *testing.T, opts ...Option) (*Transport, *waits, *attempts) {
	t.Helper()
	base := &http.Transport{DisableKeepAlives: true}
	t.Cleanup(base.CloseIdleConnections)
	w, a := &waits{}, &attempts{}
	all := append([]Option{withSleep(w.sleep), withJitter(func(d time.Duration) time.Duration { return d }), WithOnAttempt(a.hook)}, opts...)
	return NewTransport(base, all...), w, a
}

func readAll(t *testing.T, resp *http.Response) string {
	t.Helper()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.NoError(t, resp.Body.Close())
	return string(b)
}
