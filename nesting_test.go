package idempotency_test

import (
	"net/http"
	"strings"
	"testing"

	"github.com/gin-gonic/gin"
	"github.com/stretchr/testify/assert"

	idem "github.com/ginidem/idempotency"
	"github.com/ginidem/idempotency/internal/suite"
)

// Nesting (SPEC 28): the middleware inside writer wrappers and nested
// groups, and one middleware value mounted on two engines. The tests that
// compose it with gin-contrib middlewares are in tests/composition_test.go.

// wrapWriter is a middleware that wraps c.Writer, as metrics, timeout and
// compression middlewares do.
func wrapWriter(c *gin.Context) {
	c.Writer = &countingWriter{ResponseWriter: c.Writer}
	c.Next()
}

type countingWriter struct {
	gin.ResponseWriter
	n int
}

func (w *countingWriter) Write(b []byte) (int, error) {
	w.n += len(b)
	return w.ResponseWriter.Write(b)
}

func TestSpec28_Nesting(t *testing.T) {
	build := func(r *gin.Engine, s *suite.Served) {
		store := idem.NewMemoryStore() // shared, as a Redis store would be
		r.Use(idem.New(idem.WithStore(store)))
		r.Use(wrapWriter)
		api := r.Group("/api", idem.New(idem.WithStore(store), idem.WithMismatchStatus(http.StatusUnprocessableEntity),
			idem.WithFingerprint(idem.CanonicalJSON())))
		api.Use(wrapWriter)
		api.POST("/things", s.Create)
		api.POST("/route", idem.New(idem.WithStore(store), idem.WithKeyValidator(idem.KeyPrintable(64))), s.Create)
		r.POST("/top", s.Create)
	}
	auth := "Authorization: Bearer u"

	t.Run("spec28/a writer wrapper between nested middlewares: the handler runs once and is replayed", func(t *testing.T) {
		s := suite.Mount(t, build)
		first := s.Send(s.Client, "/api/things", suite.Key1, `{"a":1,"b":2}`, auth)
		assert.Equal(t, http.StatusCreated, first.Status)
		retry := s.Send(s.Client, "/api/things", suite.Key1, `{"a":1,"b":2}`, auth)
		assert.True(t, retry.Replayed())
		assert.Equal(t, http.StatusCreated, retry.Status)
		assert.Equal(t, first.Body, retry.Body)
		assert.Equal(t, int32(1), s.Calls.Load())
	})

	t.Run("spec28/the group's options win over the engine's", func(t *testing.T) {
		s := suite.Mount(t, build)
		s.Send(s.Client, "/api/things", suite.Key1, `{"a":1,"b":2}`, auth)
		reordered := s.Send(s.Client, "/api/things", suite.Key1, "{\"b\": 2,\n \"a\": 1}", auth)
		assert.True(t, reordered.Replayed(), "the group's canonical JSON applies")
		other := s.Send(s.Client, "/api/things", suite.Key1, `{"a":2}`, auth)
		assert.Equal(t, http.StatusUnprocessableEntity, other.Status, "the group's mismatch status applies")
		assert.Equal(t, int32(1), s.Calls.Load())
	})

	t.Run("spec28/the route's options win over the group's and the engine's", func(t *testing.T) {
		s := suite.Mount(t, build)
		first := s.Send(s.Client, "/api/route", "order-42", "x", auth)
		assert.Equal(t, http.StatusCreated, first.Status, "the route's printable keys apply")
		assert.True(t, s.Send(s.Client, "/api/route", "order-42", "x", auth).Replayed())
		assert.Equal(t, http.StatusConflict, s.Send(s.Client, "/api/route", "order-42", "y", auth).Status,
			"the route keeps the default mismatch status, not the group's")
		assert.Equal(t, int32(1), s.Calls.Load())
	})

	t.Run("spec28/the engine's middleware alone handles routes outside the group", func(t *testing.T) {
		s := suite.Mount(t, build)
		s.Send(s.Client, "/top", suite.Key1, "x", auth)
		assert.True(t, s.Send(s.Client, "/top", suite.Key1, "x", auth).Replayed())
		assert.Equal(t, http.StatusBadRequest, s.Send(s.Client, "/top", "order-42", "x", auth).Status)
		assert.Equal(t, int32(1), s.Calls.Load())
	})

	t.Run("spec29/the handler reads the canonical key it runs under", func(t *testing.T) {
		var seen []string
		s := suite.Mount(t, func(r *gin.Engine, s *suite.Served) {
			r.Use(idem.New())
			r.Use(wrapWriter)
			r.POST("/things", idem.New(), func(c *gin.Context) {
				key, leased, ok := idem.Key(c)
				seen = append(seen, key)
				assert.True(t, leased)
				assert.True(t, ok)
				c.Status(http.StatusCreated)
			})
			r.POST("/nokey", idem.New(), func(c *gin.Context) {
				_, _, ok := idem.Key(c)
				assert.False(t, ok)
				c.Status(http.StatusOK)
			})
		})
		s.Send(s.Client, "/things", strings.ToUpper(suite.Key1), "x", auth)
		assert.Equal(t, []string{suite.Key1}, seen)
		assert.Equal(t, http.StatusOK, s.Send(s.Client, "/nokey", "", "x", auth).Status)
	})
}

// TestSpec28_OneMiddlewareOnTwoEngines mounts one middleware value on two
// engines whose routes of one method and pattern hold different chains: on
// engine "alone" it is the only idempotency middleware, on engine "nested"
// a route middleware with options of its own sits inside it. Whichever
// engine serves first, each engine's chain is counted for itself: alone,
// the shared middleware handles the key (a retry is replayed, the handler
// runs once); nested, it steps aside for the route's, whose options apply.
func TestSpec28_OneMiddlewareOnTwoEngines(t *testing.T) {
	auth := "Authorization: Bearer u"
	for _, first := range []string{"alone", "nested"} {
		t.Run("spec28/the "+first+" engine serves first", func(t *testing.T) {
			store := idem.NewMemoryStore()
			shared := idem.New(idem.WithStore(store))
			alone := suite.Mount(t, func(r *gin.Engine, s *suite.Served) {
				r.Use(shared)
				r.POST("/things", s.Create)
			})
			nested := suite.Mount(t, func(r *gin.Engine, s *suite.Served) {
				r.Use(shared)
				r.POST("/things", idem.New(idem.WithStore(store), idem.WithMismatchStatus(http.StatusUnprocessableEntity)), s.Create)
			})
			useNested := func() {
				assert.Equal(t, http.StatusCreated, nested.Send(nested.Client, "/things", suite.Key2, "x", auth).Status)
				assert.True(t, nested.Send(nested.Client, "/things", suite.Key2, "x", auth).Replayed())
				assert.Equal(t, http.StatusUnprocessableEntity, nested.Send(nested.Client, "/things", suite.Key2, "y", auth).Status,
					"the route's middleware handles the key, with its options")
				assert.Equal(t, int32(1), nested.Calls.Load())
			}
			useAlone := func() {
				for range 3 {
					alone.Send(alone.Client, "/things", suite.Key1, "x", auth)
				}
				assert.Equal(t, int32(1), alone.Calls.Load(), "the handler ran once for one key")
				assert.True(t, alone.Send(alone.Client, "/things", suite.Key1, "x", auth).Replayed())
				assert.Equal(t, http.StatusConflict, alone.Send(alone.Client, "/things", suite.Key1, "y", auth).Status)
			}
			if first == "alone" {
				useAlone()
				useNested()
			} else {
				useNested()
				useAlone()
			}
		})
	}
}
