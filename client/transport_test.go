package client

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// onlyReader hides every method but Read, so that http.NewRequest cannot
// set GetBody or a length.
type onlyReader struct{ r io.Reader }

func (o onlyReader) Read(p []byte) (int, error) { return o.r.Read(p) }

func TestKeyGeneratedOnceAndReusedOnEveryAttempt(t *testing.T) {
	srv := newFakeServer(t, statuses(503, 502, 201))
	tr, w, a := newTestTransport(t)

	req, err := http.NewRequest(http.MethodPost, srv.URL, strings.NewReader(`{"a":1}`))
	require.NoError(t, err)
	resp, err := (&http.Client{Transport: tr}).Do(req)
	require.NoError(t, err)

	assert.Equal(t, 201, resp.StatusCode)
	assert.Equal(t, "attempt 3", readAll(t, resp))
	got := srv.seen()
	require.Len(t, got, 3)
	key := got[0].key
	u, err := uuid.Parse(key)
	require.NoError(t, err, "the generated key is a UUID")
	assert.Equal(t, uuid.Version(4), u.Version())
	assert.Equal(t, uuid.RFC4122, u.Variant())
	for i, s := range got {
		assert.Equal(t, []string{key}, s.keys, "attempt %d carries the same single key", i+1)
		assert.Equal(t, `{"a":1}`, string(s.body))
	}
	assert.Empty(t, req.Header.Get(KeyHeader), "the caller's request is not modified")
	assert.Equal(t, []time.Duration{250 * time.Millisecond, 500 * time.Millisecond}, w.all())
	for _, at := range a.all() {
		assert.Equal(t, key, at.Key)
	}

	// Another request gets another key.
	resp, err = (&http.Client{Transport: tr}).Post(srv.URL, "text/plain", strings.NewReader("x"))
	require.NoError(t, err)
	readAll(t, resp)
	got = srv.seen()
	require.Len(t, got, 4)
	assert.NotEqual(t, key, got[3].key)
	assert.NotEmpty(t, got[3].key)
}

func TestCallerKeyIsKept(t *testing.T) {
	tests := []struct {
		name   string
		opts   []Option
		header string
		method string
	}{
		{"any value on POST", nil, KeyHeader, http.MethodPost},
		{"on a method outside the list", []Option{WithMethods(http.MethodPatch)}, KeyHeader, http.MethodPost},
		{"on DELETE", nil, KeyHeader, http.MethodDelete},
		{"under another header name", []Option{WithKeyHeader("x-idempotency-key")}, "X-Idempotency-Key", http.MethodPost},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var keys [][]string
			var mu sync.Mutex
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				mu.Lock()
				keys = append(keys, []string{r.Header.Get(KeyHeader), r.Header.Get("X-Idempotency-Key")})
				n := len(keys)
				mu.Unlock()
				if n == 1 {
					w.WriteHeader(http.StatusServiceUnavailable)
				}
			}))
			defer srv.Close()
			tr, _, _ := newTestTransport(t, tc.opts...)

			req, err := http.NewRequest(tc.method, srv.URL, strings.NewReader("body"))
			require.NoError(t, err)
			req.Header.Set(tc.header, "caller's key, not a UUID")
			resp, err := tr.RoundTrip(req)
			require.NoError(t, err)
			readAll(t, resp)

			assert.Equal(t, 200, resp.StatusCode)
			require.Len(t, keys, 2, "retried because the request carries a key")
			for _, k := range keys {
				if tc.header == KeyHeader {
					assert.Equal(t, []string{"caller's key, not a UUID", ""}, k)
				} else {
					assert.Equal(t, []string{"", "caller's key, not a UUID"}, k)
				}
			}
		})
	}
}

