package idempotency

import (
	"context"
	"time"
)

// A pendingKeeper is a store that keeps, on this process, the work the
// middleware still owes it once a request has ended: completions and
// releases that the store did not confirm (an outage, a failover's write
// pause). It answers a retry of such a key on this process from that work
// instead of from the store: a pending completion is replayed, and a
// pending release is taken over by the retry's own acquisition. RedisStore
// is one.
type pendingKeeper interface {
	// completing keeps rec, completed under token, as key's answer while
	// the middleware retries its completion.
	completing(key, token string, rec *Record, ttl time.Duration)
	// settled forgets the pending completion of key under token: it was
	// stored, refused or given up.
	settled(key, token string)
	// queueRelease takes over the release of key under token: the store
	// retries it until it answers or until, when the lease is surely over,
	// and an acquisition of key on this process takes the record over. It
	// reports false when it cannot (its bounds are reached).
	queueRelease(key, token string, until time.Time) bool
}

// tryRelease makes one release attempt and reports whether its outcome is
// final (see tryStore).
func (m *middleware) tryRelease(ctx context.Context, f *flight, token string, status int, first bool) bool {
	return m.tryStore(ctx, f, StoreRelease, EventReleased, status, first, func(sctx context.Context) error {
		return m.store.Release(sctx, f.key, token)
	})
}

// releaseLater hands a release that failed to the store when it keeps
// pending work, and else retries it in a goroutine of its own. Either way
// the attempts end once the lease is surely over: the store has then let
// the key expire. Twice the lease, because a renewal the store received
// late (a stalled server that wakes) may have pushed the lease's end past
// one lease from now.
func (m *middleware) releaseLater(ctx context.Context, f *flight, token string, status int) {
	until := time.Now().Add(2 * m.lease)
	if p, ok := m.store.(pendingKeeper); ok && p.queueRelease(f.key, token, until) {
		return
	}
	go m.retryRelease(ctx, f.detached(), token, status, until)
}

// detached returns what the events of a background store call need of f,
// in a flight of its own: the request's code may still report on f (a
// failed transaction's 503) while the background call runs.
func (f *flight) detached() *flight {
	return &flight{scope: f.scope, key: f.key, route: f.route, claim: Record{Method: f.claim.Method},
		view: requestView{key: f.view.key}}
}

// retryRelease retries a release with backoff until the store answers
// (released, or the key is no longer this token's) or until.
func (m *middleware) retryRelease(ctx context.Context, f *flight, token string, status int, until time.Time) {
	pause := 50 * time.Millisecond
	for {
		wait := time.NewTimer(min(pause, max(time.Until(until), 0)))
		<-wait.C
		if !time.Now().Before(until) || m.tryRelease(ctx, f, token, status, false) {
			return
		}
		pause = min(2*pause, time.Second)
	}
}
