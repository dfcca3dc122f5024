package suite

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	idem "github.com/ginidem/idempotency"
)

// functionLeaseCases are the function reliability cases of one run per key under a lease: SPEC 10.
var functionLeaseCases = []behaviour{
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
		const lease = 2 * time.Second // a renewal every 667 ms: a loaded CI machine may delay one by a second
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
}
