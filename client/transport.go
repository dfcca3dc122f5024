package client

import (
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/google/uuid"
)

// Transport is an [http.RoundTripper] that adds an idempotency key to the
// requests that need one and retries them safely. Build it with
// [NewTransport]; the zero value is not usable. It is safe for concurrent
// use by multiple goroutines.
//
// For each request, RoundTrip:
//
//  1. keeps the caller's Idempotency-Key, or, for a method in [WithMethods]
//     (POST and PATCH by default), generates a UUID v4 and sets it on a
//     copy of the request; the request passed in is never modified;
//  2. sends the request and, on a retryable answer, sends it again with the
//     same key and the same body bytes, after a backoff or the server's
//     Retry-After, until an answer is final, the attempts or the time run
//     out ([WithMaxAttempts], [WithMaxElapsed]), or the request's context
//     is done;
//  3. returns the last answer (or error) as it is: a 503 after the last
//     attempt is returned as a 503, not turned into an error.
//
// A request is retried only when it carries a key or its method is
// idempotent per RFC 9110 (GET, HEAD, OPTIONS, TRACE, PUT, DELETE), and only
// when its body can be sent again (see [WithBodyCap]). The answers and
// errors retried:
//
//	network error that may have lost the request or the answer
//	(connection reset or refused, EOF, timeout)   retry after backoff
//	500, 502, 503, 504 and any 5xx except 501     retry after backoff, or Retry-After
//	429 Too Many Requests                         retry after backoff, or Retry-After
//	409 Conflict with Retry-After (in flight)     retry after Retry-After
//	409 or 422 without Retry-After (mismatch)     returned, never retried
//	any other answer                              returned
//
// Waits asked for by Retry-After are capped by [WithMaxRetryAfter]. The
// body of an answer that is not returned is drained and closed.
//
// Note that net/http's own Transport may also resend a request carrying an
// Idempotency-Key once, without telling, when a reused keep-alive
// connection turns out to be closed; such a resend is not an attempt here.
type Transport struct {
	base http.RoundTripper
	cfg  config
}

var _ http.RoundTripper = (*Transport)(nil)

// NewTransport returns a [Transport] that sends requests through base
// (http.DefaultTransport when base is nil), configured by opts over safe
// defaults: keys on POST and PATCH, 4 attempts within 30 s, backoff from
// 250 ms up to 5 s, Retry-After honoured up to 10 s, bodies up to 1 MiB
// buffered for replay.
//
//	hc := &http.Client{Transport: client.NewTransport(myTransport, client.WithMaxAttempts(6))}
func NewTransport(base http.RoundTripper, opts ...Option) *Transport {
	if base == nil {
		base = http.DefaultTransport
	}
	t := &Transport{base: base, cfg: config{
		header:        KeyHeader,
		methods:       map[string]bool{http.MethodPost: true, http.MethodPatch: true},
		maxAttempts:   DefaultMaxAttempts,
		maxElapsed:    DefaultMaxElapsed,
		baseDelay:     DefaultBaseDelay,
		maxDelay:      DefaultMaxDelay,
		maxRetryAfter: DefaultMaxRetryAfter,
		bodyCap:       DefaultBodyCap,
		now:           time.Now,
		sleep:         sleepCtx,
		jitter:        fullJitter,
		newKey:        newUUID,
	}}
	for _, o := range opts {
		o.apply(&t.cfg)
	}
	return t
}

// NewClient returns an [http.Client] whose Transport is
// NewTransport(http.DefaultTransport, opts...). Set the client's Timeout to
// bound a whole call, retries included, as with any client.
//
//	hc := client.NewClient()
//	resp, err := hc.Post(url, "application/json", strings.NewReader(`{"n":1}`))
func NewClient(opts ...Option) *http.Client {
	return &http.Client{Transport: NewTransport(nil, opts...)}
}

// Replayed reports whether resp is a replay of an answer recorded earlier
// by the server: its Idempotent-Replayed header is "true". A retry whose
// first attempt did reach the server usually ends in a replay.
func Replayed(resp *http.Response) bool {
	return resp != nil && strings.EqualFold(strings.TrimSpace(resp.Header.Get(ReplayedHeader)), "true")
}

// RoundTrip implements [http.RoundTripper]; see [Transport] for what it
// does.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	c := &t.cfg
	ctx := req.Context()

	key := req.Header.Get(c.header)
	generated := false
	if key == "" && c.methods[req.Method] {
		k, err := c.newKey()
		if err != nil {
			closeBody(req)
			return nil, fmt.Errorf("client: generate idempotency key: %w", err)
		}
		key, generated = k, true
	}
	retryable := key != "" || idempotentMethod(req.Method)
	b, err := newBody(req, retryable, c.bodyCap)
	if err != nil {
		return nil, err
	}
	retryable = retryable && b.get != nil

	start := c.now()
	next := b.first
	for n := 1; ; n++ {
		r := req.Clone(ctx)
		if r.Header == nil {
			r.Header = make(http.Header)
		}
		if generated {
			r.Header.Set(c.header, key)
		}
		r.Body, r.GetBody, r.ContentLength = next, b.get, b.length

		resp, err := t.base.RoundTrip(r)

		retry, wait := t.retry(r, n, start, resp, err, retryable)
		if retry {
			var gerr error
			if next, gerr = b.get(); gerr != nil {
				retry, wait = false, 0
			}
		}
		if c.onAttempt != nil {
			c.onAttempt(Attempt{N: n, Key: key, Request: r, Response: resp, Err: err, Retry: retry, Wait: wait})
		}
		if !retry {
			return resp, err
		}
		discard(resp)
		if err := c.sleep(ctx, wait); err != nil {
			_ = next.Close()
			return nil, fmt.Errorf("client: stopped waiting to retry after attempt %d: %w", n, err)
		}
	}
}

// retry decides whether attempt n, which ended in resp or err, is followed
// by another, and after which wait.
func (t *Transport) retry(r *http.Request, n int, start time.Time, resp *http.Response, err error, retryable bool) (bool, time.Duration) {
	c := &t.cfg
	var ok bool
	var after string
	if err != nil {
		ok = retryError(err)
	} else {
		ok, after = retryStatus(resp)
	}
	ctx := r.Context()
	if !ok || !retryable || n >= c.maxAttempts || ctx.Err() != nil {
		return false, 0
	}
	now := c.now()
	wait := c.jitter(c.backoff(n))
	if d, has := parseRetryAfter(after, now); has {
		wait = min(d, c.maxRetryAfter)
	}
	end := now.Add(wait)
	if end.Sub(start) > c.maxElapsed {
		return false, 0
	}
	if dl, has := ctx.Deadline(); has && time.Until(dl) <= wait {
		return false, 0
	}
	return true, wait
}

// CloseIdleConnections closes the idle connections of the base transport,
// when it has such a method; [http.Client.CloseIdleConnections] calls it.
func (t *Transport) CloseIdleConnections() {
	if ci, ok := t.base.(interface{ CloseIdleConnections() }); ok {
		ci.CloseIdleConnections()
	}
}

func closeBody(req *http.Request) {
	if req.Body != nil {
		_ = req.Body.Close()
	}
}

func newUUID() (string, error) {
	u, err := uuid.NewRandom()
	if err != nil {
		return "", err
	}
	return u.String(), nil
}
