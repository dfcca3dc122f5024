// Package idempotency is a Gin middleware for the HTTP Idempotency-Key
// request header (draft-ietf-httpapi-idempotency-key-header): it makes any
// Gin API safe to retry.
//
// The first request with a key runs the handler, and its response is
// recorded with a fingerprint of the request. A duplicate with the same
// fingerprint gets the stored response again, marked Idempotent-Replayed,
// and the handler does not run; a duplicate while the first is in flight
// gets 409 with Retry-After; the same key with another payload, method or
// path is refused. Every answer the middleware writes itself is
// application/problem+json (RFC 9457).
//
// # Mounting order and scope
//
// Mount it after authentication, so that a caller without rights is refused
// before a key is looked at, and scope keys by the caller's id, which your
// authentication middleware sets with c.Set:
//
//	r := gin.New()
//	r.Use(gin.Recovery())
//	api := r.Group("/api", auth) // auth calls c.Set("user_id", id)
//	api.Use(idempotency.New(idempotency.WithScope(idempotency.ScopeFromContext("user_id"))))
//
// A record is found by its scope and key, so one caller never receives
// another's stored response. The default scope, the Authorization header,
// is only a fallback: a cookie-session app sends none, and a refreshed
// access token would make a retry another caller. A keyed request with an
// empty scope gets 400 unless [AllowAnonymousKeys] is set.
//
// Recovery and compression may sit outside or inside the middleware: a
// panic, or a recovery that writes 500 over a status already sent, releases
// the key; headers an outer middleware set (an outer gzip's
// Content-Encoding) are not recorded, and a recorded encoding is replayed
// only to a retry that accepts it.
//
// # Nesting
//
// Where several middlewares of this package wrap one route (engine, group,
// route), the innermost handles the key and only its options apply; the
// others step aside, whatever wraps the writer in between. The handler
// reads the key it runs under with [Key].
//
// New with no options is correct and safe: UUID keys (any RFC 9562 version,
// v4 or v7, in canonical form) on POST and PATCH, optional, scoped by the
// Authorization header, kept 24 h in a bounded in-memory store. A
// [RedisStore] shares keys between processes; the pgstore package keeps
// them in the application's Postgres database, where the handler's writes
// and the record commit together (see [TxStore]). The client package
// (github.com/ginidem/idempotency/client) is the other half: an
// http.RoundTripper that sends keys and retries safely. The promidem and
// otelidem packages turn the event hook into metrics and traces.
package idempotency

import (
	"crypto/sha256"
	"errors"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/gin-gonic/gin"
)

// New returns the idempotency middleware, configured by opts over safe
// defaults. Each call has its own configuration and, unless [WithStore] is
// given, its own [MemoryStore]. It panics, with an "idempotency:" prefix,
// on an invalid option. One middleware may be mounted on several engines:
// it counts how many of this package's middlewares each route holds apart
// for each engine, by method and route pattern.
func New(opts ...Option) gin.HandlerFunc {
	return newMiddleware(opts).handle
}

// newMiddleware builds the lifecycle that New's handler and a [Runner]
// share: the store, its breaker and the lease renewer, configured by opts.
func newMiddleware(opts []Option) *middleware {
	cfg := defaultConfig()
	for _, opt := range opts {
		opt.apply(cfg)
	}
	if cfg.store == nil {
		cfg.store = NewMemoryStore()
	}
	if cfg.logger == nil {
		cfg.logger = slog.Default()
	}
	m := &middleware{config: *cfg, hashers: sync.Pool{New: newHasher}, replayedValue: []string{"true"}[:1:1]}
	_, m.inProcess = m.store.(*MemoryStore)
	m.txStore, _ = m.store.(TxStore)
	m.cache, _ = m.store.(CachingStore)
	m.leases = newRenewer(m)
	m.chains = newChains(m.handle)
	m.breaker = newBreaker(m)
	return m
}

// DefaultKeep keeps every status below 500 except 408, 425 and 429, which,
// like 5xx, release the key so that a retry runs again.
func DefaultKeep(status int) bool {
	switch status {
	case http.StatusRequestTimeout, http.StatusTooEarly, http.StatusTooManyRequests:
		return false
	}
	return status < 500
}

