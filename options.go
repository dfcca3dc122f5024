package idempotency

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/gin-gonic/gin"
)

// Option configures the middleware returned by [New].
type Option interface{ apply(*config) }

type optionFunc func(*config)

func (f optionFunc) apply(c *config) { f(c) }

// config is the private, compiled configuration of one middleware.
type config struct {
	store           Store
	ttl             time.Duration
	lease           time.Duration
	storeTimeout    time.Duration
	waitInFlight    time.Duration
	keyHeaders      []string
	validate        KeyValidator
	required        bool
	methods         []string
	skip            func(*gin.Context) bool // nil: no request is skipped
	keepError       func(error) bool        // a Runner keeps these errors; nil: none
	scope           func(*gin.Context) string
	anonymous       bool
	fingerprint     []FingerprintPart
	maxBody         int64
	maxResponse     int
	replayHeaders   map[string]bool
	keep            func(status int) bool
	mismatchStatus  int
	replayedHeader  string
	conflictMode    bool
	failOpen        bool
	breakerFailures int
	breakerProbe    time.Duration
	problem         ProblemWriter
	onEvent         func(context.Context, Event)
	noKeyInEvents   bool // WithoutKeyInEvents (event.go)
	logger          *slog.Logger
}

// defaultReplayHeaders are the response headers a replay sends again.
// Content-Encoding is on the list because a body recorded after an inner
// compression middleware means nothing without it.
var defaultReplayHeaders = []string{
	"Location", "Content-Type", "Content-Encoding", "Content-Language",
	"Cache-Control", "ETag", "Last-Modified", "Link", "Vary",
}

func defaultConfig() *config {
	c := &config{
		ttl:             24 * time.Hour,
		lease:           time.Minute,
		storeTimeout:    time.Second,
		keyHeaders:      []string{"Idempotency-Key"},
		validate:        KeyUUID,
		methods:         []string{http.MethodPost, http.MethodPatch},
		scope:           AuthorizationScope,
		fingerprint:     []FingerprintPart{QueryString(), RawBody()},
		maxBody:         1 << 20,
		maxResponse:     1 << 20,
		replayHeaders:   make(map[string]bool),
		keep:            DefaultKeep,
		mismatchStatus:  http.StatusConflict,
		replayedHeader:  "Idempotent-Replayed",
		problem:         WriteProblem,
		breakerFailures: 5,
		breakerProbe:    defaultBreakerProbe,
	}
	for _, h := range defaultReplayHeaders {
		c.replayHeaders[http.CanonicalHeaderKey(h)] = true
	}
	return c
}

// mustPositive panics, at construction, on a non-positive duration or size.
func mustPositive[T int | int64 | time.Duration](name string, v T) {
	if v <= 0 {
		panic(fmt.Sprintf("idempotency: %s must be positive, got %v", name, v))
	}
}

// WithStore sets the store that keeps the records (default: a new
// [MemoryStore] per middleware). Share one store between middlewares that
// must see each other's keys, and use a Redis store to share keys between
// processes. It panics on a nil store, and on a store whose Validate
// method returns an error (a zero [MemoryStore], [RedisStore] or pgstore
// Store, which would fail every keyed request: make them with their
// constructors).
func WithStore(s Store) Option {
	switch s := s.(type) {
	case nil:
		panic("idempotency: WithStore(nil)")
	case interface{ Validate() error }: // every store of this module, and pgstore's
		if err := s.Validate(); err != nil {
			panic("idempotency: WithStore with an unusable store: " + err.Error())
		}
	}
	return optionFunc(func(c *config) { c.store = s })
}

// WithTTL sets how long a completed record is kept and replayed (default
// 24 h). After it, the key is new again.
func WithTTL(d time.Duration) Option {
	mustPositive("TTL", d)
	return optionFunc(func(c *config) { c.ttl = d })
}

// WithLease sets the in-flight lease (default 1 minute). The middleware
// renews the lease every third of it while the handler runs, so a slow
// handler keeps its key; a process that dies stops renewing and its key is
// free one lease later.
func WithLease(d time.Duration) Option {
	mustPositive("lease", d)
	return optionFunc(func(c *config) { c.lease = d })
}

