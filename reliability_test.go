package idempotency_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	idem "github.com/ginidem/idempotency"
	"github.com/ginidem/idempotency/internal/suite"
)

// TestSpec24_FloodOfUniqueKeysStaysBounded measures the heap while 100,000
// unique keys with 4 KiB responses go through a memory store bounded to
// 4 MiB: unbounded, that would be 400 MiB.
func TestSpec24_FloodOfUniqueKeysStaysBounded(t *testing.T) {
	const bound = 4 << 20
	store := idem.NewMemoryStore(idem.WithMaxBytes(bound))
	ctx := context.Background()
	body := make([]byte, 4096)
	heap := func() uint64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	before := heap()
	for i := range 100_000 {
		key := fmt.Sprintf("%064d", i)
		token, _, err := store.Acquire(ctx, key, testClaim, time.Minute)
		require.NoError(t, err)
		rec := &idem.Record{State: idem.Completed, Status: 201, Body: append([]byte(nil), body...)}
		require.NoError(t, store.Complete(ctx, key, token, rec, time.Hour))
	}
	grown := int64(heap()) - int64(before)
	assert.LessOrEqual(t, store.Bytes(), int64(bound))
	assert.Less(t, grown, int64(3*bound), "heap grew by %d bytes", grown)
	t.Logf("heap growth after 100,000 keys: %d KiB, store holds %d records in %d KiB", grown>>10, store.Len(), store.Bytes()>>10)
}

// TestSpec10_NoGoroutineOutlivesItsRequest: leases, renewals and the memory
// store leave no goroutine behind once the server is idle.
func TestSpec10_NoGoroutineOutlivesItsRequest(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	a := suite.NewApp(t, suite.MemoryHarness(), idem.WithLease(30*time.Millisecond))
	first := a.Async(suite.Post("/slow", suite.Key1, "x"))
	a.WaitEntered(1)
	a.Do(suite.Post("/things", suite.Key2, "x"))
	a.Do(suite.Post("/things", suite.Key2, "x"))
	a.Open()
	suite.Recv(t, first)
	a.Srv.Close()
	a.Srv.Client().CloseIdleConnections()
}

// TestSpec22_NoGoroutineLeakAfterRedisFaults: Redis restarted, then paused
// beyond the call deadline, under a running service: each time the
// configured answer (503), then recovery, and once everything is closed no
// goroutine is left behind.
func TestSpec22_NoGoroutineLeakAfterRedisFaults(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	t.Run("restart and pause", func(t *testing.T) {
		srv := startRedisServer(t) // skips without redis-server: pausing needs a real one
		client := newRedisClient(t, srv.addr)
		var runs, arrived atomic.Int32
		store := idem.NewRedisStore(client, idem.WithRedisLocalCache(0, 0))
		svc := newOrderService(t, store, &runs, &arrived, nil, idem.WithStoreTimeout(200*time.Millisecond))
		httpClient := newHTTPClient(t)
		works := func(key string) {
			t.Helper()
			require.EventuallyWithT(t, func(c *assert.CollectT) {
				assert.Equal(c, http.StatusCreated, postOrder(httpClient, svc.srv, key).status)
			}, 10*time.Second, 20*time.Millisecond)
		}
		refused := func(key string) {
			t.Helper()
			var r redisResp
			noHang(t, 10*time.Second, func() { r = postOrder(httpClient, svc.srv, key) })
			assert.Equal(t, http.StatusServiceUnavailable, r.status)
		}
		works(uuid.NewString())

		srv.Stop()
		refused(uuid.NewString())
		require.NoError(t, srv.Start())
		works(uuid.NewString())

		admin := newRedisClient(t, srv.addr)
		require.NoError(t, admin.Do(storeCtx(t), "CLIENT", "PAUSE", 3000, "ALL").Err())
		refused(uuid.NewString())
		require.NoError(t, admin.Do(storeCtx(t), "CLIENT", "UNPAUSE").Err())
		works(uuid.NewString())
	})
}

// stuckStore's Extend never answers before its deadline, as a store that is
// down or paused; the first one to time out closes expired.
type stuckStore struct {
	idem.Store
	extends atomic.Int32
	expired chan struct{}
	once    sync.Once
}

func (s *stuckStore) Extend(ctx context.Context, _, _ string, _ time.Duration) error {
	s.extends.Add(1)
	<-ctx.Done()
	s.once.Do(func() { close(s.expired) })
	return ctx.Err()
}

