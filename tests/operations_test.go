package tests

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gin-contrib/requestid"
	"github.com/gin-gonic/gin"
	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	idem "github.com/ginidem/idempotency"
	"github.com/ginidem/idempotency/internal/suite"
	"github.com/ginidem/idempotency/pgstore"
	"github.com/ginidem/idempotency/promidem"
)

// What operators see (SPEC 33) and an outage that is not a log flood
// (SPEC 32): the client's key and the request's own values in events and
// log lines, warnings of a misconfiguration once per route, a summary of
// the requests an open circuit refused, and a Retry-After from the lease
// of a key in flight.

// logLine is one line a logCapture received.
type logLine struct {
	level     slog.Level
	msg       string
	attrs     map[string]string
	requestID any // what the handler read from its context under "request_id"
}

// logCapture is a slog handler that keeps every line, at every level, and
// reads the request id from the context it gets, as a handler that adds a
// request's values to its lines would.
type logCapture struct {
	mu    sync.Mutex
	lines []logLine
}

func (l *logCapture) logger() *slog.Logger { return slog.New(l) }

func (l *logCapture) Enabled(context.Context, slog.Level) bool { return true }

func (l *logCapture) Handle(ctx context.Context, r slog.Record) error {
	line := logLine{level: r.Level, msg: r.Message, attrs: map[string]string{}, requestID: ctx.Value("request_id")}
	r.Attrs(func(a slog.Attr) bool {
		line.attrs[a.Key] = a.Value.String()
		return true
	})
	l.mu.Lock()
	l.lines = append(l.lines, line)
	l.mu.Unlock()
	return nil
}

func (l *logCapture) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *logCapture) WithGroup(string) slog.Handler      { return l }

// at returns the lines at level or above whose message starts with prefix.
func (l *logCapture) at(level slog.Level, prefix string) []logLine {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []logLine
	for _, line := range l.lines {
		if line.level >= level && strings.HasPrefix(line.msg, prefix) {
			out = append(out, line)
		}
	}
	return out
}

// reset forgets the lines so far.
func (l *logCapture) reset() {
	l.mu.Lock()
	l.lines = nil
	l.mu.Unlock()
}

// refusedCount reads the breaker's refusal counter of m, as a scrape would.
func refusedCount(t *testing.T, m *promidem.Metrics) float64 {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	require.NoError(t, reg.Register(m))
	families, err := reg.Gather()
	require.NoError(t, err)
	for _, f := range families {
		if f.GetName() == "idempotency_breaker_refused_total" {
			return f.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatal("no idempotency_breaker_refused_total")
	return 0
}

// userAuth is an authentication middleware: the caller named in X-User is
// set as user_id, and a request without one gets 401.
func userAuth(c *gin.Context) {
	user := c.GetHeader("X-User")
	if user == "" {
		c.AbortWithStatus(http.StatusUnauthorized)
		return
	}
	c.Set("user_id", user)
}

// seenEvent is an event with the request's values its hook read from ctx.
type seenEvent struct {
	idem.Event
	user, requestID any
	ctx             context.Context
}

// valueHook records each event with what ctx gives for "user_id" and
// "request_id" during the call, and keeps ctx for later.
type valueHook struct {
	mu   sync.Mutex
	seen []seenEvent
}

func (h *valueHook) hook(ctx context.Context, e idem.Event) {
	s := seenEvent{Event: e, user: ctx.Value("user_id"), requestID: ctx.Value("request_id"), ctx: ctx}
	h.mu.Lock()
	h.seen = append(h.seen, s)
	h.mu.Unlock()
}

func (h *valueHook) all() []seenEvent {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]seenEvent(nil), h.seen...)
}

// waitKind waits until an event of kind was seen, and returns it.
func (h *valueHook) waitKind(t *testing.T, kind idem.EventKind) seenEvent {
	t.Helper()
	var found seenEvent
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		for _, s := range h.all() {
			if s.Kind == kind {
				found = s
				return
			}
		}
		c.Errorf("no %s event yet", kind)
	}, 10*time.Second, 10*time.Millisecond)
	return found
}

