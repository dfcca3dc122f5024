package suite

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	idem "github.com/ginidem/idempotency"
)

// functionWaitCases are the function reliability cases of duplicates in flight and expiry: SPEC 18 and 19.
var functionWaitCases = []behaviour{
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
}
