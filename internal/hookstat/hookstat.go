// Package hookstat holds what the metrics adapters (promidem, otelidem)
// read from an [idempotency.Event] in the same way: the route label, the
// change of the in-flight count, the breaker's state, and hook chaining.
// Keeping it in one place keeps the two adapters from drifting apart.
package hookstat

import (
	"context"

	"github.com/ginidem/idempotency"
)

// Unmatched is the route label of a request that no route matched. The raw
// path is never a label: it would make one series per URL.
const Unmatched = "unmatched"

// Route returns the label of an event's route: the Gin pattern itself, or
// [Unmatched] for an empty one.
func Route(route string) string {
	if route == "" {
		return Unmatched
	}
	return route
}

// InFlightDelta returns how e changes the number of keyed requests whose
// handler runs under a lease: +1 when a key is acquired, -1 when that run
// ends. A run ends with exactly one of completed, released, lost_lease, or
// a store error of the release itself. A failed completion is not an end:
// the middleware retries it and reports completed or lost_lease later, and
// a transactional store releases the key after a failed commit.
func InFlightDelta(e idempotency.Event) int64 {
	switch e.Kind {
	case idempotency.EventAcquired:
		return 1
	case idempotency.EventCompleted, idempotency.EventReleased, idempotency.EventLostLease:
		return -1
	case idempotency.EventStoreError:
		if e.StoreOp == idempotency.StoreRelease {
			return -1
		}
	}
	return 0
}

// Breaker states, as the adapters' gauges report them.
const (
	BreakerClosed   = 0
	BreakerHalfOpen = 1
	BreakerOpen     = 2
)

// BreakerState returns the breaker state that an event of kind k reports,
// and false when k is not a breaker event.
func BreakerState(k idempotency.EventKind) (int64, bool) {
	switch k {
	case idempotency.EventBreakerClosed:
		return BreakerClosed, true
	case idempotency.EventBreakerHalfOpen:
		return BreakerHalfOpen, true
	case idempotency.EventBreakerOpen:
		return BreakerOpen, true
	}
	return 0, false
}

// LatencyBuckets returns the default upper bounds, in seconds, of the
// store-latency histograms: from half a millisecond, a Redis round trip on
// a local network, to 2.5 s, beyond the default store timeout of 1 s.
func LatencyBuckets() []float64 {
	return []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5}
}

// Chain returns a hook that calls each non-nil hook in turn.
func Chain(hooks ...func(context.Context, idempotency.Event)) func(context.Context, idempotency.Event) {
	hs := make([]func(context.Context, idempotency.Event), 0, len(hooks))
	for _, h := range hooks {
		if h != nil {
			hs = append(hs, h)
		}
	}
	return func(ctx context.Context, e idempotency.Event) {
		for _, h := range hs {
			h(ctx, e)
		}
	}
}