type middleware struct {
	config
	hashers sync.Pool // of *hasher
	leases  *renewer
	chains  *chains
	bodies  bodyBuffers
	breaker *breaker     // nil when off
	txStore TxStore      // the store, when it commits with the handler's writes
	cache   CachingStore // the store, when it has a local cache to ask first
	// inProcess is set for a store that answers from memory without I/O; its
	// calls need no deadline timer.
	inProcess bool
	// replayedValue is the replay header's value, shared by every replay; its
	// capacity is its length, so an append by a later middleware copies it.
	replayedValue []string
	warns         warnings // rate-limited warnings of misconfiguration (warn.go)
}

// flight is everything the middleware knows of one keyed request, in one
// allocation.
type flight struct {
	scope [sha256.Size]byte // SHA-256 of the caller's scope
	key   string            // store key: hex SHA-256 of scope and key
	route string            // the Gin route pattern, for events and logs
	claim Record            // fingerprint, method and path
	body  bodyReader        // the handler's view of the request body
	rec   recorder
	lease leaseKeeper
	mark  requestMark // the request's mark, when no outer middleware made one
	call  storeCall   // the store call behind the next event
	view  requestView // the client's key and the request's values, for events
	// noKeep: the handler asked that its answer not be kept (DoNotKeep).
	noKeep bool
}

// storeCall is a store call, reported with the event that follows it.
type storeCall struct {
	op   StoreOp
	took time.Duration
}

func (m *middleware) handle(c *gin.Context) {
	mark, mine := m.turn(c)
	if !mine || !m.handles(c.Request.Method) {
		c.Next() // an inner middleware handles the key, or an outer one did
		return
	}
	if m.skip != nil && m.skip(c) {
		c.Next() // WithSkip: as if the middleware were not there
		return
	}
	key, err := readKey(c.Request.Header, m.keyHeaders, m.validate)
	if err != nil {
		m.refuse(c, http.StatusBadRequest, ProblemInvalidKey, "Invalid idempotency key", err.Error())
		return
	}
	if key == "" {
		if m.required {
			m.refuse(c, http.StatusBadRequest, ProblemMissingKey, "Idempotency key required",
				"this endpoint requires an "+m.keyHeaders[0]+" header")
			return
		}
		c.Next()
		return
	}
	f := &flight{}
	if !m.prepare(c, f, key) {
		return
	}
	token, held, err := m.acquire(c.Request.Context(), f)
	switch {
	case err != nil:
		m.markRun(c, mark, &f.mark, key, false) // a fail-open run still reads its key
		m.storeFailed(c, f, err)
	case held == nil:
		m.run(c, f, m.markRun(c, mark, &f.mark, key, true), token)
	case !sameRequest(held, &f.claim):
		m.mismatch(c, f, held)
	case held.State == InFlight:
		m.inFlight(c, f, held)
	case held.BodyOmitted || m.conflictMode:
		m.alreadyCompleted(c, f, held)
	default:
		m.replay(c, f, held)
	}
}

func (m *middleware) handles(method string) bool {
	for _, x := range m.methods {
		if x == method {
			return true
		}
	}
	return false
}

