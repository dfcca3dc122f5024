// Package idempotency is a Gin middleware for the HTTP Idempotency-Key
// request header (draft-ietf-httpapi-idempotency-key-header): it makes any
// Gin API safe to retry.
//
// The first request with a key runs the handler, and its response is
// recorded with a fingerprint of the request. A duplicate with the same
// fingerprint gets the stored response again, marked Idempotent-Replayed,
// and the handler does not run; a duplicate while the first is in flight
// gets 409 with Retry-After; the same key with another payload is refused.
// Keys are scoped per caller, and every answer the middleware writes itself
// is application/problem+json (RFC 9457).
//
// Mount it after authentication, so that a caller without rights is refused
// before a key is looked at:
//
//	r := gin.New()
//	api := r.Group("/api", auth)
//	api.Use(idempotency.New())
//
// New with no options is correct and safe: UUID v4 keys on POST and PATCH,
// optional, scoped by the Authorization header, kept 24 h in a bounded
// in-memory store. A Redis store shares keys between processes.
package idempotency

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/gin-gonic/gin"
)

// New returns the idempotency middleware, configured by opts over safe
// defaults. Each call has its own configuration and, unless [WithStore] is
// given, its own [MemoryStore]. It panics, with an "idempotency:" prefix,
// on an invalid option.
func New(opts ...Option) gin.HandlerFunc {
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
	m.leases = newRenewer(m)
	return m.handle
}

// AuthorizationScope is the default scope: the caller's Authorization
// header. Only its SHA-256 is kept.
func AuthorizationScope(c *gin.Context) string {
	return c.GetHeader("Authorization")
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
	// inProcess is set for a store that answers from memory without I/O; its
	// calls need no deadline timer.
	inProcess bool
	// replayedValue is the replay header's value, shared by every replay; its
	// capacity is its length, so an append by a later middleware copies it.
	replayedValue []string
}

// flight is everything the middleware knows of one keyed request, in one
// allocation.
type flight struct {
	scope [sha256.Size]byte // SHA-256 of the caller's scope
	key   string            // store key: hex SHA-256 of scope and key
	claim Record            // fingerprint, method and route
	body  bodyReader        // the handler's view of the request body
	rec   recorder
	lease leaseKeeper
}

func (m *middleware) handle(c *gin.Context) {
	if _, nested := c.Writer.(*recorder); nested || !m.handles(c.Request.Method) {
		// nested: an outer idempotency middleware already holds this
		// request's key; a second acquisition would only find it in flight.
		c.Next()
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
	token, held, err := m.acquire(c, f)
	switch {
	case err != nil:
		m.storeFailed(c, f, err)
	case held == nil:
		m.run(c, f, token)
	case !bytes.Equal(held.Fingerprint, f.claim.Fingerprint):
		m.mismatch(c, f, held)
	case held.State == InFlight:
		m.emit(c, f, EventConflict, http.StatusConflict, nil)
		c.Header("Retry-After", "1")
		m.refuse(c, http.StatusConflict, ProblemInFlight, "Request in progress",
			"a request with this idempotency key is still being processed; retry later")
	case held.BodyOmitted || m.conflictMode:
		m.emit(c, f, EventConflict, http.StatusConflict, nil)
		if loc := held.Header.Get("Location"); loc != "" {
			c.Header("Location", loc)
		}
		m.refuse(c, http.StatusConflict, ProblemAlreadyCompleted, "Request already completed",
			"a request with this idempotency key has completed; its result is not replayed")
	default:
		m.emit(c, f, EventReplayed, held.Status, nil)
		m.replay(c, held)
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
	body, err := readBody(c.Request, m.maxBody)
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
	route := c.FullPath()
	if route == "" {
		route = c.Request.URL.Path
	}
	h := m.hashers.Get().(*hasher)
	defer m.hashers.Put(h)
	fp, err := fingerprint(h, m.fingerprint, c.Request, route, body)
	if err != nil {
		m.refuse(c, http.StatusBadRequest, ProblemInvalidBody, "Invalid request body", err.Error())
		return false
	}
	f.claim = Record{Fingerprint: fp, Method: c.Request.Method, Path: route}
	h.Reset()
	h.WriteString(m.scope(c))
	h.Sum(f.scope[:0])
	h.Reset()
	h.Write(f.scope[:])
	h.WriteString(key)
	var hexSum [2 * sha256.Size]byte
	hex.Encode(hexSum[:], h.Sum(h.scratch[:0]))
	f.key = string(hexSum[:])
	return true
}

// bodyReader gives the handler the body the middleware read, byte for byte.
type bodyReader struct{ bytes.Reader }

// Close implements io.Closer; the server closes the real body.
func (*bodyReader) Close() error { return nil }

// errBodyTooLarge refuses a keyed request whose body is over the cap.
var errBodyTooLarge = errors.New("the request body is larger than this endpoint accepts with an idempotency key")

// readBody reads the whole body once, up to max bytes, into one buffer
// sized by Content-Length when it is known.
func readBody(r *http.Request, max int64) ([]byte, error) {
	if r.Body == nil || r.Body == http.NoBody {
		return nil, nil
	}
	if r.ContentLength > max {
		return nil, errBodyTooLarge
	}
	size := int64(512)
	if r.ContentLength >= 0 {
		size = r.ContentLength + 1 // room to see EOF without growing
	}
	buf := make([]byte, 0, size)
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := r.Body.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if int64(len(buf)) > max {
			return nil, errBodyTooLarge
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			var tooLarge *http.MaxBytesError
			if errors.As(err, &tooLarge) {
				return nil, errBodyTooLarge
			}
			return nil, err
		}
	}
	return buf, nil
}

// storeCtx bounds a store call by the store timeout. It is detached from
// the request's cancellation, so a client that goes away never strands a
// lease or loses a finished response. A MemoryStore never waits, so its
// calls get a background context: no timer, no allocation.
func (m *middleware) storeCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	if m.inProcess {
		return context.Background(), func() {}
	}
	return context.WithTimeout(context.WithoutCancel(ctx), m.storeTimeout)
}

