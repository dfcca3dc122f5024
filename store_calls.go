package idempotency

import (
	"bytes"
	"context"
	"errors"
	"time"

	"github.com/gin-gonic/gin"
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
func (m *middleware) acquire(c *gin.Context, f *flight) (string, *Record, error) {
	var deadline time.Time
	if m.waitInFlight > 0 {
		deadline = time.Now().Add(m.waitInFlight)
	}
	pause := 10 * time.Millisecond
	for {
		ctx, cancel := m.storeCtx(c.Request.Context())
		token, held, err := m.store.Acquire(ctx, f.key, &f.claim, m.lease)
		cancel()
		if err == nil && held != nil && !validRecord(held) {
			err = errors.New("idempotency: store returned an invalid record")
		}
		if err != nil || held == nil || held.State != InFlight ||
			!bytes.Equal(held.Fingerprint, f.claim.Fingerprint) {
			return token, held, err
		}
		left := time.Until(deadline)
		if m.waitInFlight == 0 || left <= 0 {
			return token, held, nil
		}
		wait := time.NewTimer(min(pause, left))
		select {
		case <-c.Request.Context().Done():
			wait.Stop()
			return token, held, nil
		case <-wait.C:
		}
		pause = min(2*pause, 500*time.Millisecond)
	}
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

func (m *middleware) complete(c *gin.Context, f *flight, token string, status int) {
	out := f.rec.result(&f.claim)
	ctx, cancel := m.storeCtx(c.Request.Context())
	defer cancel()
	switch err := m.store.Complete(ctx, f.key, token, out, m.ttl); {
	case errors.Is(err, ErrNotOwner):
		m.emit(c, f, EventLostLease, status, err)
	case err != nil:
		m.emit(c, f, EventStoreError, status, err)
	default:
		m.emit(c, f, EventCompleted, status, nil)
	}
}

func (m *middleware) release(c *gin.Context, f *flight, token string, status int) {
	ctx, cancel := m.storeCtx(c.Request.Context())
	defer cancel()
	switch err := m.store.Release(ctx, f.key, token); {
	case errors.Is(err, ErrNotOwner):
		m.emit(c, f, EventLostLease, status, err)
	case err != nil:
		m.emit(c, f, EventStoreError, status, err)
	default:
		m.emit(c, f, EventReleased, status, nil)
	}
}
