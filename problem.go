package idempotency

import (
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/gin-gonic/gin"
)

// The problem types of the middleware's own answers: stable URIs, one per
// case, for clients to branch on.
const (
	ProblemInvalidKey       = "https://ginidem.dev/problems/invalid-key"
	ProblemMissingKey       = "https://ginidem.dev/problems/missing-key"
	ProblemKeyMismatch      = "https://ginidem.dev/problems/key-mismatch"
	ProblemInFlight         = "https://ginidem.dev/problems/in-flight"
	ProblemAlreadyCompleted = "https://ginidem.dev/problems/already-completed"
	ProblemBodyTooLarge     = "https://ginidem.dev/problems/body-too-large"
	ProblemInvalidBody      = "https://ginidem.dev/problems/invalid-body"
	ProblemStoreUnavailable = "https://ginidem.dev/problems/store-unavailable"
	ProblemUnknownCaller    = "https://ginidem.dev/problems/unknown-caller"
)

// Problem is an RFC 9457 problem detail, the body of every answer the
// middleware writes itself.
type Problem struct {
	Type   string `json:"type"`
	Title  string `json:"title"`
	Status int    `json:"status"`
	Detail string `json:"detail,omitempty"`
}

// A ProblemWriter writes the middleware's own error answers. Headers the
// answer needs (Retry-After, Location) are already set on c.Writer.
type ProblemWriter func(c *gin.Context, p Problem)

// WriteProblem is the default [ProblemWriter]: p as application/problem+json
// with p.Status. encoding/json escapes <, > and &, so no text is echoed
// unescaped.
func WriteProblem(c *gin.Context, p Problem) {
	body, err := json.Marshal(p)
	if err != nil { // cannot happen for strings and an int
		body = []byte(`{"title":"error"}`)
	}
	c.Data(p.Status, "application/problem+json", body)
}

// mismatch refuses a key reused with another payload, method or path.
func (m *middleware) mismatch(c *gin.Context, f *flight, held *Record) {
	m.emit(c.Request.Context(), f, EventMismatch, m.mismatchStatus, nil)
	detail := "this idempotency key was already used with a different request payload"
	if held.Method != f.claim.Method || held.Path != f.claim.Path {
		detail = "this idempotency key was already used on another method or resource path"
	}
	m.refuse(c, m.mismatchStatus, ProblemKeyMismatch, "Idempotency key reused", detail)
}

// storeFailed answers a request whose store call failed: 503 with
// Retry-After, or, with fail-open, the handler runs without idempotency. A
// request the open circuit answered is logged at debug level only, and
// counted for the breaker's summary line: an outage is not a log flood.
func (m *middleware) storeFailed(c *gin.Context, f *flight, err error) {
	ctx := c.Request.Context()
	m.emit(ctx, f, EventStoreError, 0, err)
	circuitOpen := errors.Is(err, ErrCircuitOpen)
	if circuitOpen {
		m.refused(ctx)
	}
	if m.failOpen {
		level := slog.LevelWarn
		if circuitOpen {
			level = slog.LevelDebug
		}
		if m.logger.Enabled(ctx, level) {
			m.logger.LogAttrs(ctx, level, "idempotency: store failed, running without idempotency",
				slog.String("key", f.key), slog.String("idempotency_key", m.eventKey(f)), slog.Any("error", err))
		}
		c.Next()
		return
	}
	c.Header("Retry-After", "1")
	m.refuse(c, http.StatusServiceUnavailable, ProblemStoreUnavailable, "Idempotency store unavailable",
		"the idempotency store did not answer; retry later")
}

// refuse writes one of the middleware's own problems and stops the chain.
func (m *middleware) refuse(c *gin.Context, status int, typ, title, detail string) {
	m.problem(c, Problem{Type: typ, Title: title, Status: status, Detail: detail})
	c.Abort()
}

// inFlight answers a duplicate of a request still in flight: 409 with
// Retry-After (SPEC 18, 33). A holder that runs renews its lease before half
// of it is gone (see renewer), so a lease that is closer to its end than
// that, by more than a store call, was not renewed: the holder may have
// stopped (a crash), and its key is free once the lease runs out, which
// Retry-After then says. Else Retry-After is a short hint, for the first
// request is likely to end soon. On Postgres the lease of a request whose
// transaction holds the key is not renewed, and the store may return it
// after its end, while the lock holds.
func (m *middleware) inFlight(c *gin.Context, f *flight, held *Record) {
	m.emit(c.Request.Context(), f, EventConflict, http.StatusConflict, nil)
	retry, detail := "1", "a request with this idempotency key is still being processed; retry later"
	switch left := held.ExpiresAt.Sub(m.storeNow()); {
	case left <= 0:
		detail = "a request with this idempotency key still holds it after its lease ran out: " +
			"it may be finishing, or the process that ran it may have stopped; retry later"
	case left < m.lease/2-m.storeTimeout:
		retry = strconv.FormatInt(int64((left+time.Second-1)/time.Second), 10)
		detail = "a request with this idempotency key is in progress, but its lease has not been renewed: " +
			"the process that runs it may have stopped; if so, the key is free once the lease runs out, after Retry-After"
	}
	c.Header("Retry-After", retry)
	m.refuse(c, http.StatusConflict, ProblemInFlight, "Request in progress", detail)
}

// storeNow is the time on the store's clock, the one the ExpiresAt of its
// records are read on: time.Now, unless the store was given a clock of its
// own (a test's fake clock) and tells it.
func (m *middleware) storeNow() time.Time {
	switch s := m.store.(type) {
	case *MemoryStore:
		return s.now()
	case *RedisStore:
		return s.now()
	case interface{ Now() time.Time }: // pgstore.Store
		return s.Now()
	}
	return time.Now()
}