func TestRetryNeedsKeyOrIdempotentMethod(t *testing.T) {
	tests := []struct {
		method    string
		callerKey bool
		attempts  int
		keySent   bool
	}{
		{http.MethodPost, false, 1, false}, // not keyed (POST is not in the list) and not idempotent
		{"PURGE", false, 1, false},
		{http.MethodPost, true, 2, true},
		{http.MethodPatch, false, 2, true}, // keyed by the transport
		{http.MethodGet, false, 2, false},
		{http.MethodHead, false, 2, false},
		{http.MethodOptions, false, 2, false},
		{http.MethodTrace, false, 2, false},
		{http.MethodPut, false, 2, false},
		{http.MethodDelete, false, 2, false},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprintf("%s key=%v", tc.method, tc.callerKey), func(t *testing.T) {
			srv := newFakeServer(t, statuses(503, 200))
			tr, _, _ := newTestTransport(t, WithMethods(http.MethodPatch))
			req, err := http.NewRequest(tc.method, srv.URL, nil)
			require.NoError(t, err)
			if tc.callerKey {
				req.Header.Set(KeyHeader, "k1")
			}
			resp, err := tr.RoundTrip(req)
			require.NoError(t, err)
			readAll(t, resp)

			got := srv.seen()
			require.Len(t, got, tc.attempts)
			assert.Equal(t, []int{503, 200}[tc.attempts-1], resp.StatusCode)
			for _, s := range got {
				assert.Equal(t, tc.keySent, s.key != "", "key sent")
			}
		})
	}
}

func TestBodyReplayedByteIdentical(t *testing.T) {
	payload := make([]byte, 300<<10)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range payload {
		payload[i] = byte(rng.UintN(256))
	}
	tests := []struct {
		name string
		body func() io.Reader
	}{
		{"with GetBody", func() io.Reader { return bytes.NewReader(payload) }},
		{"buffered, no GetBody", func() io.Reader { return onlyReader{bytes.NewReader(payload)} }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv := newFakeServer(t, statuses(503, 504, 200))
			tr, _, _ := newTestTransport(t)
			req, err := http.NewRequest(http.MethodPost, srv.URL, tc.body())
			require.NoError(t, err)
			resp, err := tr.RoundTrip(req)
			require.NoError(t, err)
			readAll(t, resp)

			assert.Equal(t, 200, resp.StatusCode)
			got := srv.seen()
			require.Len(t, got, 3)
			want := sha256.Sum256(payload)
			for i, s := range got {
				assert.Equal(t, want, sha256.Sum256(s.body), "attempt %d body", i+1)
			}
		})
	}
}

func TestBodyCap(t *testing.T) {
	const bodyCap = 1024
	tests := []struct {
		name     string
		size     int
		getBody  bool
		attempts int
	}{
		{"over the cap without GetBody is sent once", 4 * bodyCap, false, 1},
		{"at the cap is buffered and retried", bodyCap, false, 3},
		{"over the cap with GetBody is retried", 4 * bodyCap, true, 3},
		{"empty without GetBody is retried", 0, false, 3},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			payload := bytes.Repeat([]byte("0123456789abcdef"), tc.size/16)
			srv := newFakeServer(t, statuses(503))
			tr, _, a := newTestTransport(t, WithBodyCap(bodyCap), WithMaxAttempts(3))
			var body io.Reader = onlyReader{bytes.NewReader(payload)}
			if tc.getBody {
				body = bytes.NewReader(payload)
			}
			req, err := http.NewRequest(http.MethodPost, srv.URL, body)
			require.NoError(t, err)
			resp, err := tr.RoundTrip(req)
			require.NoError(t, err)
			readAll(t, resp)

			assert.Equal(t, 503, resp.StatusCode, "the last answer is returned as it is")
			got := srv.seen()
			require.Len(t, got, tc.attempts)
			require.Len(t, a.all(), tc.attempts)
			assert.False(t, a.all()[tc.attempts-1].Retry)
			for _, s := range got {
				assert.Equal(t, payload, s.body, "the whole body is sent")
			}
		})
	}
}

