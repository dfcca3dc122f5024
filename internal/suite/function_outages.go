package suite

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	idem "github.com/ginidem/idempotency"
)

// functionOutageCases are the function reliability cases of a store that fails or hangs, and fenced completion: SPEC 22 and 23.
var functionOutageCases = []behaviour{
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
}
