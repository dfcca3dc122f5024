// Package client is the calling side of the Idempotency-Key header: an
// [http.RoundTripper] that gives every POST and PATCH request a key and
// retries it safely.
//
// The server side (package github.com/ginidem/idempotency, or any server
// that follows the IETF draft "The Idempotency-Key HTTP Header Field") runs
// a keyed request at most once and replays the recorded answer to a retry.
// That makes it safe for a client to retry a POST whose answer was lost: a
// reset connection, a timeout, a 502/503/504 from a gateway. This package
// does the client's half:
//
//   - For the methods that need a key (POST and PATCH by default, see
//     [WithMethods]) it generates a UUID v4 when the request has none, and
//     sends that same key on every attempt. A key set by the caller is kept.
//   - It retries network errors and transient answers (5xx except 501, 429,
//     409 with Retry-After) with capped exponential backoff and full jitter,
//     honouring Retry-After and the request's context, within a bound on
//     attempts ([WithMaxAttempts]) and on total time ([WithMaxElapsed]).
//   - It replays the request body byte for byte on each attempt, from
//     [http.Request.GetBody] or from a buffer of up to 1 MiB
//     ([WithBodyCap]). A larger body without GetBody is sent once, not
//     retried.
//   - It never retries a request that carries no key unless its method is
//     idempotent (GET, HEAD, OPTIONS, TRACE, PUT, DELETE; RFC 9110).
//
// A 409 or 422 without Retry-After (the same key sent with another body) is
// the caller's bug and is returned at once, never retried. [Replayed] tells
// whether the final answer was a replay, and [WithOnAttempt] reports every
// attempt for logs and metrics.
//
// The package depends on the standard library and github.com/google/uuid
// only; it does not import Gin.
package client
