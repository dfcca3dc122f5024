package idempotency

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sony/gobreaker/v2"
)

// ErrCircuitOpen is the error of a keyed request that was not sent to the
// store because the store kept failing (SPEC 32): the middleware answers it
// at once like any store failure, with 503 or, with [WithFailOpen], by
// running the handler without idempotency.
var ErrCircuitOpen = errors.New("idempotency: store circuit open after consecutive failures; not called")

// breaker stops calling a store that keeps failing. It is a
// sony/gobreaker two-step circuit breaker around Acquire: after the given
// consecutive failures it opens and refuses at once; after the probe
// interval it lets one request through, and closes when that one succeeds.
//
// gobreaker reports a change of state while it holds its lock, so the
// breaker only notes it there; the event and the log line go out from the
// request that caused the change, once the lock is released, so that a slow
// event hook never holds up other requests' store calls.
type breaker struct {
	cb      *gobreaker.TwoStepCircuitBreaker[struct{}]
	changed atomic.Bool // pending holds changes to report
	mu      sync.Mutex
	pending []gobreaker.State
	// refused counts the requests the open circuit answered since the last
	// summary line, logged at summarized (unix ns; 0: none this outage).
	refused    atomic.Int64
	summarized atomic.Int64
}

// refusalSummaryEvery is how often, at most, the breaker logs how many
// requests its open circuit answered without calling the store. Each of
// those is logged at debug level only: during an outage, thousands of
// requests a second would otherwise each log an error.
const refusalSummaryEvery = 10 * time.Second

// newBreaker returns the breaker of m, or nil when it is off or the store
// answers from memory.
func newBreaker(m *middleware) *breaker {
	if m.breakerFailures <= 0 || m.inProcess {
		return nil
	}
	failures := uint32(m.breakerFailures)
	b := &breaker{}
	b.cb = gobreaker.NewTwoStepCircuitBreaker[struct{}](gobreaker.Settings{
		Name:    "idempotency store",
		Timeout: m.breakerProbe,
		ReadyToTrip: func(counts gobreaker.Counts) bool {
			return counts.ConsecutiveFailures >= failures
		},
		IsExcluded: excluded,
		OnStateChange: func(_ string, _, to gobreaker.State) {
			b.mu.Lock()
			b.pending = append(b.pending, to)
			b.mu.Unlock()
			b.changed.Store(true)
		},
	})
	return b
}

// report sends out the changes of state noted since the last report.
func (b *breaker) report(m *middleware) {
	if b == nil || !b.changed.Load() {
		return
	}
	b.mu.Lock()
	changes := b.pending
	b.pending = nil
	b.changed.Store(false)
	b.mu.Unlock()
	for _, to := range changes {
		m.breakerChanged(to)
	}
}

// errStorePanicked is the outcome the breaker records for a store call that
// panicked instead of returning.
var errStorePanicked = errors.New("idempotency: a store call panicked")

// excluded reports whether a store call's error says nothing of the store's
// health, so that the breaker counts it neither way (SPEC 32): a lost lease
// or an unreadable record is an answer, a wait for a local resource is
// queueing, and a panic is a bug of the caller's or the store's code.
func excluded(err error) bool {
	return errors.Is(err, ErrNotOwner) || errors.Is(err, ErrCorruptRecord) ||
		errors.Is(err, ErrPoolWait) || errors.Is(err, errStorePanicked)
}

// breakerCall is one store call the breaker let through, until its outcome
// is recorded. The zero value records nothing.
//
// gobreaker counts a call from Allow until its outcome is recorded; in the
// half-open state it lets one call through at a time, so a call whose
// outcome is never recorded (its store panicked) would hold the probe slot
// for good and every later call would be refused. A caller therefore
// defers abandon once, before the first admit, and calls end after each
// store call:
//
//	var call breakerCall
//	defer call.abandon()
//	if !m.breaker.admit(&call) { ... }
//	err := m.store.Acquire(...)
//	call.end(err)
type breakerCall struct {
	done func(error) // gobreaker's, until the outcome is recorded
}

