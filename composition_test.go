package idempotency_test

import (
	"compress/gzip"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	ginzip "github.com/gin-contrib/gzip"
	"github.com/gin-contrib/requestid"
	"github.com/gin-contrib/sessions"
	"github.com/gin-contrib/sessions/cookie"
	"github.com/gin-gonic/gin"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	idem "github.com/ginidem/idempotency"
)

// The composition suite mounts the middleware among the middlewares real
// apps use (gin-contrib/gzip, sessions and requestid, gin.Recovery, nested
// groups, writer wrappers) and checks the promise at each seam: a retry
// gets the same answer, the handler's effect happens once, and no caller
// sees another's answer.

// served is a real Gin engine behind a real server, with a client that
// keeps cookies and shows the raw Content-Encoding.
type served struct {
	t      *testing.T
	srv    *httptest.Server
	client *http.Client
	calls  atomic.Int32
}

func mount(t *testing.T, build func(r *gin.Engine, s *served)) *served {
	t.Helper()
	s := &served{t: t}
	r := gin.New()
	build(r, s)
	s.srv = httptest.NewServer(r)
	t.Cleanup(s.srv.Close)
	s.client = s.newClient()
	return s
}

// newClient is another user agent: its own cookie jar, no transparent gzip.
func (s *served) newClient() *http.Client {
	jar, err := cookiejar.New(nil)
	require.NoError(s.t, err)
	return &http.Client{Jar: jar, Transport: &http.Transport{DisableCompression: true}}
}

// send posts body to path with the key and header lines ("Name: value").
func (s *served) send(client *http.Client, path, key, body string, header ...string) resp {
	s.t.Helper()
	hr, err := http.NewRequest(http.MethodPost, s.srv.URL+path, strings.NewReader(body))
	require.NoError(s.t, err)
	if key != "" {
		hr.Header.Set("Idempotency-Key", key)
	}
	for _, line := range header {
		if line == "" {
			continue
		}
		name, value, _ := strings.Cut(line, ": ")
		hr.Header.Add(name, value)
	}
	res, err := client.Do(hr)
	require.NoError(s.t, err)
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	require.NoError(s.t, err)
	return resp{status: res.StatusCode, header: res.Header, body: string(b)}
}

// create is a handler that creates one resource per run and names the
// caller it ran for.
func (s *served) create(c *gin.Context) {
	n := s.calls.Add(1)
	body, _ := io.ReadAll(c.Request.Body)
	c.Header("Location", "/things/"+strconv.Itoa(int(n)))
	c.JSON(http.StatusCreated, gin.H{"n": n, "user": c.GetString("user_id"), "echo": string(body)})
}

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

func (s *served) login(client *http.Client, user string) {
	s.t.Helper()
	require.Equal(s.t, http.StatusNoContent, s.send(client, "/login?user="+user, "", "").status)
}