// acquire takes the key, or returns the record that holds it. With
// WithWaitInFlight, it polls with backoff while the holder is in flight.
func (m *middleware) acquire(c *gin.Context, f *flight) (string, *Record, error) {
	var deadline time.Time
	if m.waitInFlight > 0 {
		deadline = time.Now().Add(m.waitInFlight)
	}
	pause := 10 * time.Millisecond
	for {
		ctx, cancel := m.storeCtx(c.Request.Context())
		token, held, err := m.store.Acquire(ctx, f.key, &f.claim, m.lease)
		cancel()
		if err == nil && held != nil && !validRecord(held) {
			err = errors.New("idempotency: store returned an invalid record")
		}
		if err != nil || held == nil || held.State != InFlight ||
			!bytes.Equal(held.Fingerprint, f.claim.Fingerprint) {
			return token, held, err
		}
		left := time.Until(deadline)
		if m.waitInFlight == 0 || left <= 0 {
			return token, held, nil
		}
		wait := time.NewTimer(min(pause, left))
		select {
		case <-c.Request.Context().Done():
			wait.Stop()
			return token, held, nil
		case <-wait.C:
		}
		pause = min(2*pause, 500*time.Millisecond)
	}
}

// validRecord rejects a record that cannot be answered from, whatever the
// store returned.
func validRecord(rec *Record) bool {
	switch rec.State {
	case InFlight:
		return true
	case Completed:
		return rec.Status >= 100 && rec.Status <= 999
	}
	return false
}

// run runs the handler under the recorder while keeping the lease, then
// completes or releases the key.
func (m *middleware) run(c *gin.Context, f *flight, token string) {
	m.emit(c, f, EventAcquired, 0, nil)
	f.rec.ResponseWriter, f.rec.replayable, f.rec.maxBody = c.Writer, m.replayHeaders, m.maxResponse
	c.Writer = &f.rec
	m.leases.start(c.Request.Context(), &f.lease, f.key, token)
	panicked := true
	defer func() {
		if panicked { // release now; the panic goes on to Gin's recovery
			m.leases.stop(&f.lease)
			c.Writer = f.rec.ResponseWriter
			m.release(c, f, token, http.StatusInternalServerError)
		}
	}()
	c.Next()
	panicked = false
	f.rec.finish()
	c.Writer = f.rec.ResponseWriter
	lost := m.leases.stop(&f.lease)
	status := f.rec.Status()
	switch {
	case lost:
		m.emit(c, f, EventLostLease, status, ErrNotOwner)
	case f.rec.wroteNothing() || !m.keep(status):
		m.release(c, f, token, status)
	default:
		m.complete(c, f, token, status)
	}
}