// admit reports whether a store call may go ahead; call.end records its
// outcome. A nil breaker admits every call and records nothing.
func (b *breaker) admit(call *breakerCall) bool {
	if b == nil {
		return true
	}
	call.abandon() // a caller that skipped end: the earlier call never counts
	done, err := b.cb.Allow()
	if err != nil {
		return false
	}
	call.done = done
	return true
}

// end records the outcome of the call; only the first end after admit
// counts.
func (call *breakerCall) end(err error) {
	if done := call.done; done != nil {
		call.done = nil
		done(err)
	}
}

// abandon records a call that has not ended, because its store panicked, as
// an excluded outcome: it neither trips the breaker nor holds its probe
// slot. It does nothing after end; the panic goes on.
func (call *breakerCall) abandon() { call.end(errStorePanicked) }

// breakerChanged reports a change of the breaker's state as an event and a
// log line.
func (m *middleware) breakerChanged(to gobreaker.State) {
	kind, level := EventBreakerClosed, slog.LevelInfo
	switch to {
	case gobreaker.StateOpen:
		kind, level = EventBreakerOpen, slog.LevelWarn
	case gobreaker.StateHalfOpen:
		kind = EventBreakerHalfOpen
	}
	ctx := context.Background()
	if to == gobreaker.StateClosed { // the outage is over: the refusals not yet summarized, then the change
		m.summarizeRefusals(ctx, m.breaker.refused.Swap(0))
		m.breaker.summarized.Store(0)
	}
	m.logger.LogAttrs(ctx, level, "idempotency: store circuit "+to.String(),
		slog.Duration("probe_every", m.breakerProbe))
	if m.onEvent != nil {
		m.onEvent(ctx, Event{Kind: kind})
	}
}

// refused counts a keyed request that the open circuit answered without
// calling the store, and logs the summary of such requests when one is due:
// at the first of an outage, then at most every refusalSummaryEvery, and
// when the circuit closes.
func (m *middleware) refused(ctx context.Context) {
	b := m.breaker
	if b == nil {
		return
	}
	b.refused.Add(1)
	now, last := time.Now().UnixNano(), b.summarized.Load()
	if last != 0 && now-last < int64(refusalSummaryEvery) || !b.summarized.CompareAndSwap(last, now) {
		return
	}
	m.summarizeRefusals(ctx, b.refused.Swap(0))
}

// summarizeRefusals logs that n keyed requests were answered without the
// store since the last such line: refused with 503 (an error), or run
// without idempotency with WithFailOpen (a warning).
func (m *middleware) summarizeRefusals(ctx context.Context, n int64) {
	if n == 0 {
		return
	}
	level, msg := slog.LevelError, "idempotency: store circuit open: keyed requests refused with 503 without calling the store"
	if m.failOpen {
		level, msg = slog.LevelWarn, "idempotency: store circuit open: keyed requests run without idempotency"
	}
	m.logger.LogAttrs(ctx, level, msg, slog.Int64("refused", n), slog.Duration("probe_every", m.breakerProbe))
}

// defaultBreakerProbe is how long the breaker stays open before it probes
// the store again: the Retry-After the refused requests get.
const defaultBreakerProbe = time.Second

// WithCircuitBreaker sets when the middleware stops calling a store that
// keeps failing (default: after 5 consecutive failed acquisitions, probing
// every second). While the circuit is open, keyed requests are answered at
// once, 503 with Retry-After or, with [WithFailOpen], by running the handler
// without idempotency, instead of each waiting for the store timeout. After
// probeEvery one request probes the store, and the circuit closes when it
// succeeds. Each change is an event and a log line. failures 0 turns the
// breaker off. A [MemoryStore] never needs one.
//
//	idempotency.WithCircuitBreaker(10, 2*time.Second)
func WithCircuitBreaker(failures int, probeEvery time.Duration) Option {
	if failures < 0 {
		panic(fmt.Sprintf("idempotency: circuit breaker failures must not be negative, got %d", failures))
	}
	if failures > 0 {
		mustPositive("circuit breaker probe interval", probeEvery)
	}
	return optionFunc(func(c *config) { c.breakerFailures, c.breakerProbe = failures, probeEvery })
}
