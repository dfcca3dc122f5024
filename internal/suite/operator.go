package suite

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
func operatorService(t *testing.T, store idem.Store) *Served {
	return Mount(t, func(r *gin.Engine, s *Served) {
		r.Use(func(c *gin.Context) { c.Set("user_id", "42") })
		r.Use(idem.New(idem.WithStore(store), idem.WithScope(idem.ScopeFromContext("user_id"))))
		r.POST("/orders", s.Create)
		r.POST("/later", func(c *gin.Context) {
			s.Calls.Add(1)
			idem.DoNotKeep(c) // a 200 that reports a failure the client may retry
			c.String(http.StatusOK, "queue full, retry")
		})
	})
}

// AnOperatorLooksUpAndForgetsAKey
// (TestSpec29_AnOperatorLooksUpAndForgetsAKey): the record a customer's
// keyed request left is found by the customer's id and the key as the ticket
// quotes it (in any case), reports its state, status and times, and is
// forgotten, after which the customer's retry runs again. A key or scope
// that matches nothing says so, on every store.
func AnOperatorLooksUpAndForgetsAKey(t *testing.T, h Harness) {
	store, _ := h.New(t)
	s := operatorService(t, store)
	ctx := context.Background()
	first := s.Send(s.Client, "/orders", Key1, "x")
	require.Equal(t, http.StatusCreated, first.Status, first.Body)

	rec, err := idem.Lookup(ctx, store, "42", strings.ToUpper(Key1))
	require.NoError(t, err)
	assert.Equal(t, idem.Completed, rec.State)
	assert.Equal(t, http.StatusCreated, rec.Status)
	assert.Equal(t, "/orders", rec.Path)
	assert.Equal(t, first.Body, string(rec.Body))
	assert.False(t, rec.ExpiresAt.IsZero())

	_, err = idem.Lookup(ctx, store, "43", Key1)
	assert.ErrorIs(t, err, idem.ErrNoRecord, "another customer's key")
	_, err = idem.Lookup(ctx, store, "42", Key2)
	assert.ErrorIs(t, err, idem.ErrNoRecord, "a key never used")
	assert.ErrorIs(t, idem.Forget(ctx, store, "42", Key2), idem.ErrNoRecord)

	require.NoError(t, idem.Forget(ctx, store, "42", Key1))
	_, err = idem.Lookup(ctx, store, "42", Key1)
	assert.ErrorIs(t, err, idem.ErrNoRecord)
	assert.ErrorIs(t, idem.Forget(ctx, store, "42", Key1), idem.ErrNoRecord, "forgotten already")
	again := s.Send(s.Client, "/orders", Key1, "x")
	assert.Equal(t, http.StatusCreated, again.Status)
	assert.False(t, again.Replayed(), "the retry ran again")
	assert.Equal(t, int32(2), s.Calls.Load())
}

// TheHandlerAsksNotToKeepItsAnswer
// (TestSpec29_TheHandlerAsksNotToKeepItsAnswer): a handler that calls
// DoNotKeep answers as it chose, the key is released, and a retry runs it
// again, on every store.
func TheHandlerAsksNotToKeepItsAnswer(t *testing.T, h Harness) {
	store, _ := h.New(t)
	s := operatorService(t, store)
	for range 2 {
		r := s.Send(s.Client, "/later", Key1, "x")
		assert.Equal(t, http.StatusOK, r.Status)
		assert.Equal(t, "queue full, retry", r.Body)
		assert.False(t, r.Replayed())
	}
	assert.Equal(t, int32(2), s.Calls.Load())
	_, err := idem.Lookup(context.Background(), store, "42", Key1)
	assert.ErrorIs(t, err, idem.ErrNoRecord)
}
