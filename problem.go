package idempotency

import (
	"encoding/json"

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
