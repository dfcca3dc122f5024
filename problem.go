package idempotency

import (
	"encoding/json"
	"log/slog"
	"net/http"

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
// Retry-After, or, with fail-open, the handler runs without idempotency.
func (m *middleware) storeFailed(c *gin.Context, f *flight, err error) {
	m.emit(c.Request.Context(), f, EventStoreError, 0, err)
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

// refuse writes one of the middleware's own problems and stops the chain.
func (m *middleware) refuse(c *gin.Context, status int, typ, title, detail string) {
	m.problem(c, Problem{Type: typ, Title: title, Status: status, Detail: detail})
	c.Abort()
}
