package suite

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	idem "github.com/ginidem/idempotency"
)

// functionOperatorCases are the function reliability cases of records, events, odd input and operators: SPEC 25 to 29.
var functionOperatorCases = []behaviour{
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
