package tests

import (
	"compress/gzip"
	"io"
	"net/http"
	"strings"
	"testing"

	ginzip "github.com/gin-contrib/gzip"
	"github.com/gin-contrib/requestid"
	"github.com/gin-contrib/sessions"
	"github.com/gin-contrib/sessions/cookie"
	"github.com/gin-gonic/gin"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	idem "github.com/ginidem/idempotency"
	"github.com/ginidem/idempotency/internal/suite"
)

// The composition suite mounts the middleware among the middlewares real
// apps use (gin-contrib/gzip, sessions and requestid, gin.Recovery, nested
// groups, writer wrappers) and checks the promise at each seam: a retry
// gets the same answer, the handler's effect happens once, and no caller
// sees another's answer.

func gunzip(t *testing.T, b string) string {
	t.Helper()
	zr, err := gzip.NewReader(strings.NewReader(b))
	require.NoError(t, err, "a gzip body")
	out, err := io.ReadAll(zr)
	require.NoError(t, err)
	return string(out)
}

// sessionAuth is cookie-session authentication: POST /login?user=x stores
// the user in the session, and requireUser sets c.Set("user_id") or
// answers 401.
func sessionAuth(r *gin.Engine) gin.HandlerFunc {
	r.Use(sessions.Sessions("session", cookie.NewStore([]byte("0123456789abcdef0123456789abcdef"))))
	r.POST("/login", func(c *gin.Context) {
		s := sessions.Default(c)
		s.Set("user", c.Query("user"))
		if err := s.Save(); err != nil {
			c.AbortWithStatus(http.StatusInternalServerError)
			return
		}
		c.Status(http.StatusNoContent)
	})
	return func(c *gin.Context) {
		user, _ := sessions.Default(c).Get("user").(string)
		if user == "" {
			c.AbortWithStatus(http.StatusUnauthorized)
			return
		}
		c.Set("user_id", user)
	}
}

// login logs the client in as user (see sessionAuth).
func login(t *testing.T, s *suite.Served, client *http.Client, user string) {
	t.Helper()
	require.Equal(t, http.StatusNoContent, s.Send(client, "/login?user="+user, "", "").Status)
}