// TestSpec22_SlowRenewalsDoNotQueue: while a renewal hangs in the store,
// the ticks that come due do not queue more renewals behind it, so a
// finished handler waits for one store call at most, not for a backlog of
// them.
func TestSpec22_SlowRenewalsDoNotQueue(t *testing.T) {
	stuck := &stuckStore{Store: idem.NewMemoryStore(), expired: make(chan struct{})}
	h := suite.Harness{Name: "stuck", New: func(*testing.T) (idem.Store, func(time.Duration)) { return stuck, nil }}
	// Ticks every 5 ms; each stuck call's 60 ms deadline spans about a dozen.
	a := suite.NewApp(t, h, idem.WithLease(30*time.Millisecond), idem.WithStoreTimeout(60*time.Millisecond))
	first := a.Async(suite.Post("/slow", suite.Key1, "x"))
	a.WaitEntered(1)
	select {
	case <-stuck.expired:
	case <-time.After(10 * time.Second):
		t.Fatal("no renewal reached the store")
	}
	before := stuck.extends.Load()
	a.Open()
	assert.Equal(t, http.StatusCreated, suite.Recv(t, first).Status)
	assert.LessOrEqual(t, stuck.extends.Load()-before, int32(2), "renewals queued behind the stuck ones")
}

// suffixStore is a store decorator that adds a line to each replayed body,
// as a signature or a trailer would: it appends to the Body of the record
// the store returned. The first replay writes its answer only once the
// second one has appended its own line.
type suffixStore struct {
	idem.Store
	replays              atomic.Int32
	appended1, appended2 chan struct{}
}

func (s *suffixStore) Acquire(ctx context.Context, key string, claim *idem.Record, lease time.Duration) (string, *idem.Record, error) {
	token, held, err := s.Store.Acquire(ctx, key, claim, lease)
	if err != nil || held == nil || held.State != idem.Completed {
		return token, held, err
	}
	n := s.replays.Add(1)
	signed := *held
	signed.Body = append(held.Body, fmt.Sprintf("\nreplay %d", n)...)
	switch n {
	case 1:
		close(s.appended1)
		<-s.appended2
	case 2:
		close(s.appended2)
	}
	return token, &signed, nil
}

// TestSpec27_ConcurrentReplaysDoNotShareBodyBytes: two replays of one
// record from a MemoryStore, each extended by a decorator, each get their
// own body: the record's body has no spare capacity for one append to
// write into and the other to overwrite.
func TestSpec27_ConcurrentReplaysDoNotShareBodyBytes(t *testing.T) {
	store := &suffixStore{Store: idem.NewMemoryStore(), appended1: make(chan struct{}), appended2: make(chan struct{})}
	h := suite.Harness{Name: "suffix", New: func(*testing.T) (idem.Store, func(time.Duration)) { return store, nil }}
	a := suite.NewApp(t, h)
	first := a.Do(suite.Post("/things", suite.Key1, "x"))
	require.Equal(t, http.StatusCreated, first.Status)
	replay1 := a.Async(suite.Post("/things", suite.Key1, "x"))
	select {
	case <-store.appended1:
	case <-time.After(10 * time.Second):
		t.Fatal("the first replay did not reach the store")
	}
	replay2 := a.DoBounded(suite.Post("/things", suite.Key1, "x"))
	r1 := suite.Recv(t, replay1)
	assert.Equal(t, first.Body+"\nreplay 1", r1.Body, "the second replay's line overwrote the first's")
	assert.Equal(t, first.Body+"\nreplay 2", replay2.Body)
	assert.True(t, r1.Replayed() && replay2.Replayed())
	assert.Equal(t, int32(1), a.Calls.Load())
}