// prepare reads the body and computes the fingerprint and the store key. It
// answers the request itself and reports false when it cannot.
func (m *middleware) prepare(c *gin.Context, f *flight, key string) bool {
	f.route = c.FullPath()
	f.claim = Record{Method: c.Request.Method, Path: c.Request.URL.Path}
	f.view.start(c, key)
	scope := m.scope(c)
	if scope == "" && !m.anonymous {
		m.emit(c.Request.Context(), f, EventUnknownCaller, http.StatusBadRequest, nil)
		m.warnUnknownCaller(c, f)
		m.refuse(c, http.StatusBadRequest, ProblemUnknownCaller, "Caller not identified",
			"this service cannot tell callers apart for this request, so it cannot scope an idempotency key to its caller; authenticate, or send the request without a key")
		return false
	}
	body, err := m.bodies.readBody(c.Request, m.maxBody)
	if err != nil {
		if errors.Is(err, errBodyTooLarge) {
			m.refuse(c, http.StatusRequestEntityTooLarge, ProblemBodyTooLarge, "Request body too large", err.Error())
		} else {
			m.refuse(c, http.StatusBadRequest, ProblemInvalidBody, "Unreadable request body", "the request body could not be read")
		}
		return false
	}
	if body != nil {
		f.body.Reset(body)
		c.Request.Body = &f.body
	}
	h := m.hashers.Get().(*hasher)
	defer m.hashers.Put(h)
	fp, err := fingerprint(h, m.fingerprint, c.Request, f.claim.Path, body)
	if err != nil {
		m.refuse(c, http.StatusBadRequest, ProblemInvalidBody, "Invalid request body", err.Error())
		return false
	}
	f.claim.Fingerprint = fp
	var hexSum [2 * sha256.Size]byte
	h.storeKey(scope, key, &f.scope, &hexSum)
	f.key = string(hexSum[:])
	return true
}

// run runs the handler under the recorder while keeping the lease, then
// completes or releases the key. On a TxStore the handler also runs in the
// request's transaction, and its response is held until the commit.
func (m *middleware) run(c *gin.Context, f *flight, mark *requestMark, token string) {
	m.emit(c.Request.Context(), f, EventAcquired, 0, nil)
	req := c.Request
	ctx, detached := m.detach(req.Context())
	c.Request = req.WithContext(ctx)
	defer func() {
		detached()
		if c.Request.Context() == ctx {
			c.Request = req
		}
	}()
	defer f.view.end() // what goes on in the background never reads c
	out := c.Writer
	var t *txRun
	if m.txStore != nil {
		var ok bool
		if t, ok = m.begin(c, f, mark, token); !ok {
			return
		}
		defer m.rollback(ctx, t.tx) // does nothing once the transaction ended
		f.rec.start(t.hold, m.replayHeaders, m.maxResponse)
	} else {
		f.rec.start(out, m.replayHeaders, m.maxResponse)
	}
	c.Writer = &f.rec
	m.leases.start(ctx, &f.lease, f.key, token)
	panicked := true
	defer func() {
		if panicked { // release now; the panic goes on to Gin's recovery
			c.Writer = out
			switch {
			case t != nil && t.hold.streaming: // committed when it outgrew the cap
			case t != nil: // roll back with the release: the handler's locks would hold up a release of its own
				t.hold.discard()
				f.rec.broken = true // never kept, whatever WithKeep says of a 500
				m.settleTx(c, f, t, token, http.StatusInternalServerError)
			default:
				m.leases.stop(&f.lease)
				m.release(c.Request.Context(), f, token, http.StatusInternalServerError)
			}
		}
	}()
	c.Next()
	panicked = false
	f.rec.finish()
	c.Writer = out
	f.noKeep = mark.noKeep
	status := f.rec.Status()
	if f.rec.wroteNothing() && !f.noKeep {
		m.warnWroteNothing(c, f)
	}
	switch {
	case t != nil:
		m.endTx(c, f, t, token, status)
	case f.rec.broken:
		m.endWithout(c, f, token, http.StatusInternalServerError)
	case f.noKeep || f.rec.wroteNothing() || !m.keep(status):
		m.endWithout(c, f, token, status)
	default:
		// Even a lease that could not be renewed: the store's fenced
		// completion tells whether another request took the key (SPEC 23).
		m.complete(c.Request.Context(), f, token, f.rec.result(&f.claim), status) // stops the lease when stored
	}
}

// endWithout ends a run whose response is not kept: the key is released,
// unless its lease was lost meanwhile.
func (m *middleware) endWithout(c *gin.Context, f *flight, token string, status int) {
	if m.leases.stop(&f.lease) {
		m.emit(c.Request.Context(), f, EventLostLease, status, ErrNotOwner)
		return
	}
	m.release(c.Request.Context(), f, token, status)
}