// valuesService serves POST /things behind gin-contrib/requestid (its id
// set as request_id) and userAuth, with the middleware scoped by user_id.
// POST /complete-later fails the first completion (the store refuses it
// while fail is set), so that it completes in the background.
func valuesService(t *testing.T, store idem.Store, fail func(bool), opts ...idem.Option) *suite.Served {
	return suite.Mount(t, func(r *gin.Engine, s *suite.Served) {
		r.Use(requestid.New(requestid.WithHandler(func(c *gin.Context, id string) { c.Set("request_id", id) })))
		r.Use(userAuth)
		r.Use(idem.New(append([]idem.Option{idem.WithStore(store), idem.WithScope(idem.ScopeFromContext("user_id"))}, opts...)...))
		r.POST("/things", s.Create)
		r.POST("/complete-later", func(c *gin.Context) {
			fail(true) // the key is held: the completion is the next store call
			s.Create(c)
		})
	})
}

// TestSpec33_EventsCarryTheKeyAndTheRequestsValues: the events and log
// lines of a keyed request carry the client's key in its canonical form,
// and the hook and the log handler read the values the request's
// middlewares set (an auth middleware's user id, gin-contrib/requestid's
// id) from the context they get, on every store. Once the request ended,
// a context kept from its hook reads none of them, and the outcome of a
// completion retried in the background carries the key but not the
// request's values. WithoutKeyInEvents leaves the key out of both.
func TestSpec33_EventsCarryTheKeyAndTheRequestsValues(t *testing.T) {
	forEachStore(t, func(t *testing.T, h suite.Harness) {
		t.Run("spec33/the key and the request's values", func(t *testing.T) {
			store, _ := h.New(t)
			hook, logs := &valueHook{}, &logCapture{}
			s := valuesService(t, store, func(bool) {}, idem.WithEventHook(hook.hook), idem.WithLogger(logs.logger()))
			sent := strings.ToUpper(uuid.NewString()) // as a client may send it
			canonical := strings.ToLower(sent)

			first := s.Send(s.Client, "/things", sent, "x", "X-User: alice")
			require.Equal(t, http.StatusCreated, first.Status, first.Body)
			hook.waitKind(t, idem.EventCompleted)
			again := s.Send(s.Client, "/things", sent, "x", "X-User: alice")
			require.True(t, again.Replayed())
			hook.waitKind(t, idem.EventReplayed)

			ids := map[idem.EventKind]string{
				idem.EventAcquired: first.Header.Get("X-Request-ID"), idem.EventCompleted: first.Header.Get("X-Request-ID"),
				idem.EventReplayed: again.Header.Get("X-Request-ID"),
			}
			require.NotEqual(t, ids[idem.EventAcquired], ids[idem.EventReplayed])
			seen := hook.all()
			require.Len(t, seen, 3)
			for _, e := range seen {
				assert.Equal(t, canonical, e.IdempotencyKey, e.Kind)
				assert.Equal(t, "alice", e.user, "%s: the auth middleware's value", e.Kind)
				assert.Equal(t, ids[e.Kind], e.requestID, "%s: the requestid middleware's value", e.Kind)
				assert.NotContains(t, e.ScopeHash, "alice")
			}
			lines := logs.at(slog.LevelDebug, "idempotency: ")
			require.Len(t, lines, 3)
			for _, line := range lines {
				assert.Equal(t, canonical, line.attrs["idempotency_key"], line.msg)
				assert.NotEmpty(t, line.requestID, "%s: the log handler reads the request's values", line.msg)
			}

			for _, e := range hook.all() {
				assert.Nil(t, e.ctx.Value("user_id"), "%s: a context kept after the hook returned reads no request's value", e.Kind)
			}
		})

		t.Run("spec33/a background completion has the key but not the request", func(t *testing.T) {
			if h.Tx {
				t.Skip("a TxStore's failed commit answers 503 and leaves nothing to complete in the background (SPEC 31)")
			}
			var cs *suite.CountingStore
			store, _ := suite.Counted(h, &cs).New(t)
			hook := &valueHook{}
			s := valuesService(t, store, cs.Fail.Store, idem.WithEventHook(hook.hook), idem.WithLogger(slog.New(slog.DiscardHandler)))
			key := uuid.NewString()
			first := s.Send(s.Client, "/complete-later", key, "x", "X-User: bob")
			require.Equal(t, http.StatusCreated, first.Status, first.Body)
			failed := hook.waitKind(t, idem.EventStoreError)
			assert.Equal(t, "bob", failed.user, "the failed first completion is reported during the request")
			cs.Fail.Store(false)

			done := hook.waitKind(t, idem.EventCompleted)
			assert.Equal(t, key, done.IdempotencyKey)
			assert.Nil(t, done.user, "the background completion runs after the request: none of its values")
			assert.Nil(t, done.requestID)
			assert.True(t, s.Send(s.Client, "/complete-later", key, "x", "X-User: bob").Replayed())
		})

		t.Run("spec33/WithoutKeyInEvents leaves the key out", func(t *testing.T) {
			store, _ := h.New(t)
			hook, logs := &valueHook{}, &logCapture{}
			s := valuesService(t, store, func(bool) {}, idem.WithEventHook(hook.hook), idem.WithLogger(logs.logger()),
				idem.WithoutKeyInEvents())
			key := uuid.NewString()
			require.Equal(t, http.StatusCreated, s.Send(s.Client, "/things", key, "x", "X-User: carol").Status)
			hook.waitKind(t, idem.EventCompleted)
			for _, e := range hook.all() {
				assert.Empty(t, e.IdempotencyKey, e.Kind)
				assert.Equal(t, "carol", e.user, "the request's values are still readable")
				assert.NotEmpty(t, e.Key, "the store key hash stays")
			}
			for _, line := range logs.at(slog.LevelDebug, "idempotency: ") {
				assert.NotContains(t, line.attrs, "idempotency_key", line.msg)
				for _, v := range line.attrs {
					assert.NotContains(t, v, key, line.msg)
				}
			}
		})
	})
}

