package idempotency_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/google/uuid"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	idem "github.com/ginidem/idempotency"
	"github.com/ginidem/idempotency/internal/suite"
)

// TestSpec32_CircuitBreaker: after consecutive store failures the middleware
// stops calling the store and answers at once, then probes it and recovers
// by itself; each change is an event.
func TestSpec32_CircuitBreaker(t *testing.T) {
	for _, failOpen := range []bool{false, true} {
		name := "spec32/fail closed: 503 at once"
		opts := []idem.Option{}
		if failOpen {
			name = "spec32/fail open: the handler runs at once"
			opts = append(opts, idem.WithFailOpen())
		}
		t.Run(name, func(t *testing.T) {
			var cs *suite.CountingStore
			ev := suite.NewEvents()
			a := suite.NewApp(t, suite.Counted(suite.MemoryHarness(), &cs), append(opts,
				idem.WithCircuitBreaker(3, 100*time.Millisecond), idem.WithEventHook(ev.Hook))...)
			cs.Fail.Store(true)
			for range 3 {
				a.Do(suite.Post("/things", uuid.NewString(), "x"))
			}
			ev.WaitFor(t, idem.EventBreakerOpen)
			acquires, _, _, _ := cs.Counts()
			require.Equal(t, 3, acquires)

			for range 20 {
				r := a.Do(suite.Post("/things", uuid.NewString(), "x"))
				if failOpen {
					assert.Equal(t, http.StatusCreated, r.Status)
				} else {
					assert.Equal(t, http.StatusServiceUnavailable, r.Status)
					assert.Equal(t, "1", r.Header.Get("Retry-After"))
					assert.Equal(t, idem.ProblemStoreUnavailable, r.Problem(t).Type)
				}
			}
			after, _, _, _ := cs.Counts()
			assert.LessOrEqual(t, after-acquires, 1, "the open circuit calls the store at most for a probe")

			cs.Fail.Store(false)
			require.EventuallyWithT(t, func(c *assert.CollectT) {
				assert.Equal(c, http.StatusCreated, a.Do(suite.Post("/things", uuid.NewString(), "x")).Status)
				assert.Contains(c, ev.Kinds(), idem.EventBreakerClosed)
			}, 5*time.Second, 20*time.Millisecond, "a request probes the store, and the circuit closes")
			key := uuid.NewString()
			a.Do(suite.Post("/things", key, "x"))
			assert.True(t, a.Do(suite.Post("/things", key, "x")).Replayed(), "idempotency is back")
			kinds := ev.Kinds()
			assert.Contains(t, kinds, idem.EventBreakerHalfOpen)
		})
	}
}

func TestSpec32_BreakerOptions(t *testing.T) {
	assert.Panics(t, func() { idem.WithCircuitBreaker(-1, time.Second) })
	assert.Panics(t, func() { idem.WithCircuitBreaker(3, 0) })
	assert.NotPanics(t, func() { idem.WithCircuitBreaker(0, 0) }, "0 turns it off")
}

// faultyStore's acquisitions fail or panic on demand. It wraps a
// MemoryStore but is not one, so the middleware keeps its breaker on.
type faultyStore struct {
	idem.Store
	err      atomic.Pointer[error] // when set, acquisitions fail with it
	panics   atomic.Bool
	acquires atomic.Int32
}

// failWith makes the acquisitions fail with err; nil mends the store.
func (s *faultyStore) failWith(err error) {
	if err == nil {
		s.err.Store(nil)
		return
	}
	s.err.Store(&err)
}

func (s *faultyStore) Acquire(ctx context.Context, key string, claim *idem.Record, lease time.Duration) (string, *idem.Record, error) {
	s.acquires.Add(1)
	if s.panics.Load() {
		panic("idempotency test: a store bug")
	}
	if err := s.err.Load(); err != nil {
		return "", nil, *err
	}
	return s.Store.Acquire(ctx, key, claim, lease)
}

// breakerService serves POST /things behind a recovery and the middleware
// with a breaker that opens after 2 failures and probes every 50 ms.
func breakerService(t *testing.T, store idem.Store, ev *suite.Events) *suite.Served {
	return suite.Mount(t, func(r *gin.Engine, s *suite.Served) {
		r.Use(gin.CustomRecoveryWithWriter(io.Discard, func(c *gin.Context, _ any) { c.AbortWithStatus(http.StatusInternalServerError) }))
		r.Use(idem.New(idem.WithStore(store), idem.WithCircuitBreaker(2, 50*time.Millisecond),
			idem.WithEventHook(ev.Hook), idem.WithLogger(slog.New(slog.DiscardHandler))))
		r.POST("/things", s.Create)
	})
}