func TestRetryAfter(t *testing.T) {
	now := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name  string
		code  int
		after string
		opts  []Option
		waits []time.Duration
	}{
		{"503 seconds", 503, "3", nil, []time.Duration{3 * time.Second}},
		{"429 seconds", 429, "2", nil, []time.Duration{2 * time.Second}},
		{"409 in flight", 409, "1", nil, []time.Duration{time.Second}},
		{"429 without Retry-After backs off", 429, "", nil, []time.Duration{DefaultBaseDelay}},
		{"HTTP date", 503, now.Add(7 * time.Second).Format(http.TimeFormat), nil, []time.Duration{7 * time.Second}},
		{"date in the past", 503, now.Add(-time.Hour).Format(http.TimeFormat), nil, []time.Duration{0}},
		{"invalid value backs off", 503, "soon", nil, []time.Duration{DefaultBaseDelay}},
		{"capped by default", 503, "120", nil, []time.Duration{DefaultMaxRetryAfter}},
		{"capped by option", 503, "120", []Option{WithMaxRetryAfter(5 * time.Second)}, []time.Duration{5 * time.Second}},
		{"beyond the time budget: not retried", 503, "3", []Option{WithMaxElapsed(2 * time.Second)}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv := newFakeServer(t, func(n int, w http.ResponseWriter, _ *http.Request) {
				if n == 0 {
					if tc.after != "" {
						w.Header().Set("Retry-After", tc.after)
					}
					w.WriteHeader(tc.code)
				}
			})
			tr, w, _ := newTestTransport(t, append([]Option{withClock(func() time.Time { return now })}, tc.opts...)...)
			resp, err := tr.RoundTrip(mustRequest(t, http.MethodPost, srv.URL, "x"))
			require.NoError(t, err)
			readAll(t, resp)

			assert.Equal(t, tc.waits, w.all())
			if tc.waits == nil {
				assert.Equal(t, tc.code, resp.StatusCode)
				assert.Len(t, srv.seen(), 1)
			} else {
				assert.Equal(t, 200, resp.StatusCode)
				assert.Len(t, srv.seen(), 2)
			}
		})
	}
}

func TestStatusesRetried(t *testing.T) {
	tests := []struct {
		code  int
		after string
		retry bool
	}{
		{200, "", false}, {201, "", false}, {204, "", false}, {304, "", false},
		{400, "", false}, {401, "", false}, {403, "", false}, {404, "", false},
		{409, "", false}, // a mismatch: the caller's bug, surfaced
		{409, "1", true}, // in flight
		{422, "", false}, {422, "1", false},
		{429, "", true}, {429, "1", true},
		{500, "", true}, {501, "", false}, {501, "1", false}, {502, "", true},
		{503, "", true}, {503, "1", true}, {504, "", true}, {507, "", true}, {599, "", true},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprintf("%d Retry-After=%q", tc.code, tc.after), func(t *testing.T) {
			srv := newFakeServer(t, func(n int, w http.ResponseWriter, _ *http.Request) {
				if tc.after != "" {
					w.Header().Set("Retry-After", tc.after)
				}
				w.WriteHeader(tc.code)
			})
			tr, _, _ := newTestTransport(t, WithMaxAttempts(2))
			resp, err := tr.RoundTrip(mustRequest(t, http.MethodPost, srv.URL, "x"))
			require.NoError(t, err)
			readAll(t, resp)
			assert.Equal(t, tc.code, resp.StatusCode)
			want := 1
			if tc.retry {
				want = 2
			}
			assert.Len(t, srv.seen(), want)
		})
	}
}

func TestAttemptsBoundAndDiscardedBodiesClosed(t *testing.T) {
	srv := newFakeServer(t, statuses(503))
	base := &closeTracker{base: &http.Transport{DisableKeepAlives: true}}
	w, a := &waits{}, &attempts{}
	tr := NewTransport(base, WithMaxAttempts(3), withSleep(w.sleep),
		withJitter(func(d time.Duration) time.Duration { return d }), WithOnAttempt(a.hook))

	resp, err := tr.RoundTrip(mustRequest(t, http.MethodPost, srv.URL, "x"))
	require.NoError(t, err)

	assert.Equal(t, 503, resp.StatusCode)
	assert.Len(t, srv.seen(), 3)
	assert.Equal(t, []bool{true, true, false}, base.closed(), "discarded answers are closed, the returned one is not")
	assert.Equal(t, "attempt 3", readAll(t, resp), "the last answer is returned unread")
	assert.Equal(t, []time.Duration{250 * time.Millisecond, 500 * time.Millisecond}, w.all())

	got := a.all()
	require.Len(t, got, 3)
	for i, at := range got {
		assert.Equal(t, i+1, at.N)
		assert.Equal(t, i < 2, at.Retry)
		require.NotNil(t, at.Response)
		assert.NoError(t, at.Err)
		assert.Equal(t, at.Key, at.Request.Header.Get(KeyHeader))
	}
	assert.Equal(t, 500*time.Millisecond, got[1].Wait)
	assert.Zero(t, got[2].Wait)

	t.Run("one attempt", func(t *testing.T) {
		tr, _, _ := newTestTransport(t, WithMaxAttempts(1))
		resp, err := tr.RoundTrip(mustRequest(t, http.MethodPost, srv.URL, "x"))
		require.NoError(t, err)
		readAll(t, resp)
		assert.Len(t, srv.seen(), 4)
	})
}

