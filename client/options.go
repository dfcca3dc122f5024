package client

import (
	"context"
	"net/http"
	"time"
)

// Defaults used by [NewTransport] and [NewClient] when no option overrides
// them.
const (
	// DefaultMaxAttempts is the number of attempts, the first included.
	DefaultMaxAttempts = 4
	// DefaultMaxElapsed bounds the time from the first attempt to the start
	// of the last one.
	DefaultMaxElapsed = 30 * time.Second
	// DefaultBaseDelay is the backoff ceiling after the first attempt; it
	// doubles after each attempt.
	DefaultBaseDelay = 250 * time.Millisecond
	// DefaultMaxDelay caps the backoff ceiling.
	DefaultMaxDelay = 5 * time.Second
	// DefaultMaxRetryAfter caps the wait asked for by a Retry-After header.
	DefaultMaxRetryAfter = 10 * time.Second
	// DefaultBodyCap is the largest request body buffered for replay when
	// the request has no GetBody.
	DefaultBodyCap = 1 << 20
)

// Header names this package reads and writes.
const (
	// KeyHeader is the request header that carries the idempotency key.
	KeyHeader = "Idempotency-Key"
	// ReplayedHeader is the response header with which a server marks a
	// replayed answer (Stripe, ginidem).
	ReplayedHeader = "Idempotent-Replayed"
)

// Option configures a [Transport]. Options are applied in order over the
// defaults, so a later option wins.
type Option interface {
	apply(*config)
}

type optionFunc func(*config)

func (f optionFunc) apply(c *config) { f(c) }

// Attempt describes one attempt of a request. It is passed to the hook set
// with [WithOnAttempt].
type Attempt struct {
	// N is the attempt number: 1 for the first try.
	N int
	// Key is the idempotency key sent with the attempt, or "" when none.
	Key string
	// Request is the request sent. It must not be modified.
	Request *http.Request
	// Response is the answer, or nil when Err is set. The hook must not read
	// or close its body: when Retry is set the transport drains and closes
	// it, otherwise it is returned to the caller.
	Response *http.Response
	// Err is the transport error, or nil when Response is set.
	Err error
	// Retry reports whether another attempt follows.
	Retry bool
	// Wait is the pause before the next attempt (zero when Retry is false).
	Wait time.Duration
}

// config is the compiled configuration of a Transport.
type config struct {
	header        string
	methods       map[string]bool
	maxAttempts   int
	maxElapsed    time.Duration
	baseDelay     time.Duration
	maxDelay      time.Duration
	maxRetryAfter time.Duration
	bodyCap       int64
	onAttempt     func(Attempt)

	// Seams for tests: the clock, the pause between attempts, and the
	// jitter (a random duration in [0, n]).
	now    func() time.Time
	sleep  func(ctx context.Context, d time.Duration) error
	jitter func(n time.Duration) time.Duration
	newKey func() (string, error)
}

// WithMethods sets the methods whose requests get a generated key when they
// carry none. The default is POST and PATCH. A request of another method is
// sent without a key, and is retried only when its method is idempotent
// (GET, HEAD, OPTIONS, TRACE, PUT, DELETE) or when the caller set a key.
// Method names are compared as given (use upper case).
//
//	client.WithMethods(http.MethodPost, http.MethodPatch, http.MethodDelete)
func WithMethods(methods ...string) Option {
	set := make(map[string]bool, len(methods))
	for _, m := range methods {
		set[m] = true
	}
	return optionFunc(func(c *config) { c.methods = set })
}

// WithKeyHeader sets the name of the header that carries the key, for
// servers that use another name (e.g. "X-Idempotency-Key"). The default is
// [KeyHeader]. It panics on an empty name.
func WithKeyHeader(name string) Option {
	if name == "" {
		panic("client: WithKeyHeader: empty header name")
	}
	name = http.CanonicalHeaderKey(name)
	return optionFunc(func(c *config) { c.header = name })
}

// WithMaxAttempts bounds the number of attempts per request, the first one
// included; 1 disables retries. The default is [DefaultMaxAttempts]. It
// panics when n is less than 1.
func WithMaxAttempts(n int) Option {
	if n < 1 {
		panic("client: WithMaxAttempts: n must be at least 1")
	}
	return optionFunc(func(c *config) { c.maxAttempts = n })
}

// WithMaxElapsed bounds the total time spent on one request: no attempt is
// started after d has passed since the first one began, and no wait that
// would end after that is begun; the last answer is returned instead. The
// default is [DefaultMaxElapsed]. A deadline on the request's context bounds
// the time as well. It panics when d is not positive.
func WithMaxElapsed(d time.Duration) Option {
	if d <= 0 {
		panic("client: WithMaxElapsed: d must be positive")
	}
	return optionFunc(func(c *config) { c.maxElapsed = d })
}

// WithBackoff sets the exponential backoff between attempts without a
// Retry-After: after attempt n the transport waits a random duration
// between 0 and min(maxDelay, base·2^(n-1)) ("full jitter"). The defaults
// are [DefaultBaseDelay] and [DefaultMaxDelay]. It panics when base is not
// positive or maxDelay is less than base.
//
//	client.WithBackoff(100*time.Millisecond, 2*time.Second)
func WithBackoff(base, maxDelay time.Duration) Option {
	if base <= 0 || maxDelay < base {
		panic("client: WithBackoff: need 0 < base <= maxDelay")
	}
	return optionFunc(func(c *config) { c.baseDelay, c.maxDelay = base, maxDelay })
}

// WithMaxRetryAfter caps the wait asked for by a Retry-After header on a
// 429, 503 or 409 answer: a longer wait is cut to d. The default is
// [DefaultMaxRetryAfter]. It panics when d is negative.
func WithMaxRetryAfter(d time.Duration) Option {
	if d < 0 {
		panic("client: WithMaxRetryAfter: d must not be negative")
	}
	return optionFunc(func(c *config) { c.maxRetryAfter = d })
}

// WithBodyCap sets the largest request body, in bytes, that the transport
// buffers so that it can send it again when the request has no GetBody
// (requests built by [http.NewRequest] from a *bytes.Buffer, *bytes.Reader
// or *strings.Reader have one). A larger body without GetBody is streamed
// once and the request is not retried. The default is [DefaultBodyCap]. It
// panics when n is negative.
func WithBodyCap(n int64) Option {
	if n < 0 {
		panic("client: WithBodyCap: n must not be negative")
	}
	return optionFunc(func(c *config) { c.bodyCap = n })
}

// WithOnAttempt sets a hook called after every attempt, with the attempt
// number, its answer or error, and the wait before the next attempt. It is
// meant for logs and metrics. It runs on the goroutine of the request, so it
// must be quick; it may be called concurrently for different requests.
//
//	client.WithOnAttempt(func(a client.Attempt) {
//		slog.Info("attempt", "n", a.N, "err", a.Err, "retry", a.Retry, "wait", a.Wait)
//	})
func WithOnAttempt(hook func(Attempt)) Option {
	return optionFunc(func(c *config) { c.onAttempt = hook })
}
