package idempotency

import (
	"context"
	"errors"
	"net/http"
	"time"
)

// State is the lifecycle state of a [Record].
type State uint8

const (
	// InFlight marks a key whose first request is still running. The record
	// holds the fencing token of that request and expires when its lease ends.
	InFlight State = 1
	// Completed marks a key whose first request finished with a kept response.
	Completed State = 2
)

// Record is what a [Store] keeps for one idempotency key.
//
// Records returned by a Store are read-only for the caller.
type Record struct {
	// State is InFlight or Completed.
	State State
	// Token is the fencing token of the request that owns (InFlight) or
	// wrote (Completed) the record.
	Token string
	// Fingerprint identifies the request payload, method and path of the
	// first use of the key (a SHA-256 sum).
	Fingerprint []byte
	// Method and Path are the HTTP method and the path actually requested
	// (such as "/orders/42/submit", not the route pattern) of the first use.
	Method, Path string
	// Status is the response status code (Completed only).
	Status int
	// Header holds the replayable response headers, snapshotted when the
	// status was written (Completed only).
	Header http.Header
	// Body is the response body (Completed only). It is empty when
	// BodyOmitted is set.
	Body []byte
	// BodyOmitted is set when the response was streamed, hijacked or larger
	// than the body cap: it cannot be replayed, and duplicates get 409 with
	// the stored Location instead.
	BodyOmitted bool
	// ExpiresAt is the end of the lease (InFlight) or of the record's
	// lifetime (Completed).
	ExpiresAt time.Time
	// CreatedAt is when the key was acquired, as [Store.Get] reports it
	// (zero elsewhere).
	CreatedAt time.Time
}

// ErrNotOwner is returned by [Store.Complete], [Store.Release] and
// [Store.Extend] when the caller's fencing token no longer owns the key:
// its lease expired (a renewal refused or not confirmed for a whole lease,
// during an outage for instance), or the key was released, completed,
// deleted or taken by another request. It does not say which.
var ErrNotOwner = errors.New("idempotency: the lease is no longer held: it expired or another request took the key")

// Store keeps idempotency records. Each method is one atomic step: one
// critical section in memory, one round trip (one Lua script) on Redis. The
// middleware always calls it with a context that carries a deadline.
//
// Keys are opaque strings chosen by the middleware (a hash of the caller's
// scope and the idempotency key); a Store may prefix them.
type Store interface {
	// Acquire takes a free or expired key for a new request: it stores claim
	// (Fingerprint, Method, Path) as an InFlight record with a new fencing
	// token, leased for lease, and returns that token. When the key is held
	// (in flight or completed), Acquire changes nothing and returns the
	// held record instead, with an empty token.
	Acquire(ctx context.Context, key string, claim *Record, lease time.Duration) (token string, held *Record, err error)

	// Complete replaces the InFlight record owned by token with rec (State
	// Completed), kept for ttl, whether or not its lease has expired: a
	// record that still holds the token was taken by no other request, so
	// the handler that ran is still the only one. A store whose expired
	// records vanish (Redis) also stores rec under a key that holds nothing.
	// It returns ErrNotOwner, and changes nothing, when token does not own
	// the key: another request took it, token's record was released or
	// deleted, or token completed it already with another record.
	Complete(ctx context.Context, key, token string, rec *Record, ttl time.Duration) error

	// Release deletes the InFlight record owned by token, so that a retry
	// runs again. It returns ErrNotOwner, and changes nothing, when token
	// does not own the key.
	Release(ctx context.Context, key, token string) error

	// Extend renews the lease of the InFlight record owned by token to
	// lease from now. It returns ErrNotOwner when token does not own the key.
	Extend(ctx context.Context, key, token string, lease time.Duration) error

	// Get returns the record for key, in flight or completed, for an
	// operator (see [Lookup]); [ErrNoRecord] when there is none. It
	// changes nothing.
	Get(ctx context.Context, key string) (*Record, error)

	// Delete removes the record for key, whatever its state, so that the
	// next request with the key runs as new: an operator forgetting a key.
	// The token of a deleted in-flight record no longer owns the key: the
	// request still running under it can no longer complete, release or
	// renew it (on Redis, for at least a day after the Delete: see
	// [RedisStore.Delete]). It returns [ErrNoRecord] when there was none
	// (see [Forget]).
	Delete(ctx context.Context, key string) error
}

// A CachingStore answers some acquisitions from a local cache of completed
// records, without a network call (the Redis and Postgres stores do). The
// middleware asks the cache before its circuit breaker, so that the breaker
// counts only calls that reach the store: a cached replay is answered even
// while the store is down, and it never closes the breaker in the store's
// stead.
type CachingStore interface {
	Store
	// Cached returns the completed record for key from the local cache, or
	// nil. It does no I/O and never blocks on the network.
	Cached(key string) *Record
}
