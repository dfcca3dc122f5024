package idempotency

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"net/http"
)

// A Runner runs functions under idempotency keys, outside HTTP: a message
// consumer whose queue delivers at least once, a job that may be started
// twice. It is the middleware's lifecycle without Gin: the key is taken
// with a lease and a fencing token, the lease is renewed while the function
// runs, its result is recorded and given to every later call with the key,
// and on a [TxStore] the function's writes commit with the record. A
// Runner is safe for concurrent use.
type Runner struct{ m *middleware }

// NewRunner returns a Runner configured by opts, as [New] configures the
// middleware: [WithStore], [WithLease], [WithTTL], [WithStoreTimeout],
// [WithWaitInFlight], [WithCircuitBreaker], [WithMaxResponseBytes] (the
// largest result kept), [WithEventHook], [WithLogger] and [WithKeepError]
// apply; the options of HTTP requests are ignored, and a store failure is
// always an error ([WithFailOpen] does not apply). It panics, with an
// "idempotency:" prefix, on an invalid option.
//
//	runner := idempotency.NewRunner(idempotency.WithStore(store))
//	res, err := runner.Do(ctx, idempotency.Call{Scope: "orders", Key: msg.ID, Payload: msg.Body},
//		func(ctx context.Context, tx idempotency.Tx) ([]byte, error) { return apply(ctx, msg) })
func NewRunner(opts ...Option) *Runner {
	return &Runner{m: newMiddleware(opts)}
}

// Call names one call of a function: whose it is, under which key, and
// what it is about.
type Call struct {
	// Scope is whose key it is (a tenant, a producer); calls with the same
	// key in two scopes are two calls. It may be empty.
	Scope string
	// Key is the idempotency key: a message or event id. It is required
	// ([ErrNoKey]); a UUID is compared in its canonical form.
	Key string
	// Payload is what the call is about (the message body): a call with
	// the key and another payload gets [ErrMismatch]. Only its SHA-256 is
	// kept.
	Payload []byte
}

// Result is what a call returned: run now, or recorded by an earlier call
// with the key (Replayed).
type Result struct {
	Value    []byte
	Replayed bool
	// Omitted: the result was larger than the cap ([WithMaxResponseBytes])
	// and was not kept; Value is empty on a replay.
	Omitted bool
}

var (
	// ErrInFlight is returned by [Runner.Do] when a call with the key is
	// still running (on this process or another): retry later, as the
	// 409 of a duplicate request says. [WithWaitInFlight] waits instead.
	ErrInFlight = errors.New("idempotency: a call with this key is still running; retry later")
	// ErrNoKey is returned by [Runner.Do] for a call without a key: calls
	// without one would all share one record.
	ErrNoKey = errors.New("idempotency: a call needs a key")
	// ErrMismatch is returned by [Runner.Do] when the key was used with
	// another payload.
	ErrMismatch = errors.New("idempotency: the key was used with another payload")
)

// A RecordedError is the error of an earlier call with the key, kept by
// [WithKeepError] and returned to the later calls.
type RecordedError struct{ Message string }

func (e *RecordedError) Error() string { return "idempotency: recorded error: " + e.Message }

// WithKeepError makes a [Runner] keep the errors for which keep reports
// true, as a result: later calls with the key get them back as a
// [RecordedError] and the function does not run again. By default every
// error releases the key, so that a redelivery runs the function again.
//
//	idempotency.WithKeepError(func(err error) bool { return errors.Is(err, ErrInvalidOrder) })
func WithKeepError(keep func(error) bool) Option {
	if keep == nil {
		panic("idempotency: WithKeepError(nil)")
	}
	return optionFunc(func(c *config) { c.keepError = keep })
}

// Statuses of a function's records: a result, and a kept error.
const (
	callResult = http.StatusOK
	callError  = http.StatusUnprocessableEntity
)