// TestSpec33_UnknownCallerWarnsOncePerRoute: mounted before the
// authentication middleware, the middleware refuses every keyed request
// with 400 unknown-caller. That is logged at warn level once per route,
// however many requests show it, saying what to change, on every store.
func TestSpec33_UnknownCallerWarnsOncePerRoute(t *testing.T) {
	forEachStore(t, func(t *testing.T, h suite.Harness) {
		store, _ := h.New(t)
		logs := &logCapture{}
		s := suite.Mount(t, func(r *gin.Engine, s *suite.Served) {
			r.Use(idem.New(idem.WithStore(store), idem.WithScope(idem.ScopeFromContext("user_id")), idem.WithLogger(logs.logger())))
			r.Use(userAuth) // too late: the middleware has already looked for user_id
			r.POST("/orders", s.Create)
			r.POST("/refunds", s.Create)
		})
		for range 20 {
			for _, path := range []string{"/orders", "/refunds"} {
				r := s.Send(s.Client, path, uuid.NewString(), "x", "X-User: dave")
				require.Equal(t, http.StatusBadRequest, r.Status)
				assert.Equal(t, idem.ProblemUnknownCaller, r.Problem(t).Type)
			}
		}
		assert.Zero(t, s.Calls.Load())
		warnings := logs.at(slog.LevelWarn, "")
		require.Len(t, warnings, 2, "one warning per route for 40 refused requests")
		routes := []string{warnings[0].attrs["route"], warnings[1].attrs["route"]}
		assert.ElementsMatch(t, []string{"/orders", "/refunds"}, routes)
		for _, w := range warnings {
			assert.Contains(t, w.msg, "after the authentication middleware", "it says what to change")
			assert.Contains(t, w.msg, "ScopeFromContext")
		}
	})
}