// WithStoreTimeout sets the deadline of every store call (default 1 s). A
// [MemoryStore] answers from memory and cannot hang, so its calls skip the
// timer; a store that wraps one gets the deadline.
func WithStoreTimeout(d time.Duration) Option {
	mustPositive("store timeout", d)
	return optionFunc(func(c *config) { c.storeTimeout = d })
}

// WithWaitInFlight makes a duplicate that arrives while the first request
// is still running wait up to d for it to finish and then get the replay,
// instead of an immediate 409. The wait polls the store with backoff, so it
// works across processes that share a store; when d passes, the answer is
// 409 with Retry-After as without the option.
func WithWaitInFlight(d time.Duration) Option {
	mustPositive("wait", d)
	return optionFunc(func(c *config) { c.waitInFlight = d })
}

// WithKeyHeaders sets the header names that carry the key (default
// "Idempotency-Key"). Two different values in one request get 400.
//
//	idempotency.WithKeyHeaders("Idempotency-Key", "X-Idempotency-Key")
func WithKeyHeaders(names ...string) Option {
	if len(names) == 0 {
		panic("idempotency: WithKeyHeaders needs at least one name")
	}
	canonical := make([]string, len(names))
	for i, n := range names {
		if n == "" {
			panic("idempotency: WithKeyHeaders with an empty name")
		}
		canonical[i] = http.CanonicalHeaderKey(n)
	}
	return optionFunc(func(c *config) { c.keyHeaders = canonical })
}

// WithKeyValidator sets what a valid key is (default [KeyUUID]: a UUID of
// any RFC 9562 version). See [KeyUUIDv4], [KeyAnyUUID] and [KeyPrintable],
// or pass your own function.
//
//	idempotency.WithKeyValidator(idempotency.KeyUUIDv4) // UUID v4 only
func WithKeyValidator(v KeyValidator) Option {
	if v == nil {
		panic("idempotency: WithKeyValidator(nil)")
	}
	return optionFunc(func(c *config) { c.validate = v })
}

// RequireKey makes the key mandatory: a request with one of the middleware's
// methods but without a key gets 400. Mount such a middleware on the routes
// or groups that need it.
func RequireKey() Option {
	return optionFunc(func(c *config) { c.required = true })
}

// WithMethods sets the methods the middleware handles (default POST and
// PATCH). A key on another method is ignored.
func WithMethods(methods ...string) Option {
	if len(methods) == 0 {
		panic("idempotency: WithMethods needs at least one method")
	}
	return optionFunc(func(c *config) { c.methods = append([]string(nil), methods...) })
}

// WithSkip makes the middleware step aside for the requests skip reports
// true for: such a request runs as if the middleware were not there, with
// no store call, no body buffering and no check of its key, which the
// handler may still read from the header itself. skip runs on the request's
// goroutine, before anything else the middleware does with a request of one
// of its methods, and must be quick. Where middlewares are nested, the one
// that handles the key (the innermost) asks its own skip; the others have
// already stepped aside.
//
//	idempotency.WithSkip(func(c *gin.Context) bool { return c.GetHeader("X-Dry-Run") != "" })
func WithSkip(skip func(*gin.Context) bool) Option {
	if skip == nil {
		panic("idempotency: WithSkip(nil)")
	}
	return optionFunc(func(c *config) { c.skip = skip })
}

// WithFingerprint sets what identifies a request's payload (default
// QueryString() and RawBody()). Parts compose: the fingerprint is a SHA-256
// over each part in turn, after the method and the path.
//
//	idempotency.WithFingerprint(idempotency.CanonicalJSON(), idempotency.Headers("Tenant"))
func WithFingerprint(parts ...FingerprintPart) Option {
	if len(parts) == 0 {
		panic("idempotency: WithFingerprint needs at least one part")
	}
	return optionFunc(func(c *config) { c.fingerprint = append([]FingerprintPart(nil), parts...) })
}

// WithMaxBodyBytes caps the request body read for the fingerprint (default
// 1 MiB). A request with a key and a larger body gets 413 and the handler
// does not run.
func WithMaxBodyBytes(n int64) Option {
	mustPositive("max body bytes", n)
	return optionFunc(func(c *config) { c.maxBody = n })
}

// WithMaxResponseBytes caps the response body that is recorded for replay
// (default 1 MiB). A larger response reaches the first client in full and
// is kept without a body: duplicates get 409 with the stored Location.
func WithMaxResponseBytes(n int) Option {
	mustPositive("max response bytes", n)
	return optionFunc(func(c *config) { c.maxResponse = n })
}