func TestBackoffGrowsAndIsCapped(t *testing.T) {
	srv := newFakeServer(t, statuses(500))
	tr, w, _ := newTestTransport(t, WithMaxAttempts(7), WithBackoff(100*time.Millisecond, time.Second))
	resp, err := tr.RoundTrip(mustRequest(t, http.MethodPost, srv.URL, "x"))
	require.NoError(t, err)
	readAll(t, resp)
	ms := time.Millisecond
	assert.Equal(t, []time.Duration{100 * ms, 200 * ms, 400 * ms, 800 * ms, 1000 * ms, 1000 * ms}, w.all())
}

func TestMaxElapsedBoundsTotalTime(t *testing.T) {
	srv := newFakeServer(t, statuses(503))
	clock := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	var mu sync.Mutex
	now := func() time.Time { mu.Lock(); defer mu.Unlock(); return clock }
	sleep := func(_ context.Context, d time.Duration) error {
		mu.Lock()
		clock = clock.Add(d)
		mu.Unlock()
		return nil
	}
	tr, _, a := newTestTransport(t, WithMaxAttempts(10), WithBackoff(400*time.Millisecond, time.Hour),
		WithMaxElapsed(time.Second), withClock(now), withSleep(sleep))

	resp, err := tr.RoundTrip(mustRequest(t, http.MethodPost, srv.URL, "x"))
	require.NoError(t, err)
	readAll(t, resp)

	// Waits of 400 ms, then 800 ms would end 1.2 s after the start: stop.
	assert.Len(t, srv.seen(), 2)
	assert.Equal(t, 503, resp.StatusCode)
	require.Len(t, a.all(), 2)
	assert.False(t, a.all()[1].Retry)
}

func TestContext(t *testing.T) {
	t.Run("cancel during the wait stops retries", func(t *testing.T) {
		srv := newFakeServer(t, statuses(503))
		retrying := make(chan struct{}, 1)
		tr, _, _ := newTestTransport(t, withSleep(sleepCtx), WithBackoff(time.Hour, time.Hour),
			WithMaxElapsed(2*time.Hour), WithOnAttempt(func(a Attempt) {
				if a.Retry {
					retrying <- struct{}{}
				}
			}))
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		go func() {
			<-retrying
			cancel()
		}()
		resp, err := tr.RoundTrip(mustRequest(t, http.MethodPost, srv.URL, "x").WithContext(ctx))
		require.ErrorIs(t, err, context.Canceled)
		assert.Nil(t, resp)
		assert.Len(t, srv.seen(), 1)
	})

	t.Run("no retry once the context is done", func(t *testing.T) {
		srv := newFakeServer(t, statuses(503))
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		base := roundTripFunc(func(r *http.Request) (*http.Response, error) {
			resp, err := (&http.Transport{DisableKeepAlives: true}).RoundTrip(r.WithContext(context.Background()))
			cancel() // the caller gives up while the answer arrives
			return resp, err
		})
		tr := NewTransport(base, withSleep(func(context.Context, time.Duration) error {
			t.Error("no wait expected")
			return nil
		}))
		resp, err := tr.RoundTrip(mustRequest(t, http.MethodPost, srv.URL, "x").WithContext(ctx))
		require.NoError(t, err)
		readAll(t, resp)
		assert.Equal(t, 503, resp.StatusCode)
		assert.Len(t, srv.seen(), 1)
	})

	t.Run("no wait past the context deadline", func(t *testing.T) {
		srv := newFakeServer(t, func(_ int, w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Retry-After", "120")
			w.WriteHeader(503)
		})
		tr, w, _ := newTestTransport(t, WithMaxRetryAfter(time.Hour), WithMaxElapsed(time.Hour))
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		resp, err := tr.RoundTrip(mustRequest(t, http.MethodPost, srv.URL, "x").WithContext(ctx))
		require.NoError(t, err)
		readAll(t, resp)
		assert.Equal(t, 503, resp.StatusCode)
		assert.Len(t, srv.seen(), 1)
		assert.Empty(t, w.all())
	})
}

