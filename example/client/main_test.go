package main

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/gin-gonic/gin"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ginidem/idempotency"
)

// newService is a stand-in for the example service: POST and GET
// /api/requisitions, the first behind the idempotency middleware.
func newService(t *testing.T) (*httptest.Server, func() int) {
	gin.SetMode(gin.TestMode)
	var mu sync.Mutex
	var items []gin.H
	r := gin.New()
	r.POST("/api/requisitions", idempotency.New(), func(c *gin.Context) {
		var in struct{ Program, Facility string }
		if err := c.ShouldBindJSON(&in); err != nil {
			c.Status(http.StatusBadRequest)
			return
		}
		mu.Lock()
		item := gin.H{"id": fmt.Sprintf("%08d", len(items)+1), "program": in.Program, "facility": in.Facility}
		items = append(items, item)
		mu.Unlock()
		c.Header("Location", "/api/requisitions/"+item["id"].(string))
		c.JSON(http.StatusCreated, item)
	})
	r.GET("/api/requisitions", func(c *gin.Context) {
		mu.Lock()
		defer mu.Unlock()
		c.JSON(http.StatusOK, gin.H{"items": items})
	})
	srv := httptest.NewServer(r)
	t.Cleanup(srv.Close)
	return srv, func() int { mu.Lock(); defer mu.Unlock(); return len(items) }
}

func TestDemoCreatesEachRequisitionOnce(t *testing.T) {
	srv, count := newService(t)
	var out bytes.Buffer
	err := run(context.Background(), options{addr: srv.URL, n: 20, seed: 1, faults: 0.45, user: "alice"}, &out)
	require.NoError(t, err, out.String())

	assert.Equal(t, 20, count(), "one requisition per request, whatever the proxy did")
	assert.Contains(t, out.String(), "requisitions before 0, after 20: created 20")
	assert.Contains(t, out.String(), "answered 201: 20")
	assert.Regexp(t, regexp.MustCompile(`replays [1-9]`), out.String(), "lost answers were replayed")
	assert.Regexp(t, regexp.MustCompile(`[1-9]\d* answers lost after the work, [1-9]\d* connections reset, [1-9]\d* answered 503`), out.String())
	assert.Equal(t, 20, strings.Count(out.String(), "  201  "))
}

func TestDemoIsDeterministicForASeed(t *testing.T) {
	report := func() string {
		srv, _ := newService(t)
		var out bytes.Buffer
		require.NoError(t, run(context.Background(), options{addr: srv.URL, n: 10, seed: 3, faults: 0.5, user: "alice"}, &out))
		return regexp.MustCompile(`http://\S+`).ReplaceAllString(out.String(), "")
	}
	assert.Equal(t, report(), report())
}