func TestComposition(t *testing.T) {
	t.Run("spec6/a cookie-session app without a scope refuses keys instead of sharing them", func(t *testing.T) {
		s := mount(t, func(r *gin.Engine, s *served) {
			auth := sessionAuth(r)
			r.Group("/api", auth, idem.New()).POST("/things", s.create)
		})
		alice, bob := s.client, s.newClient()
		s.login(alice, "alice")
		s.login(bob, "bob")
		first := s.send(alice, "/api/things", key1, `{"secret":"alice's"}`)
		assert.Equal(t, http.StatusBadRequest, first.status, "the default scope is empty: no Authorization header")
		assert.Equal(t, idem.ProblemUnknownCaller, first.problem(t).Type)
		other := s.send(bob, "/api/things", key1, `{"secret":"alice's"}`)
		assert.NotContains(t, other.body, "alice")
		assert.Zero(t, s.calls.Load())
		assert.Equal(t, http.StatusCreated, s.send(alice, "/api/things", "", "x").status, "no key, no scope needed")
	})

	t.Run("spec6/a cookie-session app scoped by user id keeps callers apart", func(t *testing.T) {
		s := mount(t, func(r *gin.Engine, s *served) {
			auth := sessionAuth(r)
			r.Group("/api", auth, idem.New(idem.WithScope(idem.ScopeFromContext("user_id")))).POST("/things", s.create)
		})
		alice, bob := s.client, s.newClient()
		s.login(alice, "alice")
		s.login(bob, "bob")
		first := s.send(alice, "/api/things", key1, "same body")
		require.Equal(t, http.StatusCreated, first.status)
		assert.Contains(t, first.body, `"user":"alice"`)
		theirs := s.send(bob, "/api/things", key1, "same body")
		assert.Equal(t, http.StatusCreated, theirs.status)
		assert.False(t, theirs.replayed(), "bob never receives alice's answer")
		assert.Contains(t, theirs.body, `"user":"bob"`)
		again := s.send(alice, "/api/things", key1, "same body")
		assert.True(t, again.replayed())
		assert.Equal(t, first.body, again.body)
		anonymous := s.send(s.newClient(), "/api/things", key1, "same body")
		assert.Equal(t, http.StatusUnauthorized, anonymous.status)
		assert.Equal(t, int32(2), s.calls.Load())
	})

	t.Run("spec6/mounted before the auth, an unauthenticated request never gets a stored answer", func(t *testing.T) {
		s := mount(t, func(r *gin.Engine, s *served) {
			auth := sessionAuth(r)
			r.Use(idem.New(idem.WithScope(idem.ScopeFromContext("user_id"))))
			r.Group("/api", auth).POST("/things", s.create)
		})
		s.login(s.client, "alice")
		r := s.send(s.client, "/api/things", key1, "x")
		assert.Equal(t, http.StatusBadRequest, r.status, "the scope is read before auth sets it: refused, not shared")
		assert.Equal(t, idem.ProblemUnknownCaller, r.problem(t).Type)
		stranger := s.send(s.newClient(), "/api/things", key1, "x")
		assert.NotEqual(t, http.StatusCreated, stranger.status)
		assert.Zero(t, s.calls.Load())
	})

	t.Run("spec6/anonymous keys only when allowed", func(t *testing.T) {
		s := mount(t, func(r *gin.Engine, s *served) {
			r.POST("/public", idem.New(idem.AllowAnonymousKeys()), s.create)
		})
		first := s.send(s.client, "/public", key1, "x")
		assert.Equal(t, http.StatusCreated, first.status)
		assert.True(t, s.send(s.newClient(), "/public", key1, "x").replayed(), "anonymous callers share one scope")
		assert.Equal(t, int32(1), s.calls.Load())
	})

	t.Run("spec6/a refreshed bearer token is the same caller when scoped by user id", func(t *testing.T) {
		tokens := map[string]string{"Bearer old-token": "alice", "Bearer new-token": "alice", "Bearer bob-token": "bob"}
		s := mount(t, func(r *gin.Engine, s *served) {
			auth := func(c *gin.Context) {
				user, ok := tokens[c.GetHeader("Authorization")]
				if !ok {
					c.AbortWithStatus(http.StatusUnauthorized)
					return
				}
				c.Set("user_id", user)
			}
			r.Group("/api", auth, idem.New(idem.WithScope(idem.ScopeFromContext("user_id")))).POST("/things", s.create)
		})
		first := s.send(s.client, "/api/things", key1, "x", "Authorization: Bearer old-token")
		retry := s.send(s.client, "/api/things", key1, "x", "Authorization: Bearer new-token")
		assert.Equal(t, http.StatusCreated, first.status)
		assert.True(t, retry.replayed(), "the retry after a token refresh is the same caller")
		assert.Equal(t, first.body, retry.body)
		bob := s.send(s.client, "/api/things", key1, "x", "Authorization: Bearer bob-token")
		assert.False(t, bob.replayed())
		assert.Equal(t, int32(2), s.calls.Load())
	})

	t.Run("spec7/a key is bound to the path requested, not the route pattern", func(t *testing.T) {
		s := mount(t, func(r *gin.Engine, s *served) {
			r.Use(idem.New())
			r.POST("/api/requisitions/:id/submit", func(c *gin.Context) {
				s.calls.Add(1)
				c.JSON(http.StatusOK, gin.H{"submitted": c.Param("id")})
			})
		})
		a := s.send(s.client, "/api/requisitions/A/submit", key1, "", "Authorization: Bearer u")
		require.Equal(t, http.StatusOK, a.status)
		b := s.send(s.client, "/api/requisitions/B/submit", key1, "", "Authorization: Bearer u")
		assert.False(t, b.replayed(), "B never gets A's answer")
		assert.NotContains(t, b.body, `"A"`)
		assert.Equal(t, http.StatusConflict, b.status)
		assert.Equal(t, idem.ProblemKeyMismatch, b.problem(t).Type)
		assert.True(t, s.send(s.client, "/api/requisitions/A/submit", key1, "", "Authorization: Bearer u").replayed())
		assert.Equal(t, http.StatusOK, s.send(s.client, "/api/requisitions/B/submit", key2, "", "Authorization: Bearer u").status)
		assert.Equal(t, int32(2), s.calls.Load())
	})

	t.Run("spec11/gzip outside: the outer Content-Encoding is not recorded", func(t *testing.T) {
		s := mount(t, func(r *gin.Engine, s *served) {
			r.Use(ginzip.Gzip(gzip.DefaultCompression))
			r.Use(idem.New())
			r.POST("/things", s.create)
		})
		first := s.send(s.client, "/things", key1, "x", "Authorization: Bearer u", "Accept-Encoding: gzip")
		require.Equal(t, "gzip", first.header.Get("Content-Encoding"))
		plain := gunzip(t, first.body)
		gz := s.send(s.client, "/things", key1, "x", "Authorization: Bearer u", "Accept-Encoding: gzip")
		assert.True(t, gz.replayed())
		assert.Equal(t, "gzip", gz.header.Get("Content-Encoding"))
		assert.Equal(t, plain, gunzip(t, gz.body))
		identity := s.send(s.client, "/things", key1, "x", "Authorization: Bearer u")
		assert.True(t, identity.replayed())
		assert.Empty(t, identity.header.Get("Content-Encoding"), "no coding the retry did not accept")
		assert.Equal(t, plain, identity.body)
		assert.Equal(t, int32(1), s.calls.Load())
	})

	t.Run("spec17/gzip inside: a retry that does not accept gzip gets the body decoded", func(t *testing.T) {
		s := mount(t, func(r *gin.Engine, s *served) {
			r.Use(idem.New())
			r.Use(ginzip.Gzip(gzip.DefaultCompression))
			r.POST("/things", s.create)
		})
		first := s.send(s.client, "/things", key1, "x", "Authorization: Bearer u", "Accept-Encoding: gzip")
		require.Equal(t, "gzip", first.header.Get("Content-Encoding"))
		plain := gunzip(t, first.body)
		gz := s.send(s.client, "/things", key1, "x", "Authorization: Bearer u", "Accept-Encoding: br, gzip;q=0.5")
		assert.True(t, gz.replayed())
		assert.Equal(t, "gzip", gz.header.Get("Content-Encoding"))
		assert.Equal(t, first.body, gz.body, "byte-identical to the original")
		assert.Equal(t, "Accept-Encoding", gz.header.Get("Vary"), "Vary is replayed")
		for _, accept := range []string{"", "Accept-Encoding: identity", "Accept-Encoding: gzip;q=0, *"} {
			identity := s.send(s.client, "/things", key1, "x", "Authorization: Bearer u", accept)
			assert.True(t, identity.replayed(), accept)
			assert.Empty(t, identity.header.Get("Content-Encoding"), accept)
			assert.Equal(t, plain, identity.body, accept)
		}
		assert.Equal(t, int32(1), s.calls.Load())
	})

	t.Run("spec11/Vary set by the handler is replayed", func(t *testing.T) {
		s := mount(t, func(r *gin.Engine, s *served) {
			r.POST("/things", idem.New(), func(c *gin.Context) {
				s.calls.Add(1)
				c.Header("Vary", "Accept-Language")
				c.String(http.StatusCreated, "hello")
			})
		})
		s.send(s.client, "/things", key1, "x", "Authorization: Bearer u")
		replay := s.send(s.client, "/things", key1, "x", "Authorization: Bearer u")
		assert.True(t, replay.replayed())
		assert.Equal(t, "Accept-Language", replay.header.Get("Vary"))
	})

	t.Run("spec11/requestid outside: each replay carries its own request id", func(t *testing.T) {
		s := mount(t, func(r *gin.Engine, s *served) {
			r.Use(requestid.New())
			r.Use(idem.New(idem.WithReplayHeaders("X-Request-Id")))
			r.POST("/things", s.create)
		})
		first := s.send(s.client, "/things", key1, "x", "Authorization: Bearer u")
		replay := s.send(s.client, "/things", key1, "x", "Authorization: Bearer u")
		assert.True(t, replay.replayed())
		assert.Equal(t, first.body, replay.body)
		assert.NotEmpty(t, replay.header.Get("X-Request-Id"))
		assert.NotEqual(t, first.header.Get("X-Request-Id"), replay.header.Get("X-Request-Id"),
			"the outer middleware's header is not part of the recorded response")
	})

	t.Run("spec12/recovery inside: a panic after a partial 201 is not kept", func(t *testing.T) {
		s := mount(t, func(r *gin.Engine, s *served) {
			r.Use(idem.New())
			r.Use(gin.RecoveryWithWriter(io.Discard))
			r.POST("/things", func(c *gin.Context) {
				s.calls.Add(1)
				c.Writer.WriteHeader(http.StatusCreated)
				c.Writer.WriteString(`{"id":`)
				panic("half-way")
			})
		})
		s.send(s.client, "/things", key1, "x", "Authorization: Bearer u")
		retry := s.send(s.client, "/things", key1, "x", "Authorization: Bearer u")
		assert.False(t, retry.replayed(), "the broken 201 is never replayed")
		assert.Equal(t, int32(2), s.calls.Load(), "the retry runs again")
	})

	t.Run("spec12/recovery outside: a panic releases the key", func(t *testing.T) {
		s := mount(t, func(r *gin.Engine, s *served) {
			r.Use(gin.RecoveryWithWriter(io.Discard))
			r.Use(idem.New())
			r.POST("/things", func(c *gin.Context) {
				if s.calls.Add(1) == 1 {
					c.Writer.WriteHeader(http.StatusCreated)
					c.Writer.WriteString(`{"id":`)
					panic("half-way")
				}
				c.String(http.StatusCreated, "done")
			})
		})
		s.send(s.client, "/things", key1, "x", "Authorization: Bearer u")
		retry := s.send(s.client, "/things", key1, "x", "Authorization: Bearer u")
		assert.Equal(t, "done", retry.body)
		assert.True(t, s.send(s.client, "/things", key1, "x", "Authorization: Bearer u").replayed())
		assert.Equal(t, int32(2), s.calls.Load())
	})
}

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
	build := func(r *gin.Engine, s *served) {
		store := idem.NewMemoryStore() // shared, as a Redis store would be
		r.Use(idem.New(idem.WithStore(store)))
		r.Use(wrapWriter)
		api := r.Group("/api", idem.New(idem.WithStore(store), idem.WithMismatchStatus(http.StatusUnprocessableEntity),
			idem.WithFingerprint(idem.CanonicalJSON())))
		api.Use(wrapWriter)
		api.POST("/things", s.create)
		api.POST("/route", idem.New(idem.WithStore(store), idem.WithKeyValidator(idem.KeyPrintable(64))), s.create)
		r.POST("/top", s.create)
	}
	auth := "Authorization: Bearer u"

	t.Run("spec28/a writer wrapper between nested middlewares: the handler runs once and is replayed", func(t *testing.T) {
		s := mount(t, build)
		first := s.send(s.client, "/api/things", key1, `{"a":1,"b":2}`, auth)
		assert.Equal(t, http.StatusCreated, first.status)
		retry := s.send(s.client, "/api/things", key1, `{"a":1,"b":2}`, auth)
		assert.True(t, retry.replayed())
		assert.Equal(t, http.StatusCreated, retry.status)
		assert.Equal(t, first.body, retry.body)
		assert.Equal(t, int32(1), s.calls.Load())
	})

	t.Run("spec28/the group's options win over the engine's", func(t *testing.T) {
		s := mount(t, build)
		s.send(s.client, "/api/things", key1, `{"a":1,"b":2}`, auth)
		reordered := s.send(s.client, "/api/things", key1, "{\"b\": 2,\n \"a\": 1}", auth)
		assert.True(t, reordered.replayed(), "the group's canonical JSON applies")
		other := s.send(s.client, "/api/things", key1, `{"a":2}`, auth)
		assert.Equal(t, http.StatusUnprocessableEntity, other.status, "the group's mismatch status applies")
		assert.Equal(t, int32(1), s.calls.Load())
	})

	t.Run("spec28/the route's options win over the group's and the engine's", func(t *testing.T) {
		s := mount(t, build)
		first := s.send(s.client, "/api/route", "order-42", "x", auth)
		assert.Equal(t, http.StatusCreated, first.status, "the route's printable keys apply")
		assert.True(t, s.send(s.client, "/api/route", "order-42", "x", auth).replayed())
		assert.Equal(t, http.StatusConflict, s.send(s.client, "/api/route", "order-42", "y", auth).status,
			"the route keeps the default mismatch status, not the group's")
		assert.Equal(t, int32(1), s.calls.Load())
	})

	t.Run("spec28/the engine's middleware alone handles routes outside the group", func(t *testing.T) {
		s := mount(t, build)
		s.send(s.client, "/top", key1, "x", auth)
		assert.True(t, s.send(s.client, "/top", key1, "x", auth).replayed())
		assert.Equal(t, http.StatusBadRequest, s.send(s.client, "/top", "order-42", "x", auth).status)
		assert.Equal(t, int32(1), s.calls.Load())
	})

	t.Run("spec29/the handler reads the canonical key it runs under", func(t *testing.T) {
		var seen []string
		s := mount(t, func(r *gin.Engine, s *served) {
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
		s.send(s.client, "/things", strings.ToUpper(key1), "x", auth)
		assert.Equal(t, []string{key1}, seen)
		assert.Equal(t, http.StatusOK, s.send(s.client, "/nokey", "", "x", auth).status)
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
			alone := mount(t, func(r *gin.Engine, s *served) {
				r.Use(shared)
				r.POST("/things", s.create)
			})
			nested := mount(t, func(r *gin.Engine, s *served) {
				r.Use(shared)
				r.POST("/things", idem.New(idem.WithStore(store), idem.WithMismatchStatus(http.StatusUnprocessableEntity)), s.create)
			})
			useNested := func() {
				assert.Equal(t, http.StatusCreated, nested.send(nested.client, "/things", key2, "x", auth).status)
				assert.True(t, nested.send(nested.client, "/things", key2, "x", auth).replayed())
				assert.Equal(t, http.StatusUnprocessableEntity, nested.send(nested.client, "/things", key2, "y", auth).status,
					"the route's middleware handles the key, with its options")
				assert.Equal(t, int32(1), nested.calls.Load())
			}
			useAlone := func() {
				for range 3 {
					alone.send(alone.client, "/things", key1, "x", auth)
				}
				assert.Equal(t, int32(1), alone.calls.Load(), "the handler ran once for one key")
				assert.True(t, alone.send(alone.client, "/things", key1, "x", auth).replayed())
				assert.Equal(t, http.StatusConflict, alone.send(alone.client, "/things", key1, "y", auth).status)
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
