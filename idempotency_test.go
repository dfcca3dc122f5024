package idempotency_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	idem "github.com/ginidem/idempotency"
	"github.com/ginidem/idempotency/internal/suite"
)

// TestSpec2_OptionsPerGroupAndRoute: each group or route has its own
// middleware and options: one requires keys and answers 422 on a mismatch,
// one keeps the defaults, one route takes any printable key.
func TestSpec2_OptionsPerGroupAndRoute(t *testing.T) {
	r := gin.New()
	handler := func(c *gin.Context) { c.String(http.StatusCreated, "ok") }
	strict := r.Group("/strict", idem.New(idem.RequireKey(), idem.WithMismatchStatus(http.StatusUnprocessableEntity)))
	strict.POST("/x", handler)
	relaxed := r.Group("/relaxed", idem.New())
	relaxed.POST("/x", handler)
	r.POST("/route", idem.New(idem.WithKeyValidator(idem.KeyPrintable(32))), handler)
	srv := httptest.NewServer(r)
	defer srv.Close()
	send := func(path, key, body string) int {
		hr, _ := http.NewRequest("POST", srv.URL+path, strings.NewReader(body))
		if key != "" {
			hr.Header.Set("Idempotency-Key", key)
		}
		hr.Header.Set("Authorization", suite.DefaultAuth)
		res, err := srv.Client().Do(hr)
		require.NoError(t, err)
		res.Body.Close()
		return res.StatusCode
	}
	assert.Equal(t, http.StatusBadRequest, send("/strict/x", "", "a"))
	assert.Equal(t, http.StatusCreated, send("/relaxed/x", "", "a"))
	assert.Equal(t, http.StatusCreated, send("/strict/x", suite.Key1, "a"))
	assert.Equal(t, http.StatusUnprocessableEntity, send("/strict/x", suite.Key1, "b"))
	assert.Equal(t, http.StatusCreated, send("/relaxed/x", suite.Key1, "a"), "another middleware, another store")
	assert.Equal(t, http.StatusConflict, send("/relaxed/x", suite.Key1, "b"))
	assert.Equal(t, http.StatusCreated, send("/route", "order-1", "a"))
	assert.Equal(t, http.StatusBadRequest, send("/relaxed/x", "order-1", "a"))
}

// TestSpec2_NestedMiddlewares: a global middleware and a group's own one on
// the same route. The inner one handles the key, keyed or not (SPEC 28): the
// outer one steps aside rather than hold the key the inner one would find
// in flight, and a request without a key meets the inner one's RequireKey.
func TestSpec2_NestedMiddlewares(t *testing.T) {
	store := idem.NewMemoryStore() // shared, as a Redis store would be
	r := gin.New()
	r.Use(idem.New(idem.WithStore(store)))
	calls := 0
	strict := r.Group("/strict", idem.New(idem.WithStore(store), idem.RequireKey()))
	strict.POST("/x", func(c *gin.Context) { calls++; c.String(http.StatusCreated, "ok") })
	srv := httptest.NewServer(r)
	defer srv.Close()
	send := func(key string) *http.Response {
		hr, _ := http.NewRequest("POST", srv.URL+"/strict/x", strings.NewReader("a"))
		if key != "" {
			hr.Header.Set("Idempotency-Key", key)
		}
		hr.Header.Set("Authorization", suite.DefaultAuth)
		res, err := srv.Client().Do(hr)
		require.NoError(t, err)
		res.Body.Close()
		return res
	}
	assert.Equal(t, http.StatusCreated, send(suite.Key1).StatusCode)
	replay := send(suite.Key1)
	assert.Equal(t, http.StatusCreated, replay.StatusCode)
	assert.Equal(t, "true", replay.Header.Get("Idempotent-Replayed"))
	assert.Equal(t, http.StatusBadRequest, send("").StatusCode)
	assert.Equal(t, 1, calls)
}

// TestNewPanicsOnBadOptions: configuration errors are caught once, at
// construction, with the package prefix.
func TestNewPanicsOnBadOptions(t *testing.T) {
	for name, opt := range map[string]func(){
		"ttl":      func() { idem.WithTTL(0) },
		"lease":    func() { idem.WithLease(-time.Second) },
		"mismatch": func() { idem.WithMismatchStatus(400) },
		"store":    func() { idem.WithStore(nil) },
		"headers":  func() { idem.WithKeyHeaders() },
		"scope":    func() { idem.WithScope(nil) },
	} {
		assert.PanicsWithValue(t, panicValue(opt), opt, name)
		assert.True(t, strings.HasPrefix(panicValue(opt), "idempotency: "), name)
	}
}

func panicValue(f func()) (v string) {
	defer func() { v = fmt.Sprint(recover()) }()
	f()
	return ""
}
