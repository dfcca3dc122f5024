package suite

import (
	"context"
	"encoding/binary"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	idem "github.com/ginidem/idempotency"
)

// FunctionReliability (TestFunctionReliability) runs, through Runner.Do on
// the store of h, every case of the behaviour and reliability tables
// (behaviour.go, reliability.go) whose behaviour applies to a function: the
// Runner shares the middleware's lifecycle, so it must keep the same
// guarantees on every store (issue 22). The conformance table is
// store-level and runs as it is.
//
// Not applicable to a function, so not here:
//   - SPEC 1-3 and 5 (header names, two values, bare and quoted forms, a
//     required or missing key, methods): a Call names its key in a field,
//     not in headers, and has no method. Its key is any string but the
//     empty one (SPEC 3 and 27 below); SPEC 4's canonical UUID is below.
//   - SPEC 4's validators and SPEC 8's fingerprint policies: a Runner has
//     neither; the payload's bytes are the fingerprint (SPEC 16 below).
//   - SPEC 6's scope function and SPEC 20 (authorization first): the
//     caller names the scope in the Call, and there is no request to
//     authorize. Scope isolation itself is below.
//   - SPEC 9 (body cap, 413, chunked and slow bodies, including
//     reliability's "a slow body that times out holds no key"): the payload
//     is in memory already, and only its SHA-256 is kept.
//   - SPEC 11, 14 and 17's header, conflict-mode and replay-header options
//     (replayable headers, streamed or hijacked responses, 409 with
//     Location): a result is bytes, with no headers and no stream; the
//     result over the cap (SPEC 15) is below.
//   - SPEC 12's statuses (5xx, 408, 425, 429 released; WithKeep; a handler
//     that wrote nothing; headers written, then a panic): a function has no
//     status; its error releases the key unless WithKeepError keeps it, an
//     empty result is a result, and a panic releases the key (below).
//   - SPEC 13's "the handler's work is not cancelled when the client goes
//     away": the function gets its caller's context, which the caller
//     controls; that the recording does not depend on it is below.
//   - SPEC 16's 422 option, SPEC 18's Retry-After and SPEC 21 (problem
//     documents, a replaceable writer): Do returns ErrMismatch, ErrInFlight
//     and store errors as Go errors, not HTTP answers.
//   - SPEC 22's fail open: NewRunner ignores WithFailOpen; that a function
//     never runs without its key even with it is below.
//   - SPEC 28 (nesting), 33's route warnings and 34 (skip predicate, query
//     parsing, zero stores refused by New): HTTP routing and New only.
//
// Store-specific faults (a Redis paused, restarted or out of memory; a
// Postgres transaction killed) and what a store does about them on its own
// (RedisStore's pending completions answered to a retry on the same
// process, a lost acquisition's key released by its token) need the real
// server's fault and run in the stores' own tests; the cases here reach the
// store through wrappers, as every store looks to the Runner.
func FunctionReliability(t *testing.T, h Harness) { runBehaviours(t, h, functionCases) }

// newRunner is a Runner with opts that logs nothing: the cases check
// events, and a store failure would log at error level.
func newRunner(opts ...idem.Option) *idem.Runner {
	return idem.NewRunner(append([]idem.Option{idem.WithLogger(slog.New(slog.DiscardHandler))}, opts...)...)
}

// fn is the function a test runs under a key.
type fn = func(context.Context, idem.Tx) ([]byte, error)

// returning is a function that counts its run in runs and returns value.
func returning(runs *atomic.Int32, value string) fn {
	return func(context.Context, idem.Tx) ([]byte, error) {
		runs.Add(1)
		return []byte(value), nil
	}
}

// failing is a function that counts its run in runs and returns err.
func failing(runs *atomic.Int32, err error) fn {
	return func(context.Context, idem.Tx) ([]byte, error) {
		runs.Add(1)
		return nil, err
	}
}

// callResult is what one Runner.Do returned.
type callResult struct {
	res idem.Result
	err error
}

// heldCall is a Runner.Do running in the background, its function held
// until letGo.
type heldCall struct {
	t    *testing.T
	gate chan struct{}
	once sync.Once
	done chan callResult
}

// startHeld runs runner.Do(ctx, call) in the background with a function
// that waits until letGo, then returns what then returns. It returns once
// the function runs. The function is let go when the test ends at the
// latest, so that a failing test fails instead of hanging.
func startHeld(ctx context.Context, t *testing.T, runner *idem.Runner, call idem.Call, then fn) *heldCall {
	t.Helper()
	c := &heldCall{t: t, gate: make(chan struct{}), done: make(chan callResult, 1)}
	entered := make(chan struct{})
	go func() {
		res, err := runner.Do(ctx, call, func(ctx context.Context, tx idem.Tx) ([]byte, error) {
			close(entered)
			<-c.gate
			return then(ctx, tx)
		})
		c.done <- callResult{res, err}
	}()
	t.Cleanup(c.letGo)
	select {
	case <-entered:
	case r := <-c.done:
		t.Fatalf("the function did not run: %+v", r)
	case <-time.After(10 * time.Second):
		t.Fatal("the function did not start")
	}
	return c
}