func TestComposition(t *testing.T) {
	t.Run("spec6/a cookie-session app without a scope refuses keys instead of sharing them", func(t *testing.T) {
		s := suite.Mount(t, func(r *gin.Engine, s *suite.Served) {
			auth := sessionAuth(r)
			r.Group("/api", auth, idem.New()).POST("/things", s.Create)
		})
		alice, bob := s.Client, s.NewClient()
		login(t, s, alice, "alice")
		login(t, s, bob, "bob")
		first := s.Send(alice, "/api/things", suite.Key1, `{"secret":"alice's"}`)
		assert.Equal(t, http.StatusBadRequest, first.Status, "the default scope is empty: no Authorization header")
		assert.Equal(t, idem.ProblemUnknownCaller, first.Problem(t).Type)
		other := s.Send(bob, "/api/things", suite.Key1, `{"secret":"alice's"}`)
		assert.NotContains(t, other.Body, "alice")
		assert.Zero(t, s.Calls.Load())
		assert.Equal(t, http.StatusCreated, s.Send(alice, "/api/things", "", "x").Status, "no key, no scope needed")
	})

	t.Run("spec6/a cookie-session app scoped by user id keeps callers apart", func(t *testing.T) {
		s := suite.Mount(t, func(r *gin.Engine, s *suite.Served) {
			auth := sessionAuth(r)
			r.Group("/api", auth, idem.New(idem.WithScope(idem.ScopeFromContext("user_id")))).POST("/things", s.Create)
		})
		alice, bob := s.Client, s.NewClient()
		login(t, s, alice, "alice")
		login(t, s, bob, "bob")
		first := s.Send(alice, "/api/things", suite.Key1, "same body")
		require.Equal(t, http.StatusCreated, first.Status)
		assert.Contains(t, first.Body, `"user":"alice"`)
		theirs := s.Send(bob, "/api/things", suite.Key1, "same body")
		assert.Equal(t, http.StatusCreated, theirs.Status)
		assert.False(t, theirs.Replayed(), "bob never receives alice's answer")
		assert.Contains(t, theirs.Body, `"user":"bob"`)
		again := s.Send(alice, "/api/things", suite.Key1, "same body")
		assert.True(t, again.Replayed())
		assert.Equal(t, first.Body, again.Body)
		anonymous := s.Send(s.NewClient(), "/api/things", suite.Key1, "same body")
		assert.Equal(t, http.StatusUnauthorized, anonymous.Status)
		assert.Equal(t, int32(2), s.Calls.Load())
	})

	t.Run("spec6/mounted before the auth, an unauthenticated request never gets a stored answer", func(t *testing.T) {
		s := suite.Mount(t, func(r *gin.Engine, s *suite.Served) {
			auth := sessionAuth(r)
			r.Use(idem.New(idem.WithScope(idem.ScopeFromContext("user_id"))))
			r.Group("/api", auth).POST("/things", s.Create)
		})
		login(t, s, s.Client, "alice")
		r := s.Send(s.Client, "/api/things", suite.Key1, "x")
		assert.Equal(t, http.StatusBadRequest, r.Status, "the scope is read before auth sets it: refused, not shared")
		assert.Equal(t, idem.ProblemUnknownCaller, r.Problem(t).Type)
		stranger := s.Send(s.NewClient(), "/api/things", suite.Key1, "x")
		assert.NotEqual(t, http.StatusCreated, stranger.Status)
		assert.Zero(t, s.Calls.Load())
	})

	t.Run("spec6/anonymous keys only when allowed", func(t *testing.T) {
		s := suite.Mount(t, func(r *gin.Engine, s *suite.Served) {
			r.POST("/public", idem.New(idem.AllowAnonymousKeys()), s.Create)
		})
		first := s.Send(s.Client, "/public", suite.Key1, "x")
		assert.Equal(t, http.StatusCreated, first.Status)
		assert.True(t, s.Send(s.NewClient(), "/public", suite.Key1, "x").Replayed(), "anonymous callers share one scope")
		assert.Equal(t, int32(1), s.Calls.Load())
	})

	t.Run("spec6/a refreshed bearer token is the same caller when scoped by user id", func(t *testing.T) {
		tokens := map[string]string{"Bearer old-token": "alice", "Bearer new-token": "alice", "Bearer bob-token": "bob"}
		s := suite.Mount(t, func(r *gin.Engine, s *suite.Served) {
			auth := func(c *gin.Context) {
				user, ok := tokens[c.GetHeader("Authorization")]
				if !ok {
					c.AbortWithStatus(http.StatusUnauthorized)
					return
				}
				c.Set("user_id", user)
			}
			r.Group("/api", auth, idem.New(idem.WithScope(idem.ScopeFromContext("user_id")))).POST("/things", s.Create)
		})
		first := s.Send(s.Client, "/api/things", suite.Key1, "x", "Authorization: Bearer old-token")
		retry := s.Send(s.Client, "/api/things", suite.Key1, "x", "Authorization: Bearer new-token")
		assert.Equal(t, http.StatusCreated, first.Status)
		assert.True(t, retry.Replayed(), "the retry after a token refresh is the same caller")
		assert.Equal(t, first.Body, retry.Body)
		bob := s.Send(s.Client, "/api/things", suite.Key1, "x", "Authorization: Bearer bob-token")
		assert.False(t, bob.Replayed())
		assert.Equal(t, int32(2), s.Calls.Load())
	})

	t.Run("spec7/a key is bound to the path requested, not the route pattern", func(t *testing.T) {
		s := suite.Mount(t, func(r *gin.Engine, s *suite.Served) {
			r.Use(idem.New())
			r.POST("/api/requisitions/:id/submit", func(c *gin.Context) {
				s.Calls.Add(1)
				c.JSON(http.StatusOK, gin.H{"submitted": c.Param("id")})
			})
		})
		a := s.Send(s.Client, "/api/requisitions/A/submit", suite.Key1, "", "Authorization: Bearer u")
		require.Equal(t, http.StatusOK, a.Status)
		b := s.Send(s.Client, "/api/requisitions/B/submit", suite.Key1, "", "Authorization: Bearer u")
		assert.False(t, b.Replayed(), "B never gets A's answer")
		assert.NotContains(t, b.Body, `"A"`)
		assert.Equal(t, http.StatusConflict, b.Status)
		assert.Equal(t, idem.ProblemKeyMismatch, b.Problem(t).Type)
		assert.True(t, s.Send(s.Client, "/api/requisitions/A/submit", suite.Key1, "", "Authorization: Bearer u").Replayed())
		assert.Equal(t, http.StatusOK, s.Send(s.Client, "/api/requisitions/B/submit", suite.Key2, "", "Authorization: Bearer u").Status)
		assert.Equal(t, int32(2), s.Calls.Load())
	})

	t.Run("spec11/gzip outside: the outer Content-Encoding is not recorded", func(t *testing.T) {
		s := suite.Mount(t, func(r *gin.Engine, s *suite.Served) {
			r.Use(ginzip.Gzip(gzip.DefaultCompression))
			r.Use(idem.New())
			r.POST("/things", s.Create)
		})
		first := s.Send(s.Client, "/things", suite.Key1, "x", "Authorization: Bearer u", "Accept-Encoding: gzip")
		require.Equal(t, "gzip", first.Header.Get("Content-Encoding"))
		plain := gunzip(t, first.Body)
		gz := s.Send(s.Client, "/things", suite.Key1, "x", "Authorization: Bearer u", "Accept-Encoding: gzip")
		assert.True(t, gz.Replayed())
		assert.Equal(t, "gzip", gz.Header.Get("Content-Encoding"))
		assert.Equal(t, plain, gunzip(t, gz.Body))
		identity := s.Send(s.Client, "/things", suite.Key1, "x", "Authorization: Bearer u")
		assert.True(t, identity.Replayed())
		assert.Empty(t, identity.Header.Get("Content-Encoding"), "no coding the retry did not accept")
		assert.Equal(t, plain, identity.Body)
		assert.Equal(t, int32(1), s.Calls.Load())
	})

	t.Run("spec17/gzip inside: a retry that does not accept gzip gets the body decoded", func(t *testing.T) {
		s := suite.Mount(t, func(r *gin.Engine, s *suite.Served) {
			r.Use(idem.New())
			r.Use(ginzip.Gzip(gzip.DefaultCompression))
			r.POST("/things", s.Create)
		})
		first := s.Send(s.Client, "/things", suite.Key1, "x", "Authorization: Bearer u", "Accept-Encoding: gzip")
		require.Equal(t, "gzip", first.Header.Get("Content-Encoding"))
		plain := gunzip(t, first.Body)
		gz := s.Send(s.Client, "/things", suite.Key1, "x", "Authorization: Bearer u", "Accept-Encoding: br, gzip;q=0.5")
		assert.True(t, gz.Replayed())
		assert.Equal(t, "gzip", gz.Header.Get("Content-Encoding"))
		assert.Equal(t, first.Body, gz.Body, "byte-identical to the original")
		assert.Equal(t, "Accept-Encoding", gz.Header.Get("Vary"), "Vary is replayed")
		for _, accept := range []string{"", "Accept-Encoding: identity", "Accept-Encoding: gzip;q=0, *"} {
			identity := s.Send(s.Client, "/things", suite.Key1, "x", "Authorization: Bearer u", accept)
			assert.True(t, identity.Replayed(), accept)
			assert.Empty(t, identity.Header.Get("Content-Encoding"), accept)
			assert.Equal(t, plain, identity.Body, accept)
		}
		assert.Equal(t, int32(1), s.Calls.Load())
	})

	t.Run("spec11/Vary set by the handler is replayed", func(t *testing.T) {
		s := suite.Mount(t, func(r *gin.Engine, s *suite.Served) {
			r.POST("/things", idem.New(), func(c *gin.Context) {
				s.Calls.Add(1)
				c.Header("Vary", "Accept-Language")
				c.String(http.StatusCreated, "hello")
			})
		})
		s.Send(s.Client, "/things", suite.Key1, "x", "Authorization: Bearer u")
		replay := s.Send(s.Client, "/things", suite.Key1, "x", "Authorization: Bearer u")
		assert.True(t, replay.Replayed())
		assert.Equal(t, "Accept-Language", replay.Header.Get("Vary"))
	})

	t.Run("spec11/requestid outside: each replay carries its own request id", func(t *testing.T) {
		s := suite.Mount(t, func(r *gin.Engine, s *suite.Served) {
			r.Use(requestid.New())
			r.Use(idem.New(idem.WithReplayHeaders("X-Request-Id")))
			r.POST("/things", s.Create)
		})
		first := s.Send(s.Client, "/things", suite.Key1, "x", "Authorization: Bearer u")
		replay := s.Send(s.Client, "/things", suite.Key1, "x", "Authorization: Bearer u")
		assert.True(t, replay.Replayed())
		assert.Equal(t, first.Body, replay.Body)
		assert.NotEmpty(t, replay.Header.Get("X-Request-Id"))
		assert.NotEqual(t, first.Header.Get("X-Request-Id"), replay.Header.Get("X-Request-Id"),
			"the outer middleware's header is not part of the recorded response")
	})

	t.Run("spec12/recovery inside: a panic after a partial 201 is not kept", func(t *testing.T) {
		s := suite.Mount(t, func(r *gin.Engine, s *suite.Served) {
			r.Use(idem.New())
			r.Use(gin.RecoveryWithWriter(io.Discard))
			r.POST("/things", func(c *gin.Context) {
				s.Calls.Add(1)
				c.Writer.WriteHeader(http.StatusCreated)
				c.Writer.WriteString(`{"id":`)
				panic("half-way")
			})
		})
		s.Send(s.Client, "/things", suite.Key1, "x", "Authorization: Bearer u")
		retry := s.Send(s.Client, "/things", suite.Key1, "x", "Authorization: Bearer u")
		assert.False(t, retry.Replayed(), "the broken 201 is never replayed")
		assert.Equal(t, int32(2), s.Calls.Load(), "the retry runs again")
	})

	t.Run("spec12/recovery outside: a panic releases the key", func(t *testing.T) {
		s := suite.Mount(t, func(r *gin.Engine, s *suite.Served) {
			r.Use(gin.RecoveryWithWriter(io.Discard))
			r.Use(idem.New())
			r.POST("/things", func(c *gin.Context) {
				if s.Calls.Add(1) == 1 {
					c.Writer.WriteHeader(http.StatusCreated)
					c.Writer.WriteString(`{"id":`)
					panic("half-way")
				}
				c.String(http.StatusCreated, "done")
			})
		})
		s.Send(s.Client, "/things", suite.Key1, "x", "Authorization: Bearer u")
		retry := s.Send(s.Client, "/things", suite.Key1, "x", "Authorization: Bearer u")
		assert.Equal(t, "done", retry.Body)
		assert.True(t, s.Send(s.Client, "/things", suite.Key1, "x", "Authorization: Bearer u").Replayed())
		assert.Equal(t, int32(2), s.Calls.Load())
	})
}