// TestSpec33_AnAnswerWrittenOutsideWarnsOncePerRoute: a keyed handler that
// writes nothing while a middleware mounted outside the idempotency
// middleware writes the answer (a renderer of c.Errors, a response
// envelope) loses idempotency: the key is released, so each retry runs the
// handler again. That is logged at warn level once per route, on every
// store. Mounted inside, the same middleware's answer is recorded and
// replayed, and nothing is logged.
func TestSpec33_AnAnswerWrittenOutsideWarnsOncePerRoute(t *testing.T) {
	errorRenderer := func(c *gin.Context) { // the common Gin pattern: handlers call c.Error
		c.Next()
		if err := c.Errors.Last(); err != nil && !c.Writer.Written() {
			c.JSON(http.StatusUnprocessableEntity, gin.H{"error": err.Error()})
		}
	}
	envelope := func(c *gin.Context) { // handlers set "data"; the envelope writes it
		c.Next()
		if data, ok := c.Get("data"); ok && !c.Writer.Written() {
			c.JSON(http.StatusCreated, gin.H{"data": data})
		}
	}
	forEachStore(t, func(t *testing.T, h suite.Harness) {
		for _, outer := range []struct {
			name string
			mw   gin.HandlerFunc
			want int
		}{{"error renderer", errorRenderer, http.StatusUnprocessableEntity}, {"response envelope", envelope, http.StatusCreated}} {
			serve := func(t *testing.T, inside bool, logs *logCapture) *suite.Served {
				store, _ := h.New(t)
				return suite.Mount(t, func(r *gin.Engine, s *suite.Served) {
					r.Use(userAuth)
					mw := idem.New(idem.WithStore(store), idem.WithScope(idem.ScopeFromContext("user_id")), idem.WithLogger(logs.logger()))
					if inside {
						r.Use(mw, outer.mw)
					} else {
						r.Use(outer.mw, mw)
					}
					r.POST("/orders", func(c *gin.Context) {
						n := s.Calls.Add(1)
						_ = c.Error(errors.New("order " + strconv.Itoa(int(n)) + " rejected"))
						c.Set("data", n)
					})
				})
			}
			t.Run("spec33/"+outer.name+" outside: one warning per route", func(t *testing.T) {
				logs := &logCapture{}
				s := serve(t, false, logs)
				key := uuid.NewString()
				for range 10 {
					assert.Equal(t, outer.want, s.Send(s.Client, "/orders", key, "x", "X-User: erin").Status)
				}
				assert.Equal(t, int32(10), s.Calls.Load(), "each retry ran the handler again: the reason for the warning")
				warnings := logs.at(slog.LevelWarn, "")
				require.Len(t, warnings, 1)
				assert.Equal(t, "/orders", warnings[0].attrs["route"])
				assert.Contains(t, warnings[0].msg, "wrote no response")
				assert.Contains(t, warnings[0].msg, "mount it inside")
			})
			t.Run("spec33/"+outer.name+" inside: recorded and replayed, no warning", func(t *testing.T) {
				logs := &logCapture{}
				s := serve(t, true, logs)
				key := uuid.NewString()
				first := s.Send(s.Client, "/orders", key, "x", "X-User: erin")
				assert.Equal(t, outer.want, first.Status)
				again := s.Send(s.Client, "/orders", key, "x", "X-User: erin")
				assert.True(t, again.Replayed())
				assert.Equal(t, first.Body, again.Body)
				assert.Equal(t, int32(1), s.Calls.Load())
				assert.Empty(t, logs.at(slog.LevelWarn, ""))
			})
		}
	})
}