// letGo lets the held function return.
func (c *heldCall) letGo() { c.once.Do(func() { close(c.gate) }) }

// wait returns what Do returned, and fails the test when it does not return.
func (c *heldCall) wait() callResult {
	c.t.Helper()
	select {
	case r := <-c.done:
		return r
	case <-time.After(10 * time.Second):
		c.t.Fatal("Do did not return")
		return callResult{}
	}
}

// outageStore is a store whose completions, releases and renewals fail
// while Down is set, as those of a store that went down after a key was
// taken; the commits and releases of its transactions (on a TxStore) fail
// too. Acquisitions still work: CountingStore.Fail takes those down.
type outageStore struct {
	idem.Store
	Down atomic.Bool
	// UsedTx makes its transactions say that the function used them, so
	// that the Runner ends them with a commit, as when a function wrote
	// through its transaction.
	UsedTx atomic.Bool
}

func (s *outageStore) Complete(ctx context.Context, key, token string, rec *idem.Record, ttl time.Duration) error {
	if s.Down.Load() {
		return ErrStoreDown
	}
	return s.Store.Complete(ctx, key, token, rec, ttl)
}

func (s *outageStore) Release(ctx context.Context, key, token string) error {
	if s.Down.Load() {
		return ErrStoreDown
	}
	return s.Store.Release(ctx, key, token)
}

func (s *outageStore) Extend(ctx context.Context, key, token string, lease time.Duration) error {
	if s.Down.Load() {
		return ErrStoreDown
	}
	return s.Store.Extend(ctx, key, token, lease)
}

// withOutage wraps the harness's store in an outageStore; a TxStore stays
// one.
func withOutage(h Harness, o **outageStore) Harness {
	return Harness{Name: h.Name, Tx: h.Tx, New: func(t *testing.T) (idem.Store, func(time.Duration)) {
		s, advance := h.New(t)
		*o = &outageStore{Store: s}
		if _, ok := s.(idem.TxStore); ok {
			return outageTxStore{*o}, advance
		}
		return *o, advance
	}}
}

// outageTxStore is an outageStore over a TxStore that stays a TxStore.
type outageTxStore struct{ *outageStore }

func (s outageTxStore) Begin(ctx context.Context, key, token string) (idem.Tx, error) {
	tx, err := s.Store.(idem.TxStore).Begin(ctx, key, token)
	if err != nil {
		return nil, err
	}
	return &outageTx{Tx: tx, s: s.outageStore}, nil
}

// outageTx is a transaction of an outageTxStore: while the store is down,
// its commit and release fail, and the transaction is gone with its
// connection.
type outageTx struct {
	idem.Tx
	s *outageStore
}

func (tx *outageTx) Commit(ctx context.Context, rec *idem.Record, ttl time.Duration) error {
	if tx.s.Down.Load() {
		_ = tx.Tx.Rollback(ctx)
		return ErrStoreDown
	}
	return tx.Tx.Commit(ctx, rec, ttl)
}

func (tx *outageTx) Release(ctx context.Context) error {
	if tx.s.Down.Load() {
		_ = tx.Tx.Rollback(ctx)
		return ErrStoreDown
	}
	return tx.Tx.Release(ctx)
}

// Begun reports what the store's own transaction reports (a lazy
// transaction the function never used is not begun), unless UsedTx is set.
func (tx *outageTx) Begun() bool {
	if tx.s.UsedTx.Load() {
		return true
	}
	b, ok := tx.Tx.(interface{ Begun() bool })
	return !ok || b.Begun()
}

// requestFingerprint is the fingerprint the middleware's default policy
// (the query string, then the raw body) gives a request without a query:
// the bytes it hashes, framed as fingerprint.go frames them. A payload of
// these bytes has, as a function's payload, the request's fingerprint.
func requestFingerprint(method, path, body string) []byte {
	var b []byte
	for _, field := range []string{method, path, "", body} {
		b = binary.BigEndian.AppendUint64(b, uint64(len(field)))
		b = append(b, field...)
	}
	return b
}

// functionCases is every function reliability case, by SPEC point.
var functionCases = slices.Concat(functionKeyCases, functionLeaseCases, functionResultCases,
	functionWaitCases, functionOutageCases, functionOperatorCases)