// Do runs fn under call's key, or returns the result recorded by an
// earlier call with it. fn gets the call's transaction on a [TxStore] (the
// pgstore package reads it with pgstore.TxOf), else nil; its writes through
// it commit with the record, or not at all. An error from fn releases the
// key (unless [WithKeepError] keeps it) and is returned as it is. A call
// whose key is held by a running call gets [ErrInFlight]; one with another
// payload [ErrMismatch]; one without a key [ErrNoKey]; a store failure an
// error wrapping the store's.
func (r *Runner) Do(ctx context.Context, call Call, fn func(ctx context.Context, tx Tx) ([]byte, error)) (Result, error) {
	if call.Key == "" {
		return Result{}, ErrNoKey
	}
	m := r.m
	f := &flight{route: "call", claim: Record{Method: "CALL"}}
	sum := sha256.Sum256(call.Payload)
	f.claim.Fingerprint = sum[:]
	key := canonicalKey(call.Key)
	f.view.key = key
	h := m.hashers.Get().(*hasher)
	var hexSum [2 * sha256.Size]byte
	h.storeKey(call.Scope, key, &f.scope, &hexSum)
	m.hashers.Put(h)
	f.key = string(hexSum[:])

	token, held, err := m.acquire(ctx, f)
	switch {
	case err != nil:
		m.emit(ctx, f, EventStoreError, 0, err)
		return Result{}, fmt.Errorf("idempotency: acquiring the call's key: %w", err)
	case held == nil:
		return m.runCall(ctx, f, token, fn)
	case !sameRequest(held, &f.claim):
		m.emit(ctx, f, EventMismatch, 0, nil)
		return Result{}, ErrMismatch
	case held.State == InFlight:
		m.emit(ctx, f, EventConflict, 0, nil)
		return Result{}, ErrInFlight
	}
	m.emit(ctx, f, EventReplayed, held.Status, nil)
	if held.Status == callError {
		return Result{Replayed: true}, &RecordedError{Message: string(held.Body)}
	}
	return Result{Value: held.Body, Replayed: true, Omitted: held.BodyOmitted}, nil
}

// runCall runs fn under the key token holds, then records its result, or
// releases the key.
func (m *middleware) runCall(ctx context.Context, f *flight, token string, fn func(context.Context, Tx) ([]byte, error)) (Result, error) {
	m.emit(ctx, f, EventAcquired, 0, nil)
	var tx Tx
	if m.txStore != nil {
		sctx, cancel := m.storeCtx(ctx)
		var err error
		tx, err = m.txStore.Begin(sctx, f.key, token)
		cancel()
		if err != nil {
			m.release(ctx, f, token, 0)
			return Result{}, fmt.Errorf("idempotency: beginning the call's transaction: %w", err)
		}
		defer m.rollback(ctx, tx) // does nothing once the transaction ended
	}
	m.leases.start(ctx, &f.lease, f.key, token)
	done := false
	defer func() {
		if !done { // fn panicked: release, and let the panic go on
			m.endCall(ctx, f, tx, token)
		}
	}()
	value, err := fn(ctx, tx)
	done = true
	status := callResult
	if err != nil {
		var encoding *encodingError
		if m.keepError == nil || errors.As(err, &encoding) || !m.keepError(err) {
			m.endCall(ctx, f, tx, token)
			return Result{}, err
		}
		status, value = callError, []byte(err.Error())
	}
	out := &Record{State: Completed, Fingerprint: f.claim.Fingerprint, Method: f.claim.Method, Status: status, Body: value}
	omitted := len(value) > m.maxResponse
	if omitted {
		out.Body, out.BodyOmitted = nil, true
	}
	if tx != nil && begun(tx) {
		if !m.commit(ctx, f, tx, token, out, status) {
			return Result{}, ErrNotCommitted
		}
	} else {
		if tx != nil {
			m.rollback(ctx, tx)
		}
		m.complete(ctx, f, token, out, status)
	}
	if status == callError {
		return Result{}, err
	}
	return Result{Value: value, Omitted: omitted}, nil
}

// ErrNotCommitted is returned by [Runner.Do] when the call's transaction
// did not commit: its writes and its record are rolled back (or, when the
// connection broke during the commit, the outcome is unknown), so the
// caller treats the call as not done and a redelivery finds out.
var ErrNotCommitted = errors.New("idempotency: the call's transaction did not commit; its effect is not known to have happened")

// endCall ends a call whose result is not kept: its transaction rolls back
// and its key is released, unless its lease was lost meanwhile.
func (m *middleware) endCall(ctx context.Context, f *flight, tx Tx, token string) {
	if m.leases.stop(&f.lease) {
		if tx != nil {
			m.rollback(ctx, tx)
		}
		m.emit(ctx, f, EventLostLease, 0, ErrNotOwner)
		return
	}
	if tx != nil {
		m.releaseTx(ctx, f, tx, token, 0)
		return
	}
	m.release(ctx, f, token, 0)
}