// TestSpec32_AnOpenCircuitIsNotALogFlood: while the breaker is open, each
// refused request is logged at debug level only, and a summary line says
// how many were refused, so N refused requests make O(1) warnings and
// errors; the metrics count every refusal. On every store, through a
// wrapper whose acquisitions fail on demand (the breaker is on for it,
// even over a MemoryStore).
func TestSpec32_AnOpenCircuitIsNotALogFlood(t *testing.T) {
	const refused = 100
	forEachStore(t, func(t *testing.T, h suite.Harness) {
		for _, failOpen := range []bool{false, true} {
			name, want, summary := "spec32/fail closed", http.StatusServiceUnavailable, "idempotency: store circuit open: keyed requests refused"
			opts := []idem.Option{}
			if failOpen {
				name, want, summary = "spec32/fail open", http.StatusCreated, "idempotency: store circuit open: keyed requests run without idempotency"
				opts = append(opts, idem.WithFailOpen())
			}
			t.Run(name, func(t *testing.T) {
				var cs *suite.CountingStore
				logs, metrics := &logCapture{}, promidem.New()
				a := suite.NewApp(t, suite.Counted(h, &cs), append(opts, idem.WithCircuitBreaker(3, time.Hour),
					idem.WithLogger(logs.logger()), metrics.Option())...)
				cs.Fail.Store(true)
				for range 3 {
					a.Do(suite.Post("/things", uuid.NewString(), "x"))
				}
				require.Len(t, logs.at(slog.LevelInfo, "idempotency: store circuit open"), 1, "the breaker opened")
				logs.reset()

				for range refused {
					assert.Equal(t, want, a.Do(suite.Post("/things", uuid.NewString(), "x")).Status)
				}
				loud := logs.at(slog.LevelWarn, "")
				require.Len(t, loud, 1, "%d refused requests, one line at warn or error: %v", refused, loud)
				assert.True(t, strings.HasPrefix(loud[0].msg, summary), loud[0].msg)
				assert.Equal(t, "1", loud[0].attrs["refused"], "the first refusal of an outage is said at once")
				assert.Len(t, logs.at(slog.LevelDebug, "idempotency: store_error"), refused, "each refused request at debug level")
				assert.Equal(t, float64(refused), refusedCount(t, metrics), "every refusal counted")
			})
		}
	})
}

// TestSpec32_TheSummaryCountsEveryRefusal: when the circuit closes, the
// refusals not yet summarized are logged before the change of state, so
// the summary lines add up to every request the open circuit refused, as
// the metrics count them, on every store.
func TestSpec32_TheSummaryCountsEveryRefusal(t *testing.T) {
	forEachStore(t, func(t *testing.T, h suite.Harness) {
		var cs *suite.CountingStore
		logs, metrics, ev := &logCapture{}, promidem.New(), suite.NewEvents()
		a := suite.NewApp(t, suite.Counted(h, &cs), idem.WithCircuitBreaker(2, 50*time.Millisecond),
			idem.WithLogger(logs.logger()), idem.WithEventHook(promidem.Chain(metrics.Hook(), ev.Hook)))
		cs.Fail.Store(true)
		for range 2 {
			a.Do(suite.Post("/things", uuid.NewString(), "x"))
		}
		ev.WaitFor(t, idem.EventBreakerOpen)
		for range 30 {
			a.Do(suite.Post("/things", uuid.NewString(), "x"))
		}
		cs.Fail.Store(false)
		require.EventuallyWithT(t, func(c *assert.CollectT) {
			assert.Equal(c, http.StatusCreated, a.Do(suite.Post("/things", uuid.NewString(), "x")).Status)
		}, 10*time.Second, 10*time.Millisecond)
		ev.WaitFor(t, idem.EventBreakerClosed)

		refusals := 0
		for _, e := range ev.All() {
			if errors.Is(e.Err, idem.ErrCircuitOpen) {
				refusals++
			}
		}
		require.GreaterOrEqual(t, refusals, 1)
		total := 0
		summaries := logs.at(slog.LevelError, "idempotency: store circuit open: keyed requests refused")
		for _, line := range summaries {
			n, err := strconv.Atoi(line.attrs["refused"])
			require.NoError(t, err)
			total += n
		}
		assert.Equal(t, refusals, total, "the summary lines add up to every refusal")
		assert.LessOrEqual(t, len(summaries), 3, "a summary at the first refusal, at most one every 10 s, and one as the circuit closes")
		assert.Equal(t, float64(refusals), refusedCount(t, metrics))
	})
}

