package suite

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/google/uuid"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

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

var functionCases = []behaviour{
	// Keys and scopes (3-7).
	{"spec3/an empty key is refused; the function does not run and no store call is made", func(t *testing.T, h Harness) {
		var cs *CountingStore
		store, _ := Counted(h, &cs).New(t)
		runner := newRunner(idem.WithStore(store))
		var runs atomic.Int32
		for range 2 {
			_, err := runner.Do(context.Background(), idem.Call{Scope: "jobs", Payload: []byte("x")}, returning(&runs, "ran"))
			assert.ErrorIs(t, err, idem.ErrNoKey)
		}
		assert.Zero(t, runs.Load())
		acq, comp, rel, ext := cs.Counts()
		assert.Zero(t, acq+comp+rel+ext)
	}},
	{"spec4/a UUID in upper, lower and mixed case is one key; other keys are compared as given", func(t *testing.T, h Harness) {
		store, _ := h.New(t)
		runner := newRunner(idem.WithStore(store))
		var runs atomic.Int32
		do := func(key string) idem.Result {
			t.Helper()
			res, err := runner.Do(context.Background(), idem.Call{Key: key, Payload: []byte("x")}, returning(&runs, key))
			require.NoError(t, err, key)
			return res
		}
		first := do(strings.ToUpper(Key1))
		for _, k := range []string{Key1, strings.ToUpper(Key1[:18]) + Key1[18:]} {
			r := do(k)
			assert.True(t, r.Replayed, k)
			assert.Equal(t, first.Value, r.Value, k)
		}
		assert.False(t, do("Order-7").Replayed)
		assert.False(t, do("order-7").Replayed, "a key that is not a UUID is case-sensitive")
		assert.False(t, do("{"+Key2+"}").Replayed)
		assert.False(t, do(Key2).Replayed, "only the canonical UUID form is folded")
		assert.Equal(t, int32(5), runs.Load())
	}},
	{"spec6/a key in one scope never returns another scope's result", func(t *testing.T, h Harness) {
		store, _ := h.New(t)
		runner := newRunner(idem.WithStore(store))
		var runs atomic.Int32
		for i := range 20 {
			key := uuid.NewString()
			alice := idem.Call{Scope: "alice", Key: key, Payload: []byte("same payload")}
			bob := alice
			bob.Scope = fmt.Sprintf("bob-%d", i)
			ra, err := runner.Do(context.Background(), alice, returning(&runs, "for alice"))
			require.NoError(t, err)
			rb, err := runner.Do(context.Background(), bob, returning(&runs, "for "+bob.Scope))
			require.NoError(t, err)
			assert.False(t, rb.Replayed)
			assert.NotEqual(t, ra.Value, rb.Value)
			again, err := runner.Do(context.Background(), alice, returning(&runs, "again"))
			require.NoError(t, err)
			assert.Equal(t, "for alice", string(again.Value))
		}
		unscoped, err := runner.Do(context.Background(), idem.Call{Key: Key1, Payload: []byte("x")}, returning(&runs, "no scope"))
		require.NoError(t, err)
		assert.False(t, unscoped.Replayed)
		assert.Equal(t, int32(41), runs.Load())
	}},
	{"spec7/one key used by a handler and by a function is refused both ways, never replayed across", func(t *testing.T, h Harness) {
		const tenant = "tenant-1"
		a := NewApp(t, h, idem.WithScope(func(*gin.Context) string { return tenant }))
		runner := newRunner(idem.WithStore(a.Store))
		var runs atomic.Int32
		// A payload whose SHA-256 is the request's fingerprint: only the
		// record's method ("CALL" for a function) tells them apart.
		payload := requestFingerprint(http.MethodPost, "/things", "x")

		require.Equal(t, http.StatusCreated, a.Do(Post("/things", Key1, "x")).Status)
		rec, err := idem.Lookup(context.Background(), a.Store, tenant, Key1)
		require.NoError(t, err)
		sum := sha256.Sum256(payload)
		require.Equal(t, sum[:], rec.Fingerprint, "the payload collides with the request's fingerprint (fingerprint.go's framing changed?)")
		_, err = runner.Do(context.Background(), idem.Call{Scope: tenant, Key: Key1, Payload: payload}, returning(&runs, "function"))
		assert.ErrorIs(t, err, idem.ErrMismatch, "a function never gets a handler's response")

		_, err = runner.Do(context.Background(), idem.Call{Scope: tenant, Key: Key2, Payload: payload}, returning(&runs, "function"))
		require.NoError(t, err)
		r := a.Do(Post("/things", Key2, "x"))
		assert.Equal(t, http.StatusConflict, r.Status, "a request never gets a function's result: %s", r.Body)
		if r.Status == http.StatusConflict {
			assert.Equal(t, idem.ProblemKeyMismatch, r.Problem(t).Type)
		}
		assert.Equal(t, int32(1), a.Calls.Load())
		assert.Equal(t, int32(1), runs.Load())
	}},

	// The first call (10-15).
	{"spec10/1000 calls over 50 keys from 20 goroutines: each function runs once", func(t *testing.T, h Harness) {
		store, _ := h.New(t)
		runner := newRunner(idem.WithStore(store))
		var mu sync.Mutex
		runs := map[string]int{}
		keys := make([]string, 50)
		for i := range keys {
			keys[i] = uuid.NewString()
		}
		type answer struct {
			key string
			callResult
		}
		answers := make(chan answer, 1000)
		var wg sync.WaitGroup
		for w := range 20 {
			wg.Go(func() {
				for i := range 50 {
					key := keys[(w*7+i)%50]
					call := idem.Call{Scope: "payments", Key: key, Payload: []byte(`{"amount":1}`)}
					res, err := runner.Do(context.Background(), call, func(context.Context, idem.Tx) ([]byte, error) {
						for range 20 {
							runtime.Gosched() // some work: other calls with the key come meanwhile
						}
						mu.Lock()
						runs[key]++
						n := runs[key]
						mu.Unlock()
						return fmt.Appendf(nil, `{"key":%q,"run":%d,"pad":%q}`, key, n, strings.Repeat("p", 100)), nil
					})
					answers <- answer{key, callResult{res, err}}
				}
			})
		}
		wg.Wait()
		close(answers)
		originals := map[string]string{}
		var all []answer
		for a := range answers {
			all = append(all, a)
			if a.err == nil && !a.res.Replayed {
				assert.NotContains(t, originals, a.key, "two runs for one key")
				originals[a.key] = string(a.res.Value)
			}
		}
		require.Len(t, all, 1000)
		for _, a := range all {
			switch {
			case a.err == nil && a.res.Replayed:
				assert.Equal(t, originals[a.key], string(a.res.Value), "a replay is the original result")
			case a.err == nil, errors.Is(a.err, idem.ErrInFlight):
			default:
				t.Errorf("unexpected error: %v", a.err)
			}
		}
		mu.Lock()
		defer mu.Unlock()
		for _, k := range keys {
			assert.Equal(t, 1, runs[k], "key %s", k)
		}
	}},
	{"spec10/100 concurrent calls with one key: one runs, the others are in flight, then replayed", func(t *testing.T, h Harness) {
		store, _ := h.New(t)
		runner := newRunner(idem.WithStore(store))
		var runs atomic.Int32
		call := idem.Call{Scope: "payments", Key: Key1, Payload: []byte("x")}
		gate := make(chan struct{})
		var open sync.Once
		t.Cleanup(func() { open.Do(func() { close(gate) }) })
		held := func(context.Context, idem.Tx) ([]byte, error) {
			runs.Add(1)
			<-gate
			return []byte("paid"), nil
		}
		results := make(chan callResult, 100)
		for range 100 {
			go func() {
				res, err := runner.Do(context.Background(), call, held)
				results <- callResult{res, err}
			}()
		}
		// While one function holds the key, the 99 other calls return: a
		// second run would be held at the gate too, and never return.
		deadline := time.After(10 * time.Second)
		for i := range 99 {
			select {
			case r := <-results:
				assert.ErrorIs(t, r.err, idem.ErrInFlight)
			case <-deadline:
				t.Fatalf("%d calls returned while one function ran: another call ran it too (runs: %d)", i, runs.Load())
			}
		}
		open.Do(func() { close(gate) })
		select {
		case r := <-results:
			require.NoError(t, r.err)
			assert.False(t, r.res.Replayed)
			assert.Equal(t, "paid", string(r.res.Value))
		case <-deadline:
			t.Fatal("the running call did not return")
		}
		replay, err := runner.Do(context.Background(), call, held)
		require.NoError(t, err)
		assert.True(t, replay.Replayed)
		assert.Equal(t, "paid", string(replay.Value))
		assert.Equal(t, int32(1), runs.Load())
	}},
	{"spec10/a fast function costs one acquire and one completion; a replay one acquire", func(t *testing.T, h Harness) {
		var cs *CountingStore
		store, _ := Counted(h, &cs).New(t)
		runner := newRunner(idem.WithStore(store))
		var runs atomic.Int32
		call := idem.Call{Key: Key1, Payload: []byte("x")}
		_, err := runner.Do(context.Background(), call, returning(&runs, "done"))
		require.NoError(t, err)
		acq, comp, rel, ext := cs.Counts()
		assert.Equal(t, []int{1, 1, 0, 0}, []int{acq, comp, rel, ext})
		res, err := runner.Do(context.Background(), call, returning(&runs, "again"))
		require.NoError(t, err)
		assert.True(t, res.Replayed)
		acq, comp, rel, ext = cs.Counts()
		assert.Equal(t, []int{2, 1, 0, 0}, []int{acq, comp, rel, ext}, "a replay is one acquire")
	}},
	{"spec10/a function slower than its lease keeps the key", func(t *testing.T, h Harness) {
		var cs *CountingStore
		const lease = 1200 * time.Millisecond
		store, advance := Counted(h, &cs).New(t)
		extended := make(chan struct{}, 100)
		cs.OnExtend = func() {
			select {
			case extended <- struct{}{}:
			default:
			}
		}
		runner := newRunner(idem.WithStore(store), idem.WithLease(lease))
		var runs atomic.Int32
		call := idem.Call{Key: Key1, Payload: []byte("x")}
		first := startHeld(context.Background(), t, runner, call, returning(&runs, "slow"))
		// Five renewals, each followed by a quarter of a lease on the store's
		// clock: past the first lease, so only the renewals hold the key (as
		// in behaviour.go's case for a handler).
		for range 5 {
			select {
			case <-extended:
			case <-time.After(10 * time.Second):
				t.Fatal("the lease was not renewed")
			}
			advance(lease / 4)
		}
		_, err := runner.Do(context.Background(), call, returning(&runs, "duplicate"))
		assert.ErrorIs(t, err, idem.ErrInFlight)
		first.letGo()
		r := first.wait()
		require.NoError(t, r.err)
		assert.Equal(t, "slow", string(r.res.Value))
		again, err := runner.Do(context.Background(), call, returning(&runs, "duplicate"))
		require.NoError(t, err)
		assert.True(t, again.Replayed)
		assert.Equal(t, "slow", string(again.Value))
		assert.Equal(t, int32(1), runs.Load())
	}},
	{"spec10/a crashed owner's key is free one lease later, and its late result does not land", func(t *testing.T, h Harness) {
		store, advance := h.New(t)
		ev := NewEvents()
		runner := newRunner(idem.WithStore(store), idem.WithEventHook(ev.Hook))
		var runs atomic.Int32
		call := idem.Call{Scope: "jobs", Key: Key1, Payload: []byte("x")}
		// The "crashed" owner stops renewing: its lease (1 min) is far longer
		// than the test, and the store's clock moves past it.
		first := startHeld(context.Background(), t, runner, call, returning(&runs, "first"))
		_, err := runner.Do(context.Background(), call, returning(&runs, "second"))
		assert.ErrorIs(t, err, idem.ErrInFlight, "before the lease ends")
		advance(time.Minute + time.Second)
		second := startHeld(context.Background(), t, runner, call, returning(&runs, "second"))
		// spec23: the old owner finishes while the new one runs; its
		// completion is fenced off, and the key stays the new owner's.
		first.letGo()
		r := first.wait()
		require.NoError(t, r.err, "its own result, unrecorded (the function used no transaction)")
		assert.Equal(t, "first", string(r.res.Value))
		ev.WaitForKey(t, idem.EventLostLease, idem.StoreKey("jobs", Key1))
		_, err = runner.Do(context.Background(), call, returning(&runs, "third"))
		assert.ErrorIs(t, err, idem.ErrInFlight, "still the new owner's")
		second.letGo()
		r = second.wait()
		require.NoError(t, r.err)
		assert.False(t, r.res.Replayed)
		replay, err := runner.Do(context.Background(), call, returning(&runs, "third"))
		require.NoError(t, err)
		assert.True(t, replay.Replayed)
		assert.Equal(t, "second", string(replay.Value), "the old owner did not overwrite it")
		assert.Equal(t, int32(2), runs.Load())
	}},
	{"spec12/an error releases the key and a redelivery runs; a kept error is recorded", func(t *testing.T, h Harness) {
		store, _ := h.New(t)
		ev := NewEvents()
		runner := newRunner(idem.WithStore(store), idem.WithEventHook(ev.Hook))
		var runs atomic.Int32
		failure := errors.New("downstream refused")
		call := idem.Call{Key: Key1, Payload: []byte("x")}
		_, err := runner.Do(context.Background(), call, failing(&runs, failure))
		assert.ErrorIs(t, err, failure, "the function's error, as it is")
		assert.Equal(t, []idem.EventKind{idem.EventAcquired, idem.EventReleased}, ev.Kinds())
		res, err := runner.Do(context.Background(), call, returning(&runs, "done"))
		require.NoError(t, err, "released: the redelivery runs")
		assert.False(t, res.Replayed)
		assert.Equal(t, int32(2), runs.Load())

		keeping := newRunner(idem.WithStore(store),
			idem.WithKeepError(func(err error) bool { return errors.Is(err, failure) }))
		kept := idem.Call{Key: Key2, Payload: []byte("x")}
		_, err = keeping.Do(context.Background(), kept, failing(&runs, fmt.Errorf("order 7: %w", failure)))
		assert.ErrorIs(t, err, failure, "the first call gets its own error")
		for range 2 {
			_, err = keeping.Do(context.Background(), kept, returning(&runs, "done"))
			var recorded *idem.RecordedError
			require.ErrorAs(t, err, &recorded)
			assert.Equal(t, "order 7: downstream refused", recorded.Message)
		}
		other := errors.New("timeout")
		_, err = keeping.Do(context.Background(), idem.Call{Key: Key2, Payload: []byte("y")}, failing(&runs, other))
		assert.ErrorIs(t, err, idem.ErrMismatch, "a kept error is a record like any other")
		assert.Equal(t, int32(3), runs.Load())
	}},
	{"spec12/a panic releases the key and goes on to the caller", func(t *testing.T, h Harness) {
		store, _ := h.New(t)
		ev := NewEvents()
		runner := newRunner(idem.WithStore(store), idem.WithEventHook(ev.Hook))
		var runs atomic.Int32
		call := idem.Call{Key: Key1, Payload: []byte("x")}
		assert.PanicsWithValue(t, "half way", func() {
			_, _ = runner.Do(context.Background(), call, func(context.Context, idem.Tx) ([]byte, error) {
				runs.Add(1)
				panic("half way")
			})
		})
		assert.Equal(t, []idem.EventKind{idem.EventAcquired, idem.EventReleased}, ev.Kinds())
		res, err := runner.Do(context.Background(), call, returning(&runs, "whole"))
		require.NoError(t, err)
		assert.False(t, res.Replayed, "the retry ran the function again")
		again, err := runner.Do(context.Background(), call, returning(&runs, "third"))
		require.NoError(t, err)
		assert.True(t, again.Replayed)
		assert.Equal(t, "whole", string(again.Value), "never the panicked run's")
		assert.Equal(t, int32(2), runs.Load())
	}},
	{"spec12/an empty result is kept", func(t *testing.T, h Harness) {
		store, _ := h.New(t)
		runner := newRunner(idem.WithStore(store))
		var runs atomic.Int32
		call := idem.Call{Key: Key1, Payload: []byte("x")}
		nothing := func(context.Context, idem.Tx) ([]byte, error) {
			runs.Add(1)
			return nil, nil
		}
		first, err := runner.Do(context.Background(), call, nothing)
		require.NoError(t, err)
		assert.Empty(t, first.Value)
		again, err := runner.Do(context.Background(), call, nothing)
		require.NoError(t, err)
		assert.True(t, again.Replayed)
		assert.Empty(t, again.Value)
		assert.False(t, again.Omitted)
		assert.Equal(t, int32(1), runs.Load())
	}},
	{"spec13/a caller whose context ends while its function runs still has the result recorded", func(t *testing.T, h Harness) {
		store, _ := h.New(t)
		ev := NewEvents()
		runner := newRunner(idem.WithStore(store), idem.WithEventHook(ev.Hook))
		var runs atomic.Int32
		call := idem.Call{Key: Key1, Payload: []byte("x")}
		ctx, cancel := context.WithCancel(context.Background())
		first := startHeld(ctx, t, runner, call, returning(&runs, "done"))
		cancel() // the consumer is shutting down; the function finishes its work anyway
		first.letGo()
		r := first.wait()
		require.NoError(t, r.err)
		assert.Equal(t, "done", string(r.res.Value))
		ev.WaitFor(t, idem.EventCompleted)
		replay, err := runner.Do(context.Background(), call, returning(&runs, "again"))
		require.NoError(t, err)
		assert.True(t, replay.Replayed)
		assert.Equal(t, "done", string(replay.Value))
		assert.Equal(t, int32(1), runs.Load())
	}},
	{"spec15/a result over the cap goes to the first caller in full and is kept without it", func(t *testing.T, h Harness) {
		store, _ := h.New(t)
		runner := newRunner(idem.WithStore(store), idem.WithMaxResponseBytes(1024))
		var runs atomic.Int32
		big := strings.Repeat("x", 4096)
		call := idem.Call{Key: Key1, Payload: []byte("x")}
		first, err := runner.Do(context.Background(), call, returning(&runs, big))
		require.NoError(t, err)
		assert.Equal(t, big, string(first.Value))
		assert.True(t, first.Omitted)
		assert.False(t, first.Replayed)
		dup, err := runner.Do(context.Background(), call, returning(&runs, big))
		require.NoError(t, err)
		assert.True(t, dup.Replayed)
		assert.True(t, dup.Omitted)
		assert.Empty(t, dup.Value)
		small, err := runner.Do(context.Background(), idem.Call{Key: Key2, Payload: []byte("x")}, returning(&runs, strings.Repeat("s", 1024)))
		require.NoError(t, err)
		assert.False(t, small.Omitted, "a result of the cap's size is kept")
		assert.Equal(t, int32(2), runs.Load())
	}},

	// Duplicates (16-20).
	{"spec16/another payload is a mismatch, and the function does not run", func(t *testing.T, h Harness) {
		store, _ := h.New(t)
		runner := newRunner(idem.WithStore(store))
		var runs atomic.Int32
		_, err := runner.Do(context.Background(), idem.Call{Key: Key1, Payload: []byte("one")}, returning(&runs, "one"))
		require.NoError(t, err)
		for _, other := range []string{"two", "one ", "", "ONE"} {
			_, err = runner.Do(context.Background(), idem.Call{Key: Key1, Payload: []byte(other)}, returning(&runs, other))
			assert.ErrorIs(t, err, idem.ErrMismatch, "%q", other)
		}
		res, err := runner.Do(context.Background(), idem.Call{Key: Key1, Payload: []byte("one")}, returning(&runs, "again"))
		require.NoError(t, err)
		assert.True(t, res.Replayed, "the record is intact")
		assert.Equal(t, "one", string(res.Value))
		assert.Equal(t, int32(1), runs.Load())
	}},
	{"spec16/a mismatch while in flight is a mismatch", func(t *testing.T, h Harness) {
		store, _ := h.New(t)
		runner := newRunner(idem.WithStore(store))
		var runs atomic.Int32
		first := startHeld(context.Background(), t, runner, idem.Call{Key: Key1, Payload: []byte("one")}, returning(&runs, "one"))
		_, err := runner.Do(context.Background(), idem.Call{Key: Key1, Payload: []byte("two")}, returning(&runs, "two"))
		assert.ErrorIs(t, err, idem.ErrMismatch)
		assert.NotErrorIs(t, err, idem.ErrInFlight)
		first.letGo()
		require.NoError(t, first.wait().err)
		assert.Equal(t, int32(1), runs.Load())
	}},
	{"spec17/a replay is byte-identical", func(t *testing.T, h Harness) {
		store, _ := h.New(t)
		runner := newRunner(idem.WithStore(store))
		var runs atomic.Int32
		var value []byte
		for i := range 3 * 256 {
			value = append(value, byte(i)) // every byte value, NUL and invalid UTF-8 among them
		}
		call := idem.Call{Key: Key1, Payload: []byte("x")}
		first, err := runner.Do(context.Background(), call, returning(&runs, string(value)))
		require.NoError(t, err)
		assert.False(t, first.Replayed)
		for range 2 {
			again, err := runner.Do(context.Background(), call, returning(&runs, "other"))
			require.NoError(t, err)
			assert.True(t, again.Replayed)
			assert.True(t, bytes.Equal(value, again.Value), "the replay differs from the result")
		}
		assert.Equal(t, int32(1), runs.Load())
	}},
	{"spec18/a duplicate in flight gets ErrInFlight, then the recorded result", func(t *testing.T, h Harness) {
		store, _ := h.New(t)
		ev := NewEvents()
		runner := newRunner(idem.WithStore(store), idem.WithEventHook(ev.Hook))
		var runs atomic.Int32
		call := idem.Call{Key: Key1, Payload: []byte("x")}
		first := startHeld(context.Background(), t, runner, call, returning(&runs, "first"))
		for range 3 {
			_, err := runner.Do(context.Background(), call, returning(&runs, "duplicate"))
			assert.ErrorIs(t, err, idem.ErrInFlight)
		}
		assert.Contains(t, ev.Kinds(), idem.EventConflict)
		first.letGo()
		require.NoError(t, first.wait().err)
		res, err := runner.Do(context.Background(), call, returning(&runs, "duplicate"))
		require.NoError(t, err)
		assert.True(t, res.Replayed)
		assert.Equal(t, "first", string(res.Value))
		assert.Equal(t, int32(1), runs.Load())
	}},
	{"spec18/the wait option replays when the first finishes", func(t *testing.T, h Harness) {
		var cs *CountingStore
		store, _ := Counted(h, &cs).New(t)
		waiting := make(chan struct{}, 100)
		cs.OnAcquire = func(held *idem.Record) {
			if held != nil && held.State == idem.InFlight {
				waiting <- struct{}{}
			}
		}
		runner := newRunner(idem.WithStore(store), idem.WithWaitInFlight(10*time.Second))
		var runs atomic.Int32
		call := idem.Call{Key: Key1, Payload: []byte("x")}
		first := startHeld(context.Background(), t, runner, call, returning(&runs, "first"))
		dup := make(chan callResult, 1)
		go func() {
			res, err := runner.Do(context.Background(), call, returning(&runs, "duplicate"))
			dup <- callResult{res, err}
		}()
		select {
		case <-waiting: // the duplicate saw the key in flight and waits
		case <-time.After(10 * time.Second):
			t.Fatal("the duplicate never found the key in flight")
		}
		first.letGo()
		require.NoError(t, first.wait().err)
		select {
		case r := <-dup:
			require.NoError(t, r.err)
			assert.True(t, r.res.Replayed)
			assert.Equal(t, "first", string(r.res.Value))
		case <-time.After(10 * time.Second):
			t.Fatal("the waiting duplicate did not return")
		}
		assert.Equal(t, int32(1), runs.Load())
	}},
	{"spec18/the wait is bounded", func(t *testing.T, h Harness) {
		store, _ := h.New(t)
		runner := newRunner(idem.WithStore(store), idem.WithWaitInFlight(50*time.Millisecond))
		var runs atomic.Int32
		call := idem.Call{Key: Key1, Payload: []byte("x")}
		first := startHeld(context.Background(), t, runner, call, returning(&runs, "first"))
		dup := make(chan error, 1)
		go func() {
			_, err := runner.Do(context.Background(), call, returning(&runs, "duplicate"))
			dup <- err
		}()
		select {
		case err := <-dup:
			assert.ErrorIs(t, err, idem.ErrInFlight)
		case <-time.After(10 * time.Second):
			t.Fatal("the wait was not bounded")
		}
		first.letGo()
		require.NoError(t, first.wait().err)
		assert.Equal(t, int32(1), runs.Load())
	}},
	{"spec19/records expire after the TTL", func(t *testing.T, h Harness) {
		store, advance := h.New(t)
		runner := newRunner(idem.WithStore(store), idem.WithTTL(time.Hour))
		var runs atomic.Int32
		call := idem.Call{Key: Key1, Payload: []byte("x")}
		_, err := runner.Do(context.Background(), call, returning(&runs, "first"))
		require.NoError(t, err)
		advance(59 * time.Minute)
		res, err := runner.Do(context.Background(), call, returning(&runs, "second"))
		require.NoError(t, err)
		assert.True(t, res.Replayed)
		advance(2 * time.Minute)
		res, err = runner.Do(context.Background(), call, returning(&runs, "second"))
		require.NoError(t, err)
		assert.False(t, res.Replayed, "after the TTL the key is new again")
		assert.Equal(t, "second", string(res.Value))
		assert.Equal(t, int32(2), runs.Load())
	}},
	{"spec19/the default TTL is 24 hours", func(t *testing.T, h Harness) {
		store, advance := h.New(t)
		runner := newRunner(idem.WithStore(store))
		var runs atomic.Int32
		call := idem.Call{Key: Key1, Payload: []byte("x")}
		_, err := runner.Do(context.Background(), call, returning(&runs, "first"))
		require.NoError(t, err)
		advance(24*time.Hour - time.Minute)
		res, err := runner.Do(context.Background(), call, returning(&runs, "second"))
		require.NoError(t, err)
		assert.True(t, res.Replayed)
		advance(2 * time.Minute)
		res, err = runner.Do(context.Background(), call, returning(&runs, "second"))
		require.NoError(t, err)
		assert.False(t, res.Replayed)
	}},

	// Errors and failures (21-27).
	{"spec22/a failing store fails closed: an error, the function not run, and calls work when it is back", func(t *testing.T, h Harness) {
		var cs *CountingStore
		store, _ := Counted(h, &cs).New(t)
		ev := NewEvents()
		runner := newRunner(idem.WithStore(store), idem.WithEventHook(ev.Hook))
		var runs atomic.Int32
		call := idem.Call{Key: Key1, Payload: []byte("x")}
		cs.Fail.Store(true)
		_, err := runner.Do(context.Background(), call, returning(&runs, "ran"))
		require.Error(t, err)
		assert.ErrorIs(t, err, ErrStoreDown, "the store's error, wrapped")
		assert.NotErrorIs(t, err, idem.ErrInFlight)
		assert.Zero(t, runs.Load(), "never run without the key")
		assert.ErrorIs(t, ev.WaitFor(t, idem.EventStoreError).Err, ErrStoreDown)
		cs.Fail.Store(false)
		res, err := runner.Do(context.Background(), call, returning(&runs, "ran"))
		require.NoError(t, err, "works again when the store is back")
		assert.False(t, res.Replayed)
		res, err = runner.Do(context.Background(), call, returning(&runs, "ran"))
		require.NoError(t, err)
		assert.True(t, res.Replayed)
		assert.Equal(t, int32(1), runs.Load())
	}},
	{"spec22/fail open does not apply: a function never runs without its key", func(t *testing.T, h Harness) {
		var cs *CountingStore
		store, _ := Counted(h, &cs).New(t)
		runner := newRunner(idem.WithStore(store), idem.WithFailOpen())
		var runs atomic.Int32
		cs.Fail.Store(true)
		_, err := runner.Do(context.Background(), idem.Call{Key: Key1, Payload: []byte("x")}, returning(&runs, "ran"))
		assert.ErrorIs(t, err, ErrStoreDown)
		assert.Zero(t, runs.Load())
	}},
	{"spec22/a slow store meets the deadline", func(t *testing.T, h Harness) {
		store, _ := h.New(t)
		slow := &slowStore{Store: store}
		runner := newRunner(idem.WithStore(slow), idem.WithStoreTimeout(50*time.Millisecond))
		var runs atomic.Int32
		call := idem.Call{Key: Key1, Payload: []byte("x")}
		slow.hang.Store(true)
		done := make(chan error, 1)
		go func() {
			_, err := runner.Do(context.Background(), call, returning(&runs, "ran"))
			done <- err
		}()
		select {
		case err := <-done:
			assert.ErrorIs(t, err, context.DeadlineExceeded)
		case <-time.After(10 * time.Second):
			t.Fatal("Do hung on a store that does not answer")
		}
		assert.Zero(t, runs.Load())
		slow.hang.Store(false)
		res, err := runner.Do(context.Background(), call, returning(&runs, "ran"))
		require.NoError(t, err)
		assert.False(t, res.Replayed)
		assert.Equal(t, int32(1), runs.Load())
	}},
	{"spec22/a failed release is retried until the store answers", func(t *testing.T, h Harness) {
		var o *outageStore
		store, _ := withOutage(h, &o).New(t)
		ev := NewEvents()
		// A lease far longer than the test: the key is free again because
		// the release was retried, not because the lease ended.
		runner := newRunner(idem.WithStore(store), idem.WithLease(30*time.Second), idem.WithEventHook(ev.Hook))
		var runs atomic.Int32
		failure := errors.New("downstream refused")
		for _, c := range []struct {
			key    string
			panics bool
		}{{Key1, false}, {Key2, true}} {
			call := idem.Call{Scope: "jobs", Key: c.key, Payload: []byte("x")}
			key := idem.StoreKey("jobs", c.key)
			var err error
			panicked := func() (p any) {
				defer func() { p = recover() }()
				_, err = runner.Do(context.Background(), call, func(context.Context, idem.Tx) ([]byte, error) {
					runs.Add(1)
					o.Down.Store(true)
					if c.panics {
						panic("half way")
					}
					return nil, failure
				})
				return nil
			}()
			if c.panics {
				assert.Equal(t, "half way", panicked)
			} else {
				assert.ErrorIs(t, err, failure)
			}
			ev.WaitForKey(t, idem.EventStoreError, key)
			_, err = runner.Do(context.Background(), call, returning(&runs, "ok"))
			assert.ErrorIs(t, err, idem.ErrInFlight, "the key is held until the release lands")
			before := runs.Load()
			o.Down.Store(false)
			ev.WaitForKey(t, idem.EventReleased, key)
			res, err := runner.Do(context.Background(), call, returning(&runs, "ok"))
			require.NoError(t, err, "released once the store answers, not one lease later")
			assert.False(t, res.Replayed)
			assert.Equal(t, before+1, runs.Load())
		}
	}},
	{"spec23/a function that outlived its lease while nobody took the key: its result still lands", func(t *testing.T, h Harness) {
		store, advance := h.New(t)
		ev := NewEvents()
		runner := newRunner(idem.WithStore(store), idem.WithEventHook(ev.Hook))
		var runs atomic.Int32
		call := idem.Call{Key: Key1, Payload: []byte("x")}
		first := startHeld(context.Background(), t, runner, call, returning(&runs, "late"))
		advance(2 * time.Minute) // the lease (1 min) ends before a renewal is due, as in an outage
		first.letGo()
		r := first.wait()
		require.NoError(t, r.err)
		assert.Equal(t, "late", string(r.res.Value))
		ev.WaitFor(t, idem.EventCompleted)
		again, err := runner.Do(context.Background(), call, returning(&runs, "again"))
		require.NoError(t, err)
		assert.True(t, again.Replayed, "the result was stored: a redelivery gets it, not a second run")
		assert.Equal(t, "late", string(again.Value))
		assert.Equal(t, int32(1), runs.Load())
	}},
	{"spec23/a completion the store refuses is retried until it lands; a duplicate meanwhile does not run", func(t *testing.T, h Harness) {
		var o *outageStore
		store, _ := withOutage(h, &o).New(t)
		ev := NewEvents()
		runner := newRunner(idem.WithStore(store), idem.WithEventHook(ev.Hook))
		var runs atomic.Int32
		call := idem.Call{Scope: "jobs", Key: Key1, Payload: []byte("x")}
		key := idem.StoreKey("jobs", Key1)
		res, err := runner.Do(context.Background(), call, func(context.Context, idem.Tx) ([]byte, error) {
			runs.Add(1)
			o.Down.Store(true)
			return []byte("done"), nil
		})
		require.NoError(t, err, "its effect happened: the caller is told so")
		assert.Equal(t, "done", string(res.Value))
		ev.WaitForKey(t, idem.EventStoreError, key)
		_, err = runner.Do(context.Background(), call, returning(&runs, "again"))
		assert.ErrorIs(t, err, idem.ErrInFlight, "the completion is pending: no second run")
		o.Down.Store(false)
		ev.WaitForKey(t, idem.EventCompleted, key)
		replay, err := runner.Do(context.Background(), call, returning(&runs, "again"))
		require.NoError(t, err)
		assert.True(t, replay.Replayed)
		assert.Equal(t, "done", string(replay.Value))
		assert.Equal(t, int32(1), runs.Load())

		if h.Tx {
			// SPEC 31: a function that wrote through its transaction commits
			// with its record; a commit the store refuses rolls both back, so
			// the call is not done, and its key is released once the store
			// answers, for the redelivery to run.
			o.UsedTx.Store(true)
			call := idem.Call{Scope: "jobs", Key: Key2, Payload: []byte("x")}
			key := idem.StoreKey("jobs", Key2)
			_, err := runner.Do(context.Background(), call, func(context.Context, idem.Tx) ([]byte, error) {
				runs.Add(1)
				o.Down.Store(true)
				return []byte("done"), nil
			})
			assert.ErrorIs(t, err, idem.ErrNotCommitted)
			ev.WaitForKey(t, idem.EventStoreError, key)
			_, err = runner.Do(context.Background(), call, returning(&runs, "again"))
			assert.ErrorIs(t, err, idem.ErrInFlight, "held until the release lands")
			o.Down.Store(false)
			ev.WaitForKey(t, idem.EventReleased, key)
			res, err := runner.Do(context.Background(), call, returning(&runs, "again"))
			require.NoError(t, err)
			assert.False(t, res.Replayed, "not committed: the redelivery runs")
			assert.Equal(t, int32(3), runs.Load())
		}
	}},
	{"spec23/a call whose key was taken meanwhile neither completes nor releases it", func(t *testing.T, h Harness) {
		store, _ := h.New(t)
		ev := NewEvents()
		runner := newRunner(idem.WithStore(store), idem.WithEventHook(ev.Hook))
		var runs atomic.Int32
		failure := errors.New("downstream refused")
		for _, c := range []struct {
			key  string
			fail error
		}{{Key1, nil}, {Key2, failure}} {
			call := idem.Call{Scope: "jobs", Key: c.key, Payload: []byte("x")}
			key := idem.StoreKey("jobs", c.key)
			first := startHeld(context.Background(), t, runner, call, func(context.Context, idem.Tx) ([]byte, error) {
				runs.Add(1)
				return []byte("first"), c.fail
			})
			// An operator forgets the key while its first call runs, and a
			// redelivery takes it.
			require.NoError(t, idem.Forget(context.Background(), store, "jobs", c.key))
			second := startHeld(context.Background(), t, runner, call, returning(&runs, "second"))
			first.letGo()
			if r := first.wait(); c.fail != nil {
				assert.ErrorIs(t, r.err, c.fail)
			} else {
				assert.NoError(t, r.err, "its own result, unrecorded (the function used no transaction)")
				assert.Equal(t, "first", string(r.res.Value))
			}
			ev.WaitForKey(t, idem.EventLostLease, key)
			_, err := runner.Do(context.Background(), call, returning(&runs, "third"))
			assert.ErrorIs(t, err, idem.ErrInFlight, "the key is still the second call's")
			second.letGo()
			require.NoError(t, second.wait().err)
			replay, err := runner.Do(context.Background(), call, returning(&runs, "third"))
			require.NoError(t, err)
			assert.True(t, replay.Replayed)
			assert.Equal(t, "second", string(replay.Value), "the first call did not overwrite it")
		}
		assert.Equal(t, int32(4), runs.Load())
	}},
	{"spec25/an invalid record from the store is an error, and the function does not run", func(t *testing.T, h Harness) {
		store, _ := h.New(t)
		bogus := &bogusStore{Store: store}
		runner := newRunner(idem.WithStore(bogus))
		var runs atomic.Int32
		for _, rec := range []*idem.Record{{State: 9}, {State: idem.Completed, Status: 0}, {State: idem.Completed, Status: 1000}} {
			bogus.held = rec
			_, err := runner.Do(context.Background(), idem.Call{Key: Key1, Payload: []byte("x")}, returning(&runs, "ran"))
			require.Error(t, err, "%+v", rec)
			assert.NotErrorIs(t, err, idem.ErrInFlight)
			assert.NotErrorIs(t, err, idem.ErrMismatch)
		}
		assert.Zero(t, runs.Load())
	}},
	{"spec26/each outcome is an event with the scope's hash, never the scope", func(t *testing.T, h Harness) {
		store, _ := h.New(t)
		ev := NewEvents()
		runner := newRunner(idem.WithStore(store), idem.WithEventHook(ev.Hook))
		var runs atomic.Int32
		const scope = "tenant-secret"
		const key3 = "2a8c6e2a-7b3f-4c5d-9e1f-2a3b4c5d6e7f"
		do := func(key, payload string, f fn) error {
			_, err := runner.Do(context.Background(), idem.Call{Scope: scope, Key: key, Payload: []byte(payload)}, f)
			return err
		}
		require.NoError(t, do(strings.ToUpper(Key1), "x", returning(&runs, "done")))
		require.NoError(t, do(Key1, "x", returning(&runs, "done")))
		assert.ErrorIs(t, do(Key1, "y", returning(&runs, "done")), idem.ErrMismatch)
		assert.Error(t, do(Key2, "x", failing(&runs, errors.New("refused"))))
		held := startHeld(context.Background(), t, runner, idem.Call{Scope: scope, Key: key3, Payload: []byte("x")}, returning(&runs, "done"))
		assert.ErrorIs(t, do(key3, "x", returning(&runs, "done")), idem.ErrInFlight)
		held.letGo()
		require.NoError(t, held.wait().err)
		ev.WaitForKey(t, idem.EventCompleted, idem.StoreKey(scope, key3))
		kinds := ev.Kinds()
		for _, k := range []idem.EventKind{idem.EventAcquired, idem.EventCompleted, idem.EventReplayed,
			idem.EventMismatch, idem.EventReleased, idem.EventConflict} {
			assert.Contains(t, kinds, k)
		}
		sum := sha256.Sum256([]byte(scope))
		for _, e := range ev.All() {
			assert.Equal(t, hex.EncodeToString(sum[:]), e.ScopeHash)
			assert.Len(t, e.Key, 64)
			assert.NotContains(t, e.Key, Key1)
			assert.Contains(t, []string{Key1, Key2, key3}, e.IdempotencyKey, "the key in its canonical form")
		}
	}},
	{"spec27/any key or payload is one call and corrupts no other", func(t *testing.T, h Harness) {
		store, _ := h.New(t)
		runner := newRunner(idem.WithStore(store))
		var runs atomic.Int32
		good := idem.Call{Key: Key1, Payload: []byte(`{"a":1}`)}
		_, err := runner.Do(context.Background(), good, returning(&runs, "good"))
		require.NoError(t, err)
		big := bytes.Repeat([]byte("[{\x00\xff"), 1<<18) // 1 MiB
		for i, c := range []idem.Call{
			{Key: strings.Repeat("k", 10<<10), Payload: []byte("x")},
			{Key: "\x00\xff\n\r\"'\\", Scope: "\x00", Payload: []byte("x")},
			{Key: "caf\xc3", Scope: strings.Repeat("s", 10<<10), Payload: []byte("x")},
			{Key: Key2, Payload: big},
			{Key: "9b2f4b1e-0c1d-4f6a-8e2b-3c4d5e6f7a8g", Payload: nil},
		} {
			value := fmt.Sprintf("call %d", i)
			res, err := runner.Do(context.Background(), c, returning(&runs, value))
			require.NoError(t, err, "call %d", i)
			assert.False(t, res.Replayed, "call %d", i)
			again, err := runner.Do(context.Background(), c, returning(&runs, "again"))
			require.NoError(t, err, "call %d", i)
			assert.True(t, again.Replayed, "call %d", i)
			assert.Equal(t, value, string(again.Value), "call %d", i)
		}
		res, err := runner.Do(context.Background(), good, returning(&runs, "again"))
		require.NoError(t, err)
		assert.True(t, res.Replayed)
		assert.Equal(t, "good", string(res.Value))
		assert.Equal(t, int32(6), runs.Load())
	}},

	// Operators (29).
	{"spec29/an operator looks up and forgets a function's key", func(t *testing.T, h Harness) {
		store, _ := h.New(t)
		runner := newRunner(idem.WithStore(store))
		var runs atomic.Int32
		call := idem.Call{Scope: "payments", Key: Key1, Payload: []byte("x")}
		_, err := runner.Do(context.Background(), call, returning(&runs, "paid"))
		require.NoError(t, err)
		rec, err := idem.Lookup(context.Background(), store, "payments", strings.ToUpper(Key1))
		require.NoError(t, err)
		assert.Equal(t, idem.Completed, rec.State)
		assert.Equal(t, "paid", string(rec.Body))
		_, err = idem.Lookup(context.Background(), store, "refunds", Key1)
		assert.ErrorIs(t, err, idem.ErrNoRecord, "another scope")
		require.NoError(t, idem.Forget(context.Background(), store, "payments", Key1))
		res, err := runner.Do(context.Background(), call, returning(&runs, "paid again"))
		require.NoError(t, err)
		assert.False(t, res.Replayed, "forgotten: the call runs again")
		assert.Equal(t, int32(2), runs.Load())
	}},
}