func (m *middleware) complete(c *gin.Context, f *flight, token string, status int) {
	out := f.rec.result(&f.claim)
	ctx, cancel := m.storeCtx(c.Request.Context())
	defer cancel()
	switch err := m.store.Complete(ctx, f.key, token, out, m.ttl); {
	case errors.Is(err, ErrNotOwner):
		m.emit(c, f, EventLostLease, status, err)
	case err != nil:
		m.emit(c, f, EventStoreError, status, err)
	default:
		m.emit(c, f, EventCompleted, status, nil)
	}
}

func (m *middleware) release(c *gin.Context, f *flight, token string, status int) {
	ctx, cancel := m.storeCtx(c.Request.Context())
	defer cancel()
	switch err := m.store.Release(ctx, f.key, token); {
	case errors.Is(err, ErrNotOwner):
		m.emit(c, f, EventLostLease, status, err)
	case err != nil:
		m.emit(c, f, EventStoreError, status, err)
	default:
		m.emit(c, f, EventReleased, status, nil)
	}
}

func (m *middleware) mismatch(c *gin.Context, f *flight, held *Record) {
	m.emit(c, f, EventMismatch, m.mismatchStatus, nil)
	detail := "this idempotency key was already used with a different request payload"
	if held.Method != f.claim.Method || held.Path != f.claim.Path {
		detail = "this idempotency key was already used on another method or route"
	}
	m.refuse(c, m.mismatchStatus, ProblemKeyMismatch, "Idempotency key reused", detail)
}

func (m *middleware) storeFailed(c *gin.Context, f *flight, err error) {
	m.emit(c, f, EventStoreError, 0, err)
	if m.failOpen {
		m.logger.LogAttrs(c.Request.Context(), slog.LevelWarn, "idempotency: store failed, running without idempotency",
			slog.String("key", f.key), slog.Any("error", err))
		c.Next()
		return
	}
	c.Header("Retry-After", "1")
	m.refuse(c, http.StatusServiceUnavailable, ProblemStoreUnavailable, "Idempotency store unavailable",
		"the idempotency store did not answer; retry later")
}

// replay sends the stored response again, marked as a replay.
func (m *middleware) replay(c *gin.Context, rec *Record) {
	h := c.Writer.Header()
	for name, values := range rec.Header {
		h[name] = values[:len(values):len(values)] // an append must copy, not write into the record
	}
	h[m.replayedHeader] = m.replayedValue
	c.Writer.WriteHeader(rec.Status)
	c.Writer.WriteHeaderNow()
	c.Writer.Write(rec.Body)
	c.Abort()
}

// refuse writes one of the middleware's own problems and stops the chain.
func (m *middleware) refuse(c *gin.Context, status int, typ, title, detail string) {
	m.problem(c, Problem{Type: typ, Title: title, Status: status, Detail: detail})
	c.Abort()
}

// emit reports an outcome to the event hook and the logger.
func (m *middleware) emit(c *gin.Context, f *flight, kind EventKind, status int, err error) {
	ctx := c.Request.Context()
	level := slog.LevelDebug
	switch kind {
	case EventStoreError:
		level = slog.LevelError
	case EventLostLease:
		level = slog.LevelWarn
	}
	if m.logger.Enabled(ctx, level) {
		m.logger.LogAttrs(ctx, level, "idempotency: "+kind.String(),
			slog.String("key", f.key), slog.String("route", f.claim.Path), slog.Int("status", status), slog.Any("error", err))
	}
	if m.onEvent != nil {
		m.onEvent(ctx, Event{
			Kind: kind, ScopeHash: hex.EncodeToString(f.scope[:]), Key: f.key,
			Method: f.claim.Method, Route: f.claim.Path, Status: status, Err: err,
		})
	}
}