func TestNetworkErrors(t *testing.T) {
	for name, reset := range map[string]bool{"connection closed without an answer": false, "connection reset": true} {
		t.Run(name, func(t *testing.T) {
			srv := newFakeServer(t, func(n int, w http.ResponseWriter, _ *http.Request) {
				if n == 0 {
					closeConn(t, w, reset)
				}
			})
			tr, _, a := newTestTransport(t)
			resp, err := tr.RoundTrip(mustRequest(t, http.MethodPost, srv.URL, "x"))
			require.NoError(t, err)
			readAll(t, resp)
			assert.Equal(t, 200, resp.StatusCode)
			assert.Len(t, srv.seen(), 2)
			require.Len(t, a.all(), 2)
			assert.Error(t, a.all()[0].Err)
			assert.Nil(t, a.all()[0].Response)
		})
	}

	t.Run("timeout awaiting the answer", func(t *testing.T) {
		release := make(chan struct{})
		srv := newFakeServer(t, func(n int, w http.ResponseWriter, _ *http.Request) {
			if n == 0 {
				<-release
			}
		})
		defer close(release)
		// Only the first attempt has a short timeout, so that a slow machine
		// cannot time the second one out too.
		impatient := &http.Transport{DisableKeepAlives: true, ResponseHeaderTimeout: 50 * time.Millisecond}
		patient := &http.Transport{DisableKeepAlives: true}
		calls := 0
		base := roundTripFunc(func(r *http.Request) (*http.Response, error) {
			calls++
			if calls == 1 {
				return impatient.RoundTrip(r)
			}
			return patient.RoundTrip(r)
		})
		a := &attempts{}
		tr := NewTransport(base, withSleep((&waits{}).sleep), WithOnAttempt(a.hook))
		resp, err := tr.RoundTrip(mustRequest(t, http.MethodPost, srv.URL, "x"))
		require.NoError(t, err)
		readAll(t, resp)
		assert.Equal(t, 200, resp.StatusCode)
		require.Len(t, a.all(), 2)
		var ne net.Error
		require.ErrorAs(t, a.all()[0].Err, &ne)
		assert.True(t, ne.Timeout())
	})

	t.Run("connection refused", func(t *testing.T) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		addr := l.Addr().String()
		require.NoError(t, l.Close())
		tr, _, a := newTestTransport(t, WithMaxAttempts(3))
		_, err = tr.RoundTrip(mustRequest(t, http.MethodPost, "http://"+addr, "x"))
		require.Error(t, err)
		assert.Len(t, a.all(), 3, "refused: the request never arrived, so trying again is safe")
	})

	t.Run("untrusted certificate is final", func(t *testing.T) {
		srv := httptest.NewUnstartedServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
		srv.Config.ErrorLog = log.New(io.Discard, "", 0)
		srv.StartTLS()
		defer srv.Close()
		tr, _, a := newTestTransport(t)
		_, err := tr.RoundTrip(mustRequest(t, http.MethodPost, srv.URL, "x"))
		require.Error(t, err)
		assert.Len(t, a.all(), 1)
	})

	t.Run("unsupported scheme is final", func(t *testing.T) {
		tr, _, a := newTestTransport(t)
		_, err := tr.RoundTrip(mustRequest(t, http.MethodPost, "gopher://127.0.0.1/", "x"))
		require.Error(t, err)
		assert.Len(t, a.all(), 1)
	})
}

