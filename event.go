package idempotency

import (
	"context"
	"encoding/hex"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/gin-gonic/gin"
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
// carries the client's canonical key, so that a support ticket's key can be
// found (leave it out with [WithoutKeyInEvents]), and hashes of the rest:
// never the caller's identity or a body.
type Event struct {
	Kind EventKind
	// IdempotencyKey is the client's key in its canonical form, as [Key]
	// returns it: a UUID in lower case, any other key as sent. It is empty
	// with [WithoutKeyInEvents], and in breaker events. The key is not a
	// secret: the scope keeps callers apart.
	IdempotencyKey string
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

// emit reports an outcome to the event hook and the logger. Both get ctx,
// through which the request's own values are readable (see
// [WithEventHook]); nothing is built when neither wants the event.
func (m *middleware) emit(ctx context.Context, f *flight, kind EventKind, status int, err error) {
	level := eventLevel(kind, err)
	logs := m.logger.Enabled(ctx, level)
	if logs || m.onEvent != nil {
		key := m.eventKey(f)
		ectx := f.view.context(ctx)
		if logs {
			attrs := [...]slog.Attr{slog.String("key", f.key), slog.String("route", f.route),
				slog.Int("status", status), slog.Any("error", err), slog.String("idempotency_key", key)}
			n := len(attrs)
			if key == "" {
				n--
			}
			m.logger.LogAttrs(ectx, level, "idempotency: "+kind.String(), attrs[:n]...)
		}
		if m.onEvent != nil {
			m.onEvent(ectx, Event{
				Kind: kind, IdempotencyKey: key, ScopeHash: hex.EncodeToString(f.scope[:]), Key: f.key,
				Method: f.claim.Method, Route: f.route, Status: status, Err: err,
				StoreOp: f.call.op, StoreLatency: f.call.took,
			})
		}
		f.view.done(ectx)
	}
	f.call = storeCall{}
}

// eventKey is the client's key as f's events and log lines show it: ""
// with WithoutKeyInEvents.
func (m *middleware) eventKey(f *flight) string {
	if m.noKeyInEvents {
		return ""
	}
	return f.view.key
}

// eventLevel is the level of an outcome's log line. A request refused
// because the store's circuit is open is logged at debug level: the
// breaker's changes of state and a summary of the refusals say it once for
// all of them (SPEC 32).
func eventLevel(kind EventKind, err error) slog.Level {
	switch kind {
	case EventStoreError:
		if errors.Is(err, ErrCircuitOpen) {
			return slog.LevelDebug
		}
		return slog.LevelError
	case EventLostLease:
		return slog.LevelWarn
	}
	return slog.LevelDebug
}

// requestView is what the events of one keyed request show of it: the
// client's canonical key and, while the request runs, the values its
// middlewares set with c.Set. A flight made for background work has none.
type requestView struct {
	key string // the client's canonical key; set once, before any event
	mu  sync.Mutex
	c   *gin.Context // the request, until end; Gin reuses it afterwards
}

// start opens the view on the request c, whose key is key.
func (v *requestView) start(c *gin.Context, key string) { v.key, v.c = key, c }

// end closes the view once the request's code is done with it: Gin reuses
// c for another request, so the events of work that goes on in the
// background (a completion or a release retried later) get the request's
// context without its c.Set values.
func (v *requestView) end() {
	v.mu.Lock()
	v.c = nil
	v.mu.Unlock()
}

// context returns what an event's hook and log line get: ctx, through
// which the request's c.Set values are readable while the view is open.
func (v *requestView) context(ctx context.Context) context.Context {
	if v.key == "" { // a background flight: nothing of the request to show
		return ctx
	}
	return &eventContext{Context: ctx, view: v}
}

// done ends what ectx shows of the request once the hook and the log line
// had it: a hook that keeps ctx never reads a request that ended.
func (v *requestView) done(ectx context.Context) {
	if e, ok := ectx.(*eventContext); ok {
		v.mu.Lock()
		e.over = true
		v.mu.Unlock()
	}
}

// eventContext is ctx plus the request's own values: a string key reads
// what a middleware set with c.Set (a user id, a request id), as a
// *gin.Context answers it; any other key goes to ctx.
type eventContext struct {
	context.Context
	view *requestView
	over bool // the hook returned; guarded by view.mu
}

// Value returns the request's c.Set value for a string key while the
// request runs and the hook has not returned, else ctx's value.
func (e *eventContext) Value(key any) any {
	if name, ok := key.(string); ok {
		e.view.mu.Lock()
		c := e.view.c
		if e.over {
			c = nil
		}
		var v any
		var found bool
		if c != nil {
			v, found = c.Get(name) // under Gin's own lock: c.Set may run on the request's goroutine
		}
		e.view.mu.Unlock()
		if found {
			return v
		}
	}
	return e.Context.Value(key)
}

// WithoutKeyInEvents leaves the client's idempotency key out of events
// ([Event.IdempotencyKey]) and log lines, which then carry hashes only. By
// default both carry it, so that the key a support ticket quotes can be
// found in the logs: it is not a secret, since the scope keeps callers
// apart. Leave it out when clients may put data of their own in their keys
// ([KeyPrintable]) and your logs must not hold it.
func WithoutKeyInEvents() Option {
	return optionFunc(func(c *config) { c.noKeyInEvents = true })
}
