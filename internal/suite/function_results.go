package suite

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	idem "github.com/ginidem/idempotency"
)

// functionResultCases are the function reliability cases of what is kept and given again: SPEC 12 to 17.
var functionResultCases = []behaviour{
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
}