// TestSpec26_LostLeaseSaysTheLeaseMayHaveExpired: a lease that ran out,
// whose key an operator then forgot, is reported as lost_lease with
// ErrNotOwner, whose text does not claim that another request took it. (A
// lease that merely ran out while nobody took the key loses nothing: its
// completion lands, SPEC 23.)
func TestSpec26_LostLeaseSaysTheLeaseMayHaveExpired(t *testing.T) {
	var cs *suite.CountingStore
	ev := suite.NewEvents()
	a := suite.NewApp(t, suite.Counted(suite.MemoryHarness(), &cs), idem.WithLease(300*time.Millisecond), idem.WithEventHook(ev.Hook))
	refused := make(chan struct{}, 100)
	cs.OnExtend = func() { refused <- struct{}{} }
	first := a.Async(suite.Post("/slow", suite.Key1, "x"))
	a.WaitEntered(1)
	acquired := ev.WaitFor(t, idem.EventAcquired)
	a.Advance(time.Minute) // the store's clock passes the lease before the first renewal
	select {
	case <-refused: // the renewal found the lease expired
	case <-time.After(10 * time.Second):
		t.Fatal("no renewal reached the store")
	}
	require.NoError(t, cs.Delete(context.Background(), acquired.Key)) // an operator forgets the key
	a.Open()
	suite.Recv(t, first)
	lost := ev.WaitFor(t, idem.EventLostLease)
	require.ErrorIs(t, lost.Err, idem.ErrNotOwner)
	assert.Contains(t, lost.Err.Error(), "expired")
	assert.NotContains(t, lost.Err.Error(), "lost to another request")
	assert.False(t, a.Do(suite.Post("/slow", suite.Key1, "x")).Replayed(), "nothing was stored")
}

// TestSpec22_NoGoroutineLeakAfterRedisBackgroundWork: with Redis stalled
// (SIGSTOP), one request's completion times out and is retried in the
// background, and another's acquisition times out and is left to the
// store's orphan releases. Once Redis is back, both finish: the completion
// lands and the orphan is released. Once the service, the client and the
// server are closed, no goroutine is left behind.
func TestSpec22_NoGoroutineLeakAfterRedisBackgroundWork(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	t.Run("background completion and orphan release", func(t *testing.T) {
		srv := startRedisServer(t) // skips without redis-server: stalling needs a real one
		client := newRedisClient(t, srv.addr)
		store := idem.NewRedisStore(client, idem.WithRedisLocalCache(0, 0))
		var runs, arrived atomic.Int32
		gate := make(chan struct{})
		ev := suite.NewEvents()
		svc := newOrderService(t, store, &runs, &arrived, gate, idem.WithStoreTimeout(200*time.Millisecond),
			idem.WithCircuitBreaker(0, 0), idem.WithEventHook(ev.Hook), idem.WithLogger(slog.New(slog.DiscardHandler)))
		hc := newHTTPClient(t)
		completed, orphaned := uuid.NewString(), uuid.NewString()
		completedKey, orphanedKey := eventKey(t, completed), eventKey(t, orphaned)
		post := func(key string) <-chan redisResp {
			ch := make(chan redisResp, 1)
			go func() { ch <- postOrder(hc, svc.srv, key) }()
			return ch
		}
		warm := post(uuid.NewString()) // a connection and loaded scripts
		gate <- struct{}{}
		require.Equal(t, http.StatusCreated, recvRedis(t, warm).status)

		first := post(completed)
		ev.WaitForKey(t, idem.EventAcquired, completedKey)
		pid := redisPID(t, client)
		require.NoError(t, syscall.Kill(pid, syscall.SIGSTOP))
		stalled := true
		t.Cleanup(func() {
			if stalled {
				_ = syscall.Kill(pid, syscall.SIGCONT)
			}
		})
		assert.Equal(t, http.StatusServiceUnavailable, recvRedis(t, post(orphaned)).status,
			"the acquisition timed out; it may still run when Redis wakes")
		gate <- struct{}{}
		assert.Equal(t, http.StatusCreated, recvRedis(t, first).status, "the first client gets its answer")
		ev.WaitForKey(t, idem.EventStoreError, completedKey) // the completion goes on in the background
		require.NoError(t, syscall.Kill(pid, syscall.SIGCONT))
		stalled = false

		ev.WaitForKey(t, idem.EventCompleted, completedKey)
		ctx := storeCtx(t)
		require.EventuallyWithT(t, func(c *assert.CollectT) {
			n, err := client.Exists(ctx, "idem:{"+orphanedKey+"}").Result()
			assert.NoError(c, err)
			assert.Zero(c, n, "the orphaned acquisition is released")
		}, 10*time.Second, 20*time.Millisecond)
		assert.True(t, postOrder(hc, svc.srv, completed).replayed())
		retry := post(orphaned)
		gate <- struct{}{}
		assert.Equal(t, http.StatusCreated, recvRedis(t, retry).status)
		assert.Equal(t, int32(3), runs.Load(), "each key ran once")
	})
}
