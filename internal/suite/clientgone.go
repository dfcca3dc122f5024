package suite

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	idem "github.com/ginidem/idempotency"
)

// TheHandlersWorkOutlivesItsClient
// (TestSpec13_TheHandlersWorkOutlivesItsClient): once a keyed request holds
// its key, its handler's context is not cancelled when the client goes away,
// on every store: the handler finishes its work, the answer is kept, and the
// client's retry gets the replay. The handler waits on its context, so a
// cancelled context would end it with a 500 that releases the key, and the
// retry would run again.
func TheHandlersWorkOutlivesItsClient(t *testing.T, h Harness) {
	store, _ := h.New(t)
	started, proceed := make(chan struct{}, 1), make(chan struct{})
	clientGone := make(chan context.Context, 1) // the request's own context, as the server made it
	kept := make(chan idem.EventKind, 4)
	s := Mount(t, func(r *gin.Engine, s *Served) {
		r.Use(func(c *gin.Context) {
			clientGone <- c.Request.Context()
			c.Next()
		})
		r.Use(idem.New(idem.WithStore(store), idem.WithEventHook(func(_ context.Context, ev idem.Event) {
			if ev.Kind == idem.EventCompleted || ev.Kind == idem.EventReleased {
				kept <- ev.Kind
			}
		})))
		r.POST("/orders", func(c *gin.Context) {
			s.Calls.Add(1)
			started <- struct{}{}
			select {
			case <-c.Request.Context().Done():
				c.String(http.StatusInternalServerError, "cancelled: %v", context.Cause(c.Request.Context()))
			case <-proceed:
				c.String(http.StatusCreated, "created")
			}
		})
	})

	ctx, hangUp := context.WithCancel(context.Background())
	gone := make(chan error, 1)
	go func() {
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, s.Srv.URL+"/orders", strings.NewReader("x"))
		req.Header.Set("Idempotency-Key", Key1)
		req.Header.Set("Authorization", DefaultAuth)
		res, err := s.Client.Do(req)
		if err == nil {
			res.Body.Close()
		}
		gone <- err
	}()
	reqCtx := <-clientGone
	<-started
	hangUp()
	require.Error(t, <-gone)
	select {
	case <-reqCtx.Done(): // the server has seen the client go
	case <-time.After(30 * time.Second):
		t.Fatal("the server never saw the client go away")
	}
	close(proceed)
	select {
	case kind := <-kept:
		require.Equal(t, idem.EventCompleted, kind, "the handler finished and its answer was kept")
	case <-time.After(30 * time.Second):
		t.Fatal("the handler's answer was neither kept nor released")
	}
	retry := s.Send(s.Client, "/orders", Key1, "x", "Authorization: "+DefaultAuth)
	assert.Equal(t, http.StatusCreated, retry.Status, retry.Body)
	assert.True(t, retry.Replayed())
	assert.Equal(t, int32(1), s.Calls.Load())
}
