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

// extendSpy reports each lease renewal that reached the store.
type extendSpy struct {
	idem.Store
	extended chan struct{}
}

func (s *extendSpy) Extend(ctx context.Context, key, token string, lease time.Duration) error {
	err := s.Store.Extend(ctx, key, token, lease)
	if err == nil {
		select {
		case s.extended <- struct{}{}:
		default:
		}
	}
	return err
}

// FunctionsRunOnceUnderAKey (TestSpec10_FunctionsRunOnceUnderAKey): a Runner
// runs a function under a key as the middleware runs a handler, on every
// store: the first call runs, a duplicate gets the recorded result, another
// payload is a mismatch, a duplicate while the first runs is in flight, an
// error releases the key unless kept, a panic releases it, and the lease is
// renewed while the function runs.
func FunctionsRunOnceUnderAKey(t *testing.T, h Harness) {
	store, _ := h.New(t)
	ctx := context.Background()
	var runs atomic.Int32
	apply := func(context.Context, idem.Tx) ([]byte, error) {
		runs.Add(1)
		return []byte("applied"), nil
	}
	runner := idem.NewRunner(idem.WithStore(store))
	call := idem.Call{Scope: "orders", Key: Key1, Payload: []byte(`{"order":1}`)}

	t.Run("spec17/a duplicate gets the recorded result", func(t *testing.T) {
		first, err := runner.Do(ctx, call, apply)
		require.NoError(t, err)
		assert.Equal(t, idem.Result{Value: []byte("applied")}, first)
		again, err := runner.Do(ctx, call, apply)
		require.NoError(t, err)
		assert.True(t, again.Replayed)
		assert.Equal(t, "applied", string(again.Value))
		assert.Equal(t, int32(1), runs.Load())
	})
	t.Run("spec16/another payload is a mismatch", func(t *testing.T) {
		_, err := runner.Do(ctx, idem.Call{Scope: "orders", Key: Key1, Payload: []byte(`{"order":2}`)}, apply)
		assert.ErrorIs(t, err, idem.ErrMismatch)
		_, err = runner.Do(ctx, idem.Call{Scope: "refunds", Key: Key1, Payload: []byte(`{"order":2}`)}, apply)
		assert.NoError(t, err, "another scope is another call")
	})
	t.Run("spec18/a duplicate while the first runs is in flight", func(t *testing.T) {
		entered, release := make(chan struct{}), make(chan struct{})
		first := make(chan error, 1)
		c := idem.Call{Key: Key2, Payload: []byte("x")}
		go func() {
			_, err := runner.Do(ctx, c, func(context.Context, idem.Tx) ([]byte, error) {
				close(entered)
				<-release
				return []byte("done"), nil
			})
			first <- err
		}()
		<-entered
		_, err := runner.Do(ctx, c, apply)
		assert.ErrorIs(t, err, idem.ErrInFlight)
		close(release)
		require.NoError(t, <-first)
		res, err := runner.Do(ctx, c, apply)
		require.NoError(t, err)
		assert.Equal(t, "done", string(res.Value))
	})
	t.Run("spec12/an error releases the key, a kept one is recorded", func(t *testing.T) {
		failure := errors.New("downstream refused")
		c := idem.Call{Key: "3f1a2b4c-5d6e-4f70-8a9b-0c1d2e3f4a5b", Payload: []byte("x")}
		fail := func(context.Context, idem.Tx) ([]byte, error) { return nil, failure }
		_, err := runner.Do(ctx, c, fail)
		assert.ErrorIs(t, err, failure)
		res, err := runner.Do(ctx, c, apply)
		require.NoError(t, err, "released: the redelivery runs")
		assert.False(t, res.Replayed)

		keeping := idem.NewRunner(idem.WithStore(store), idem.WithKeepError(func(err error) bool { return errors.Is(err, failure) }))
		kc := idem.Call{Key: "4a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d", Payload: []byte("x")}
		_, err = keeping.Do(ctx, kc, fail)
		assert.ErrorIs(t, err, failure)
		before := runs.Load()
		_, err = keeping.Do(ctx, kc, apply)
		var recorded *idem.RecordedError
		require.ErrorAs(t, err, &recorded)
		assert.Equal(t, "downstream refused", recorded.Message)
		assert.Equal(t, before, runs.Load(), "not run again")
	})
	t.Run("spec12/a panic releases the key", func(t *testing.T) {
		c := idem.Call{Key: "5b3c4d5e-6f70-4b8c-9d0e-1f2a3b4c5d6e", Payload: []byte("x")}
		assert.Panics(t, func() {
			_, _ = runner.Do(ctx, c, func(context.Context, idem.Tx) ([]byte, error) { panic("boom") })
		})
		res, err := runner.Do(ctx, c, apply)
		require.NoError(t, err)
		assert.False(t, res.Replayed)
	})
	t.Run("spec10/the lease is renewed while the function runs", func(t *testing.T) {
		spy := &extendSpy{Store: store, extended: make(chan struct{}, 1)}
		renewing := idem.NewRunner(idem.WithStore(spy), idem.WithLease(300*time.Millisecond))
		c := idem.Call{Key: "6c4d5e6f-7081-4c9d-8e1f-2a3b4c5d6e7f", Payload: []byte("x")}
		res, err := renewing.Do(ctx, c, func(context.Context, idem.Tx) ([]byte, error) {
			select {
			case <-spy.extended:
			case <-time.After(10 * time.Second):
				return nil, errors.New("no renewal reached the store")
			}
			return []byte("slow"), nil
		})
		require.NoError(t, err)
		assert.Equal(t, "slow", string(res.Value))
	})
}