// WithReplayHeaders adds response headers to the replayable list (Location,
// Content-Type, Content-Encoding, Content-Language, Cache-Control, ETag,
// Last-Modified, Link, Vary). Date, Set-Cookie and hop-by-hop headers are
// replayed only when added here.
func WithReplayHeaders(names ...string) Option {
	return optionFunc(func(c *config) {
		for _, n := range names {
			c.replayHeaders[http.CanonicalHeaderKey(n)] = true
		}
	})
}

// WithKeep sets which response statuses are kept and replayed (default
// [DefaultKeep]). A status that is not kept releases the key, so a retry
// runs the handler again.
//
//	idempotency.WithKeep(func(status int) bool { return true }) // keep 5xx too, like Stripe
func WithKeep(keep func(status int) bool) Option {
	if keep == nil {
		panic("idempotency: WithKeep(nil)")
	}
	return optionFunc(func(c *config) { c.keep = keep })
}

// WithMismatchStatus sets the status for a key reused with another payload,
// method or route: 409 (default) or 422 (the draft's suggestion).
func WithMismatchStatus(status int) Option {
	if status != http.StatusConflict && status != http.StatusUnprocessableEntity {
		panic(fmt.Sprintf("idempotency: mismatch status must be 409 or 422, got %d", status))
	}
	return optionFunc(func(c *config) { c.mismatchStatus = status })
}

// WithReplayedHeader sets the header that marks a replay (default
// "Idempotent-Replayed", sent as "true").
//
//	idempotency.WithReplayedHeader("X-Served-From-Cache") // Apache Fineract
func WithReplayedHeader(name string) Option {
	if name == "" {
		panic("idempotency: WithReplayedHeader with an empty name")
	}
	return optionFunc(func(c *config) { c.replayedHeader = http.CanonicalHeaderKey(name) })
}

// WithConflictOnReplay answers a completed duplicate with 409 and the stored
// Location instead of replaying the stored response (the OpenLMIS way).
func WithConflictOnReplay() Option {
	return optionFunc(func(c *config) { c.conflictMode = true })
}

// WithFailOpen runs the handler without idempotency when the store fails,
// and logs it. The default is to fail closed: 503 with Retry-After, and the
// handler does not run.
func WithFailOpen() Option {
	return optionFunc(func(c *config) { c.failOpen = true })
}

// WithProblemWriter replaces how the middleware writes its own error
// responses (default [WriteProblem], application/problem+json).
func WithProblemWriter(w ProblemWriter) Option {
	if w == nil {
		panic("idempotency: WithProblemWriter(nil)")
	}
	return optionFunc(func(c *config) { c.problem = w })
}

// WithEventHook calls hook with each outcome (see [EventKind]), for metrics
// and tracing. It runs on the request's goroutine and must be quick.
//
// ctx is the request's context, through which the request's own values are
// readable too: a string key reads what a middleware set with c.Set (an
// auth middleware's user id, a request id), as a *gin.Context answers it.
// Those values are readable during the hook's call only, and only for the
// events of the request itself: the outcome of work that goes on after the
// request ended (a completion retried in the background) comes with the
// request's context but without its c.Set values.
//
//	idempotency.WithEventHook(func(ctx context.Context, e idempotency.Event) {
//		user, _ := ctx.Value("user_id").(string)
//		audit.Record(e.Kind.String(), e.IdempotencyKey, user)
//	})
func WithEventHook(hook func(context.Context, Event)) Option {
	return optionFunc(func(c *config) { c.onEvent = hook })
}

// WithLogger sets the logger (default slog.Default(), read once in [New]).
// The middleware logs store failures, lost leases and fail-open requests as
// warnings or errors, and each outcome at debug level; a misconfiguration
// that refuses every keyed request of a route or releases every key it
// handles is a warning, once per route a minute. Its lines carry the
// client's key (see [WithoutKeyInEvents]) and hashes, never scopes or
// bodies, and the log handler gets the same context as the event hook.
func WithLogger(l *slog.Logger) Option {
	if l == nil {
		panic("idempotency: WithLogger(nil)")
	}
	return optionFunc(func(c *config) { c.logger = l })
}
