package idempotency

import (
	"context"
	"encoding/hex"
	"log/slog"
	"time"
)

// EventKind names an outcome of the middleware for one request.
type EventKind uint8

const (
	// EventAcquired: the key was new; the handler runs.
	EventAcquired EventKind = iota + 1
	// EventCompleted: the handler's response was stored.
	EventCompleted
	// EventReplayed: a duplicate got the stored response.
	EventReplayed
	// EventConflict: a duplicate got 409, because the first request is in
	// flight or its response cannot be replayed.
	EventConflict
	// EventMismatch: the key was reused with another payload, method or
	// route.
	EventMismatch
	// EventReleased: the key was freed (5xx, panic, nothing written), so a
	// retry runs again.
	EventReleased
	// EventStoreError: a store call failed or timed out.
	EventStoreError
	// EventLostLease: the request no longer holds its key, so its response
	// was not stored: another request took the key after the lease expired,
	// or an operator deleted it (see [Forget]). A lease that merely expired
	// (during a long outage, say) while nobody took the key loses nothing:
	// the completion still lands. It also reports a release that found the
	// lease gone, and a completion the store refused until the retry limit
	// (the key is then released).
	EventLostLease
	// EventUnknownCaller: a keyed request had an empty scope and got 400
	// (see [AllowAnonymousKeys]).
	EventUnknownCaller
	// EventBreakerOpen: the store kept failing; keyed requests are answered
	// at once without calling it (see [WithCircuitBreaker]). Breaker events
	// belong to no request: only Kind is set.
	EventBreakerOpen
	// EventBreakerHalfOpen: the breaker lets one request probe the store.
	EventBreakerHalfOpen
	// EventBreakerClosed: the probe succeeded; the store is called again.
	EventBreakerClosed
)

var eventNames = [...]string{"unknown", "acquired", "completed", "replayed", "conflict", "mismatch", "released",
	"store_error", "lost_lease", "unknown_caller", "breaker_open", "breaker_half_open", "breaker_closed"}

// String returns the event's name, such as "replayed".
func (k EventKind) String() string {
	if int(k) < len(eventNames) {
		return eventNames[k]
	}
	return eventNames[0]
}

// Event is one outcome, passed to the hook set with [WithEventHook]. It
// carries hashes only: never the raw key, the caller's identity or a body.
type Event struct {
	Kind EventKind
	// ScopeHash is the hex SHA-256 of the caller's scope.
	ScopeHash string
	// Key is the store key: a hex SHA-256 of the scope and the key.
	Key string
	// Method and Route are the request's method and Gin route pattern
	// (such as "/orders/:id/submit"; empty for a request no route matched).
	Method, Route string
	// Status is the response status, where there is one.
	Status int
	// Err is the store error, for EventStoreError.
	Err error
	// StoreOp is the store call that led to this outcome, if any, and
	// StoreLatency how long it took: an acquisition for acquired, replayed,
	// conflict, mismatch and most store errors; a completion for completed;
	// a release for released. Background retries of a completion report
	// their last attempt.
	StoreOp      StoreOp
	StoreLatency time.Duration
}

// StoreOp names a store call, for latency metrics.
type StoreOp uint8

const (
	// StoreAcquire is [Store.Acquire].
	StoreAcquire StoreOp = iota + 1
	// StoreComplete is [Store.Complete], or the commit of a [TxStore].
	StoreComplete
	// StoreRelease is [Store.Release].
	StoreRelease
)

var storeOpNames = [...]string{"", "acquire", "complete", "release"}

// String returns the call's name, such as "acquire", or "" for none.
func (o StoreOp) String() string {
	if int(o) < len(storeOpNames) {
		return storeOpNames[o]
	}
	return ""
}

// emit reports an outcome to the event hook and the logger.
func (m *middleware) emit(ctx context.Context, f *flight, kind EventKind, status int, err error) {
	level := slog.LevelDebug
	switch kind {
	case EventStoreError:
		level = slog.LevelError
	case EventLostLease:
		level = slog.LevelWarn
	}
	if m.logger.Enabled(ctx, level) {
		m.logger.LogAttrs(ctx, level, "idempotency: "+kind.String(),
			slog.String("key", f.key), slog.String("route", f.route), slog.Int("status", status), slog.Any("error", err))
	}
	if m.onEvent != nil {
		m.onEvent(ctx, Event{
			Kind: kind, ScopeHash: hex.EncodeToString(f.scope[:]), Key: f.key,
			Method: f.claim.Method, Route: f.route, Status: status, Err: err,
			StoreOp: f.call.op, StoreLatency: f.call.took,
		})
	}
	f.call = storeCall{}
}
