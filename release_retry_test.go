package idempotency_test

import (
	"context"
	"errors"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	idem "github.com/ginidem/idempotency"
	"github.com/ginidem/idempotency/internal/suite"
)

// downStore is a store whose Release and Complete fail while down is set,
// as a store that is down would: any Store the middleware has no special
// knowledge of.
type downStore struct {
	idem.Store
	down atomic.Bool
}

var errDownStore = errors.New("test: the store is down")

func (s *downStore) Release(ctx context.Context, key, token string) error {
	if s.down.Load() {
		return errDownStore
	}
	return s.Store.Release(ctx, key, token)
}

func (s *downStore) Complete(ctx context.Context, key, token string, rec *idem.Record, ttl time.Duration) error {
	if s.down.Load() {
		return errDownStore
	}
	return s.Store.Complete(ctx, key, token, rec, ttl)
}

// TestSpec22_FailedReleaseIsRetriedOnEveryStore: on a store of any kind, a
// release that failed (a 5xx answered while the store is down) is retried
// in the background, so the key is free within seconds of the store's
// return rather than locked for the rest of its 30 s lease.
func TestSpec22_FailedReleaseIsRetriedOnEveryStore(t *testing.T) {
	store := &downStore{Store: idem.NewMemoryStore()}
	var runs atomic.Int32
	ev := suite.NewEvents()
	svc := newOutageService(t, store, &runs, nil, idem.WithLease(30*time.Second), idem.WithEventHook(ev.Hook))
	hc := newHTTPClient(t)

	store.down.Store(true)
	svc.status.Store(http.StatusInternalServerError)
	assert.Equal(t, http.StatusInternalServerError, postOrder(hc, svc.srv, redisHTTPKey).status)
	ev.WaitFor(t, idem.EventStoreError)
	store.down.Store(false)

	svc.status.Store(http.StatusCreated)
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.Equal(c, http.StatusCreated, postOrder(hc, svc.srv, redisHTTPKey).status)
	}, 5*time.Second, 20*time.Millisecond, "the release is retried once the store answers, not left for the 30 s lease")
	assert.Equal(t, int32(2), runs.Load())
}

// TestSpec22_BackgroundRetriesEnd: the releases and completions retried in
// the background, on any store and on Redis across a restart, end once the
// store answers, and within their bound when it never does: no goroutine
// is left behind.
func TestSpec22_BackgroundRetriesEnd(t *testing.T) {
	before := goleak.IgnoreCurrent()
	t.Run("every store/release and completion retried until the store answers", func(t *testing.T) {
		store := &downStore{Store: idem.NewMemoryStore()}
		var runs atomic.Int32
		ev := suite.NewEvents()
		svc := newOutageService(t, store, &runs, nil, idem.WithLease(30*time.Second), idem.WithEventHook(ev.Hook))
		hc := newHTTPClient(t)
		store.down.Store(true)
		assert.Equal(t, http.StatusCreated, postOrder(hc, svc.srv, redisHTTPKey).status)
		ev.WaitFor(t, idem.EventStoreError)
		svc.status.Store(http.StatusInternalServerError)
		assert.Equal(t, http.StatusInternalServerError, postOrder(hc, svc.srv, suite.Key2).status)
		ev.WaitFor(t, idem.EventStoreError)
		store.down.Store(false)
		waitForAll(t, ev, idem.EventCompleted, idem.EventReleased)
		assert.True(t, postOrder(hc, svc.srv, redisHTTPKey).replayed())
	})
	t.Run("every store/a release the store never confirms ends with its lease", func(t *testing.T) {
		store := &downStore{Store: idem.NewMemoryStore()}
		store.down.Store(true)
		var runs atomic.Int32
		ev := suite.NewEvents()
		svc := newOutageService(t, store, &runs, nil, idem.WithLease(100*time.Millisecond), idem.WithEventHook(ev.Hook))
		svc.status.Store(http.StatusInternalServerError)
		assert.Equal(t, http.StatusInternalServerError, postOrder(newHTTPClient(t), svc.srv, redisHTTPKey).status)
		ev.WaitFor(t, idem.EventStoreError)
	})
	t.Run("redis/release and completion across a restart", func(t *testing.T) {
		srv := startAOFRedis(t)
		store := idem.NewRedisStore(newRedisClient(t, srv.addr))
		var runs atomic.Int32
		gate := make(chan struct{})
		ev := suite.NewEvents()
		opts := []idem.Option{idem.WithStoreTimeout(200 * time.Millisecond), idem.WithLease(time.Second), idem.WithEventHook(ev.Hook)}
		kept := newOutageService(t, store, &runs, gate, opts...)
		failed := newOutageService(t, store, &runs, gate, opts...)
		failed.status.Store(http.StatusInternalServerError)
		hc := newHTTPClient(t)
		answers := make(chan redisResp, 2)
		go func() { answers <- postOrder(hc, kept.srv, redisHTTPKey) }()
		ev.WaitFor(t, idem.EventAcquired)
		go func() { answers <- postOrder(hc, failed.srv, suite.Key2) }()
		ev.WaitFor(t, idem.EventAcquired)
		srv.Stop()
		close(gate)
		recvRedis(t, answers)
		recvRedis(t, answers)
		require.NoError(t, srv.Start())
		waitForAll(t, ev, idem.EventCompleted)
		admin := newRedisClient(t, srv.addr)
		require.EventuallyWithT(t, func(c *assert.CollectT) {
			n, err := admin.Exists(storeCtx(t), "idem:{"+eventKey(t, suite.Key2)+"}").Result()
			assert.NoError(c, err)
			assert.Zero(c, n, "the failed release is retried")
		}, 5*time.Second, 20*time.Millisecond)
	})
	t.Run("redis/a completion Redis never confirms ends at its retry limit", func(t *testing.T) {
		srv := startAOFRedis(t)
		var runs atomic.Int32
		gate := make(chan struct{})
		ev := suite.NewEvents()
		svc := newOutageService(t, idem.NewRedisStore(newRedisClient(t, srv.addr)), &runs, gate,
			idem.WithStoreTimeout(50*time.Millisecond), idem.WithLease(100*time.Millisecond), idem.WithEventHook(ev.Hook))
		answer := make(chan redisResp, 1)
		go func() { answer <- postOrder(newHTTPClient(t), svc.srv, redisHTTPKey) }()
		ev.WaitFor(t, idem.EventAcquired)
		srv.Stop()
		close(gate)
		assert.Equal(t, http.StatusCreated, recvRedis(t, answer).status)
		ev.WaitFor(t, idem.EventLostLease) // given up after 10 leases
	})
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.NoError(c, goleak.Find(before))
	}, 10*time.Second, 50*time.Millisecond, "a background retry outlived its bound")
}

// waitForAll waits until events of each kind have arrived, in any order.
func waitForAll(t *testing.T, ev *suite.Events, kinds ...idem.EventKind) {
	t.Helper()
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		for _, k := range kinds {
			assert.Contains(c, ev.Kinds(), k)
		}
	}, 10*time.Second, 10*time.Millisecond)
}
