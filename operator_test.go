package idempotency_test

import (
	"context"
	"net/http"
	"strings"
	"testing"

	"github.com/gin-gonic/gin"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	idem "github.com/ginidem/idempotency"
)

// operatorService serves POST /orders for user 42 (an auth middleware sets
// user_id), scoped by that id: a request made by a customer, which an
// operator then looks up and forgets by the customer's id and key.
func operatorService(t *testing.T, store idem.Store) *served {
	return mount(t, func(r *gin.Engine, s *served) {
		r.Use(func(c *gin.Context) { c.Set("user_id", "42") })
		r.Use(idem.New(idem.WithStore(store), idem.WithScope(idem.ScopeFromContext("user_id"))))
		r.POST("/orders", s.create)
		r.POST("/later", func(c *gin.Context) {
			s.calls.Add(1)
			idem.DoNotKeep(c) // a 200 that reports a failure the client may retry
			c.String(http.StatusOK, "queue full, retry")
		})
	})
}

// TestSpec29_AnOperatorLooksUpAndForgetsAKey: the record a customer's keyed
// request left is found by the customer's id and the key as the ticket
// quotes it (in any case), reports its state, status and times, and is
// forgotten, after which the customer's retry runs again. A key or scope
// that matches nothing says so, on every store.
func TestSpec29_AnOperatorLooksUpAndForgetsAKey(t *testing.T) {
	forEachStore(t, func(t *testing.T, h storeHarness) {
		store, _ := h.new(t)
		s := operatorService(t, store)
		ctx := context.Background()
		first := s.send(s.client, "/orders", key1, "x")
		require.Equal(t, http.StatusCreated, first.status, first.body)

		rec, err := idem.Lookup(ctx, store, "42", strings.ToUpper(key1))
		require.NoError(t, err)
		assert.Equal(t, idem.Completed, rec.State)
		assert.Equal(t, http.StatusCreated, rec.Status)
		assert.Equal(t, "/orders", rec.Path)
		assert.Equal(t, first.body, string(rec.Body))
		assert.False(t, rec.ExpiresAt.IsZero())

		_, err = idem.Lookup(ctx, store, "43", key1)
		assert.ErrorIs(t, err, idem.ErrNoRecord, "another customer's key")
		_, err = idem.Lookup(ctx, store, "42", key2)
		assert.ErrorIs(t, err, idem.ErrNoRecord, "a key never used")
		assert.ErrorIs(t, idem.Forget(ctx, store, "42", key2), idem.ErrNoRecord)

		require.NoError(t, idem.Forget(ctx, store, "42", key1))
		_, err = idem.Lookup(ctx, store, "42", key1)
		assert.ErrorIs(t, err, idem.ErrNoRecord)
		assert.ErrorIs(t, idem.Forget(ctx, store, "42", key1), idem.ErrNoRecord, "forgotten already")
		again := s.send(s.client, "/orders", key1, "x")
		assert.Equal(t, http.StatusCreated, again.status)
		assert.False(t, again.replayed(), "the retry ran again")
		assert.Equal(t, int32(2), s.calls.Load())
	})
}

// TestSpec29_TheHandlerAsksNotToKeepItsAnswer: a handler that calls
// DoNotKeep answers as it chose, the key is released, and a retry runs it
// again, on every store.
func TestSpec29_TheHandlerAsksNotToKeepItsAnswer(t *testing.T) {
	forEachStore(t, func(t *testing.T, h storeHarness) {
		store, _ := h.new(t)
		s := operatorService(t, store)
		for range 2 {
			r := s.send(s.client, "/later", key1, "x")
			assert.Equal(t, http.StatusOK, r.status)
			assert.Equal(t, "queue full, retry", r.body)
			assert.False(t, r.replayed())
		}
		assert.Equal(t, int32(2), s.calls.Load())
		_, err := idem.Lookup(context.Background(), store, "42", key1)
		assert.ErrorIs(t, err, idem.ErrNoRecord)
	})
}