// TestSpec33_InFlightRetryAfterFromTheLease: a duplicate of a request in
// flight gets 409 with Retry-After 1 while the holder renews its lease. A
// lease that was not renewed (its holder crashed) answers with the time
// left on it, rounded up and at least 1 s, and the detail says the holder
// may have stopped, on every store. On Postgres, where the transaction's
// lock holds the key after its lease ran out, the answer says that too.
func TestSpec33_InFlightRetryAfterFromTheLease(t *testing.T) {
	forEachStore(t, func(t *testing.T, h suite.Harness) {
		t.Run("spec33/Retry-After counts down a lease not renewed", func(t *testing.T) {
			a := suite.NewApp(t, h) // a lease of one minute, renewed every 20 s of real time
			first := a.Async(suite.Post("/slow", suite.Key1, "x"))
			a.WaitEntered(1)

			r := a.DoBounded(suite.Post("/slow", suite.Key1, "x"))
			require.Equal(t, http.StatusConflict, r.Status)
			assert.Equal(t, "1", r.Header.Get("Retry-After"), "a holder that renews: a short hint")
			p := r.Problem(t)
			assert.Equal(t, idem.ProblemInFlight, p.Type)
			assert.NotContains(t, p.Detail, "stopped")

			a.Advance(40 * time.Second) // 20 s left, and no renewal: the holder looks dead
			r = a.DoBounded(suite.Post("/slow", suite.Key1, "x"))
			require.Equal(t, http.StatusConflict, r.Status)
			// 20 s, give or take the time between the clocks' readings (on
			// Postgres, the database's clock is read after the store's).
			assert.Contains(t, []string{"19", "20", "21"}, r.Header.Get("Retry-After"), "the time left on the lease")
			p = r.Problem(t)
			assert.Equal(t, idem.ProblemInFlight, p.Type)
			assert.Contains(t, p.Detail, "may have stopped")

			a.Advance(19*time.Second + 500*time.Millisecond) // under a second left
			r = a.DoBounded(suite.Post("/slow", suite.Key1, "x"))
			require.Equal(t, http.StatusConflict, r.Status)
			assert.Equal(t, "1", r.Header.Get("Retry-After"), "rounded up: at least 1 s")
			assert.Contains(t, r.Problem(t).Detail, "may have stopped")

			a.Open()
			assert.Equal(t, http.StatusCreated, suite.Recv(t, first).Status)
			assert.Equal(t, int32(1), a.Calls.Load())
		})
		if !h.Tx {
			return // elsewhere a key whose lease ran out is free: a retry runs (SPEC 10)
		}
		t.Run("spec33/a lease past its end while the transaction holds the key", func(t *testing.T) {
			store, advance := h.New(t)
			gate, entered := make(chan struct{}), make(chan struct{}, 1)
			s := suite.Mount(t, func(r *gin.Engine, s *suite.Served) {
				r.Use(userAuth, idem.New(idem.WithStore(store), idem.WithScope(idem.ScopeFromContext("user_id"))))
				r.POST("/orders", func(c *gin.Context) {
					_, err := pgstore.Tx(c).Exec(c.Request.Context(), "SELECT 1") // the transaction's lock now holds the key
					if err != nil {
						c.String(http.StatusInternalServerError, err.Error())
						return
					}
					entered <- struct{}{}
					<-gate
					s.Create(c)
				})
			})
			var opened sync.Once
			open := func() { opened.Do(func() { close(gate) }) }
			t.Cleanup(open) // before the server closes, which waits for the handler
			done := make(chan suite.Resp, 1)
			go func() { done <- s.Send(s.NewClient(), "/orders", suite.Key1, "x", "X-User: frank") }()
			select {
			case <-entered:
			case <-time.After(10 * time.Second):
				t.Fatal("the handler was not entered")
			}
			advance(time.Minute + 5*time.Second)
			r := s.Send(s.Client, "/orders", suite.Key1, "x", "X-User: frank")
			require.Equal(t, http.StatusConflict, r.Status, r.Body)
			assert.Equal(t, "1", r.Header.Get("Retry-After"))
			p := r.Problem(t)
			assert.Equal(t, idem.ProblemInFlight, p.Type)
			assert.Contains(t, p.Detail, "lease ran out")
			assert.Contains(t, p.Detail, "may have stopped")
			open()
			assert.Equal(t, http.StatusCreated, suite.Recv(t, done).Status)
			assert.Equal(t, int32(1), s.Calls.Load())
		})
	})
}
