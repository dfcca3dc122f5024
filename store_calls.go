package idempotency

import (
	"bytes"
	"context"
	"errors"
	"time"
)

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
func (m *middleware) acquire(req context.Context, f *flight) (string, *Record, error) {
	var deadline time.Time
	if m.waitInFlight > 0 {
		deadline = time.Now().Add(m.waitInFlight)
	}
	pause := 10 * time.Millisecond
	var call breakerCall
	defer call.abandon() // a store that panics never holds the breaker's probe slot
	for {
		if m.cache != nil {
			if held := m.cache.Cached(f.key); held != nil {
				return "", held, nil // no network call: nothing for the breaker to count
			}
		}
		ok := m.breaker.admit(&call)
		m.breaker.report(m)
		if !ok {
			return "", nil, ErrCircuitOpen
		}
		ctx, cancel := m.acquireCtx(req) // a TxStore may first queue on the pool
		start := time.Now()
		token, held, err := m.store.Acquire(ctx, f.key, &f.claim, m.lease)
		f.call = storeCall{StoreAcquire, time.Since(start)}
		cancel()
		call.end(err)
		m.breaker.report(m)
		if err == nil && held != nil && !validRecord(held) {
			err = errors.New("idempotency: store returned an invalid record")
		}
		if err != nil || held == nil || held.State != InFlight || !sameRequest(held, &f.claim) {
			return token, held, err
		}
		left := time.Until(deadline)
		if m.waitInFlight == 0 || left <= 0 {
			return token, held, nil
		}
		wait := time.NewTimer(min(pause, left))
		select {
		case <-req.Done():
			wait.Stop()
			return token, held, nil
		case <-wait.C:
		}
		pause = min(2*pause, 500*time.Millisecond)
	}
}

// sameRequest reports whether the record that holds a key was made by the
// same request as claim: the same fingerprint and the same method (a
// function's record says CALL), so that neither a request nor a function
// is ever answered with the other's result.
func sameRequest(held, claim *Record) bool {
	return held.Method == claim.Method && bytes.Equal(held.Fingerprint, claim.Fingerprint)
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

// complete stores the response under the key. The first attempt is made
// before the client is answered. When the store refuses it or does not
// confirm it in time (a failover's write pause, an out-of-memory answer,
// an outage), the attempts go on in the background, with the lease still
// renewed, until one succeeds, another request holds the key, or the retry
// limit passes: a handler that finished never runs again because one write
// was briefly refused (SPEC 23). Meanwhile a store that keeps pending
// answers gives this one to a retry on this process.
func (m *middleware) complete(ctx context.Context, f *flight, token string, out *Record, status int) {
	if m.tryComplete(ctx, f, token, out, status, true) { // storeCtx detaches the call
		m.leases.stop(&f.lease)
		return
	}
	if p, ok := m.store.(pendingKeeper); ok {
		p.completing(f.key, token, out, m.ttl)
	}
	go m.completeLater(context.WithoutCancel(ctx), f, token, out, status)
}

// tryComplete makes one completion attempt and reports whether its
// outcome is final (see tryStore).
func (m *middleware) tryComplete(ctx context.Context, f *flight, token string, out *Record, status int, first bool) bool {
	return m.tryStore(ctx, f, StoreComplete, EventCompleted, status, first, func(sctx context.Context) error {
		return m.store.Complete(sctx, f.key, token, out, m.ttl)
	})
}

// tryStore makes one call of op within the store timeout and reports
// whether its outcome is final: done (the event done), or the key no
// longer the token's (lost lease). Only the first failure is reported as a
// store error: background retries stay quiet until they end.
func (m *middleware) tryStore(ctx context.Context, f *flight, op StoreOp, done EventKind, status int, first bool, call func(context.Context) error) bool {
	sctx, cancel := m.storeCtx(ctx)
	defer cancel()
	start := time.Now()
	err := call(sctx)
	f.call = storeCall{op, time.Since(start)}
	switch {
	case errors.Is(err, ErrNotOwner):
		m.emit(ctx, f, EventLostLease, status, err)
	case err != nil:
		if first {
			m.emit(ctx, f, EventStoreError, status, err)
		}
		return false
	default:
		m.emit(ctx, f, done, status, nil)
	}
	return true
}

// completeRetryLimit bounds the background attempts of one completion, in
// leases: a store that refuses writes for longer (a full Redis whose leases
// can still be renewed) gets the key back, released as the completion
// gives up.
const completeRetryLimit = 10

// errCompletionAbandoned is the error of the lost-lease event of a
// completion that the store refused until the retry limit.
var errCompletionAbandoned = errors.New("idempotency: the store refused the completion until the retry limit; the key is released")

// completeLater retries a completion with backoff. A lease that could not
// be renewed is no reason to stop: a store that was down for longer than
// the lease still takes the record if nobody else took the key meanwhile,
// and only the store can tell (ErrNotOwner). It ends within
// completeRetryLimit leases, and stops the lease.
func (m *middleware) completeLater(ctx context.Context, f *flight, token string, out *Record, status int) {
	if p, ok := m.store.(pendingKeeper); ok {
		defer p.settled(f.key, token)
	}
	defer m.leases.stop(&f.lease)
	giveUp := time.Now().Add(completeRetryLimit * m.lease)
	pause := 50 * time.Millisecond
	for {
		wait := time.NewTimer(pause)
		<-wait.C
		if time.Now().After(giveUp) {
			m.leases.stop(&f.lease)
			m.emit(ctx, f, EventLostLease, status, errCompletionAbandoned)
			if !m.tryRelease(ctx, f, token, status, false) {
				m.releaseLater(ctx, f, token, status)
			}
			return
		}
		if m.tryComplete(ctx, f, token, out, status, false) {
			return
		}
		pause = min(2*pause, time.Second)
	}
}

// release deletes the in-flight record, so that a retry runs again. A
// release the store does not confirm (a 5xx answered while it is down) is
// retried in the background until the store answers or the lease is
// surely over: the key is never locked for a whole lease by work that is
// not running (SPEC 22).
func (m *middleware) release(ctx context.Context, f *flight, token string, status int) {
	if m.tryRelease(ctx, f, token, status, true) {
		return
	}
	m.releaseLater(context.WithoutCancel(ctx), f, token, status)
}