func TestGetBodyErrorEndsRetries(t *testing.T) {
	srv := newFakeServer(t, statuses(503))
	tr, _, a := newTestTransport(t)
	req := mustRequest(t, http.MethodPost, srv.URL, "x")
	req.GetBody = func() (io.ReadCloser, error) { return nil, errors.New("gone") }
	resp, err := tr.RoundTrip(req)
	require.NoError(t, err)
	readAll(t, resp)
	assert.Equal(t, 503, resp.StatusCode)
	assert.Len(t, srv.seen(), 1)
	require.Len(t, a.all(), 1)
	assert.False(t, a.all()[0].Retry)
}

func TestConcurrentRequestsKeepTheirKeys(t *testing.T) {
	var mu sync.Mutex
	count := map[string]int{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		k := r.Header.Get(KeyHeader) + "|" + string(b)
		mu.Lock()
		count[k]++
		first := count[k] == 1
		mu.Unlock()
		if first {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	}))
	defer srv.Close()
	tr, _, _ := newTestTransport(t)
	hc := &http.Client{Transport: tr}

	const n = 16
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			resp, err := hc.Post(srv.URL, "text/plain", strings.NewReader(fmt.Sprint(i)))
			if assert.NoError(t, err) {
				assert.Equal(t, 200, resp.StatusCode)
				_ = resp.Body.Close()
			}
		})
	}
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	assert.Len(t, count, n, "one key per request, one body per key")
	for k, c := range count {
		assert.Equal(t, 2, c, k)
	}
}

func TestReplayed(t *testing.T) {
	mk := func(v ...string) *http.Response {
		h := http.Header{}
		for _, s := range v {
			h.Add(ReplayedHeader, s)
		}
		return &http.Response{Header: h}
	}
	assert.True(t, Replayed(mk("true")))
	assert.True(t, Replayed(mk("True")))
	assert.False(t, Replayed(mk("false")))
	assert.False(t, Replayed(mk()))
	assert.False(t, Replayed(nil))
}

func TestOptionsPanicOnBadValues(t *testing.T) {
	assert.PanicsWithValue(t, "client: WithMaxAttempts: n must be at least 1", func() { WithMaxAttempts(0) })
	assert.Panics(t, func() { WithMaxElapsed(0) })
	assert.Panics(t, func() { WithBackoff(0, time.Second) })
	assert.Panics(t, func() { WithBackoff(time.Second, time.Millisecond) })
	assert.Panics(t, func() { WithMaxRetryAfter(-1) })
	assert.Panics(t, func() { WithBodyCap(-1) })
	assert.Panics(t, func() { WithKeyHeader("") })
}

func TestNewClientUsesTheTransport(t *testing.T) {
	hc := NewClient(WithMaxAttempts(2))
	tr, ok := hc.Transport.(*Transport)
	require.True(t, ok)
	assert.Equal(t, http.DefaultTransport, tr.base)
	assert.Equal(t, 2, tr.cfg.maxAttempts)
}

// Helpers.

func mustRequest(t *testing.T, method, url, body string) *http.Request {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	require.NoError(t, err)
	return req
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// closeTracker records, for each answer, whether its body was closed.
type closeTracker struct {
	base http.RoundTripper
	mu   sync.Mutex
	bs   []*trackedBody
}

type trackedBody struct {
	io.ReadCloser
	mu     sync.Mutex
	closed bool
}

func (b *trackedBody) Close() error {
	b.mu.Lock()
	b.closed = true
	b.mu.Unlock()
	return b.ReadCloser.Close()
}

func (c *closeTracker) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := c.base.RoundTrip(r)
	if err == nil {
		b := &trackedBody{ReadCloser: resp.Body}
		resp.Body = b
		c.mu.Lock()
		c.bs = append(c.bs, b)
		c.mu.Unlock()
	}
	return resp, err
}

func (c *closeTracker) closed() []bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]bool, len(c.bs))
	for i, b := range c.bs {
		b.mu.Lock()
		out[i] = b.closed
		b.mu.Unlock()
	}
	return out
}

// closeConn takes over the connection of w and closes it without an
// answer; with reset, it sends a TCP RST instead of a FIN.
func closeConn(t *testing.T, w http.ResponseWriter, reset bool) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		t.Errorf("hijack: %v", err)
		return
	}
	if tc, ok := conn.(*net.TCPConn); ok && reset {
		_ = tc.SetLinger(0)
	}
	_ = conn.Close()
}