// TestSpec32_PanicNeverWedgesTheBreaker: a store whose Acquire panics
// gets a 500 from the recovery for that request, and the breaker counts
// the panic neither way. Closed, panics never open it; half-open, the
// panicking probe does not keep the probe's place, so the next request
// probes again and the circuit closes once the store answers.
func TestSpec32_PanicNeverWedgesTheBreaker(t *testing.T) {
	auth := "Authorization: Bearer u"
	t.Run("spec32/panics never open the circuit", func(t *testing.T) {
		store := &faultyStore{Store: idem.NewMemoryStore()}
		ev := suite.NewEvents()
		s := breakerService(t, store, ev)
		store.panics.Store(true)
		for range 5 {
			assert.Equal(t, http.StatusInternalServerError, s.Send(s.Client, "/things", uuid.NewString(), "x", auth).Status)
		}
		assert.Equal(t, int32(5), store.acquires.Load(), "every request reached the store")
		store.panics.Store(false)
		assert.Equal(t, http.StatusCreated, s.Send(s.Client, "/things", uuid.NewString(), "x", auth).Status)
		assert.NotContains(t, ev.Kinds(), idem.EventBreakerOpen)
	})
	t.Run("spec32/a probe that panics does not wedge the half-open circuit", func(t *testing.T) {
		store := &faultyStore{Store: idem.NewMemoryStore()}
		ev := suite.NewEvents()
		s := breakerService(t, store, ev)
		store.failWith(suite.ErrStoreDown)
		for range 2 {
			assert.Equal(t, http.StatusServiceUnavailable, s.Send(s.Client, "/things", uuid.NewString(), "x", auth).Status)
		}
		ev.WaitFor(t, idem.EventBreakerOpen)

		store.failWith(nil)
		store.panics.Store(true)
		require.EventuallyWithT(t, func(c *assert.CollectT) {
			assert.Equal(c, http.StatusInternalServerError, s.Send(s.Client, "/things", uuid.NewString(), "x", auth).Status)
		}, 5*time.Second, 10*time.Millisecond, "the half-open circuit lets a probe through, and the store panics")

		store.panics.Store(false)
		require.EventuallyWithT(t, func(c *assert.CollectT) {
			assert.Equal(c, http.StatusCreated, s.Send(s.Client, "/things", uuid.NewString(), "x", auth).Status)
		}, 5*time.Second, 10*time.Millisecond, "a later request probes the store again, instead of 503 until a restart")
		ev.WaitFor(t, idem.EventBreakerClosed)
		key := uuid.NewString()
		s.Send(s.Client, "/things", key, "x", auth)
		assert.True(t, s.Send(s.Client, "/things", key, "x", auth).Replayed(), "idempotency is back")
	})
}

// TestSpec32_PoolWaitNeverTripsTheBreaker: a store call that gave up
// waiting for a connection of the application's own pool (an error that
// wraps ErrPoolWait) is queueing, not a store failure: however many there
// are, the circuit stays closed and every request still reaches the store.
func TestSpec32_PoolWaitNeverTripsTheBreaker(t *testing.T) {
	store := &faultyStore{Store: idem.NewMemoryStore()}
	ev := suite.NewEvents()
	s := breakerService(t, store, ev)
	auth := "Authorization: Bearer u"
	store.failWith(fmt.Errorf("pgstore: acquire: %w", idem.ErrPoolWait))
	for range 6 { // three times the breaker's threshold
		assert.NotEqual(t, http.StatusCreated, s.Send(s.Client, "/things", uuid.NewString(), "x", auth).Status)
	}
	assert.Equal(t, int32(6), store.acquires.Load(), "every request reached the store")
	store.failWith(nil)
	assert.Equal(t, http.StatusCreated, s.Send(s.Client, "/things", uuid.NewString(), "x", auth).Status)
	assert.NotContains(t, ev.Kinds(), idem.EventBreakerOpen)
	assert.Equal(t, int32(1), s.Calls.Load())
}

// TestSpec32_CorruptRecordNeverTripsTheBreaker: a record that cannot be
// decoded is that key's problem, not the store's. Retried more often than
// the breaker's failure threshold, it gets 503 each time for what it is (a
// corrupt record), and the circuit stays closed: other keys still work.
func TestSpec32_CorruptRecordNeverTripsTheBreaker(t *testing.T) {
	for _, target := range redisTargets(true) {
		t.Run(target.name+"/spec32/a corrupt record is not a store failure", func(t *testing.T) {
			ctx := storeCtx(t)
			client, prefix, _ := target.open(t)
			store := idem.NewRedisStore(client, idem.WithRedisKeyPrefix(prefix), idem.WithRedisLocalCache(0, 0))
			ev := suite.NewEvents()
			var runs, arrived atomic.Int32
			svc := newOrderService(t, store, &runs, &arrived, nil, idem.WithCircuitBreaker(3, time.Hour),
				idem.WithEventHook(ev.Hook), idem.WithLogger(slog.New(slog.DiscardHandler)))
			hc := newHTTPClient(t)
			require.Equal(t, http.StatusCreated, postOrder(hc, svc.srv, redisHTTPKey).status)
			var keys []string
			require.NoError(t, forEachKey(ctx, client, prefix, func(_ context.Context, _ redis.Cmdable, k string) error {
				keys = append(keys, k)
				return nil
			}))
			require.Len(t, keys, 1)
			require.NoError(t, client.Set(ctx, keys[0], "\x01\x02garbage", time.Hour).Err())

			for range 6 { // twice the breaker's threshold
				r := postOrder(hc, svc.srv, redisHTTPKey)
				require.NoError(t, r.err)
				assert.Equal(t, http.StatusServiceUnavailable, r.status)
			}
			for _, e := range ev.All() {
				if e.Kind == idem.EventStoreError {
					assert.ErrorIs(t, e.Err, idem.ErrCorruptRecord, "the store was called and found the record corrupt")
				}
			}
			other := postOrder(hc, svc.srv, uuid.NewString())
			assert.Equal(t, http.StatusCreated, other.status, "the circuit is closed: other keys work")
			assert.NotContains(t, ev.Kinds(), idem.EventBreakerOpen)
			assert.Equal(t, int32(2), runs.Load())
		})
	}
}
