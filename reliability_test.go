package idempotency_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/google/uuid"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	idem "github.com/ginidem/idempotency"
)

// TestReliability runs the fault cases against every store.
func TestReliability(t *testing.T) { runBehaviours(t, faults) }

var faults = []behaviour{
	{"spec10/1000 requests over 50 keys: each handler runs once", func(t *testing.T, h storeHarness) {
		store, _ := h.new(t)
		var mu sync.Mutex
		runs := map[string]int{}
		r := gin.New()
		r.POST("/pay", idem.New(idem.WithStore(store)), func(c *gin.Context) {
			key := c.GetHeader("Idempotency-Key")
			mu.Lock()
			runs[key]++
			n := runs[key]
			mu.Unlock()
			c.JSON(http.StatusCreated, gin.H{"key": key, "run": n, "pad": strings.Repeat("p", 100)})
		})
		srv := httptest.NewServer(r)
		defer srv.Close()
		keys := make([]string, 50)
		for i := range keys {
			keys[i] = uuid.NewString()
		}
		type answer struct {
			key    string
			status int
			replay bool
			body   string
		}
		answers := make(chan answer, 1000)
		var wg sync.WaitGroup
		for w := range 20 {
			wg.Go(func() {
				for i := range 50 {
					key := keys[(w*7+i)%50]
					hr, _ := http.NewRequest("POST", srv.URL+"/pay", strings.NewReader(`{"amount":1}`))
					hr.Header.Set("Idempotency-Key", key)
					hr.Header.Set("Authorization", defaultAuth)
					res, err := srv.Client().Do(hr)
					if !assert.NoError(t, err) {
						return
					}
					body, _ := io.ReadAll(res.Body)
					res.Body.Close()
					answers <- answer{key, res.StatusCode, res.Header.Get("Idempotent-Replayed") == "true", string(body)}
				}
			})
		}
		wg.Wait()
		close(answers)
		originals := map[string]string{}
		var all []answer
		for a := range answers {
			all = append(all, a)
			if a.status == http.StatusCreated && !a.replay {
				assert.NotContains(t, originals, a.key, "two originals for one key")
				originals[a.key] = a.body
			}
		}
		require.Len(t, all, 1000)
		for _, a := range all {
			switch {
			case a.status == http.StatusCreated && a.replay:
				assert.Equal(t, originals[a.key], a.body, "a replay is byte-identical to the original")
			case a.status == http.StatusCreated, a.status == http.StatusConflict:
			default:
				t.Errorf("unexpected %d: %s", a.status, a.body)
			}
		}
		for _, k := range keys {
			assert.Equal(t, 1, runs[k], "key %s", k)
		}
	}},
	{"spec23/a handler that outlived its lease while nobody took the key: its answer still lands", func(t *testing.T, h storeHarness) {
		ev := newEvents()
		a := newApp(t, h, idem.WithEventHook(ev.hook))
		first := a.async(post("/slow", key1, "x"))
		a.waitEntered(1)
		a.advance(2 * time.Minute) // the lease (1 min) ends before a renewal is due, as in an outage
		a.open()
		answer := recv(t, first)
		assert.Equal(t, http.StatusCreated, answer.status)
		ev.waitFor(t, idem.EventCompleted)
		again := a.do(post("/slow", key1, "x"))
		assert.True(t, again.replayed(), "the answer was stored: a retry gets it, not a second run")
		assert.Equal(t, answer.body, again.body)
		assert.Equal(t, int32(1), a.calls.Load())
	}},
	{"spec12/headers written, then a panic: released, never replayed as complete", func(t *testing.T, h storeHarness) {
		store, _ := h.new(t)
		var calls atomic.Int32
		r := gin.New()
		r.Use(gin.CustomRecoveryWithWriter(io.Discard, func(c *gin.Context, _ any) { c.AbortWithStatus(500) }))
		r.POST("/half", idem.New(idem.WithStore(store)), func(c *gin.Context) {
			if calls.Add(1) == 1 {
				c.Status(http.StatusCreated)
				c.Writer.WriteString(`{"partial":`)
				c.Writer.Flush()
				panic("half way")
			}
			c.String(http.StatusCreated, "whole")
		})
		srv := httptest.NewServer(r)
		defer srv.Close()
		send := func() (int, string, bool) {
			hr, _ := http.NewRequest("POST", srv.URL+"/half", strings.NewReader("x"))
			hr.Header.Set("Idempotency-Key", key1)
			hr.Header.Set("Authorization", defaultAuth)
			res, err := srv.Client().Do(hr)
			if err != nil {
				return 0, "", false // the connection may be cut mid-body
			}
			defer res.Body.Close()
			body, _ := io.ReadAll(res.Body)
			return res.StatusCode, string(body), res.Header.Get("Idempotent-Replayed") == "true"
		}
		send()
		status, body, replayed := send()
		assert.Equal(t, http.StatusCreated, status)
		assert.Equal(t, "whole", body, "the retry ran the handler again")
		assert.False(t, replayed)
		_, body, replayed = send()
		assert.True(t, replayed)
		assert.Equal(t, "whole", body)
		assert.Equal(t, int32(2), calls.Load())
	}},
	{"spec27/a slow body that times out holds no key", func(t *testing.T, h storeHarness) {
		store, _ := h.new(t)
		var calls atomic.Int32
		r := gin.New()
		r.POST("/x", idem.New(idem.WithStore(store)), func(c *gin.Context) {
			calls.Add(1)
			c.String(http.StatusCreated, "ok")
		})
		srv := httptest.NewUnstartedServer(r)
		srv.Config.ReadTimeout = 300 * time.Millisecond
		srv.Start()
		defer srv.Close()
		body, stall := io.Pipe()
		defer stall.Close()
		go stall.Write([]byte("never finished"))
		hr, _ := http.NewRequest("POST", srv.URL+"/x", body)
		hr.ContentLength = 100
		hr.Header.Set("Idempotency-Key", key1)
		hr.Header.Set("Authorization", defaultAuth)
		if res, err := srv.Client().Do(hr); err == nil {
			assert.Equal(t, http.StatusBadRequest, res.StatusCode)
			res.Body.Close()
		}
		hr, _ = http.NewRequest("POST", srv.URL+"/x", strings.NewReader("x"))
		hr.Header.Set("Idempotency-Key", key1)
		hr.Header.Set("Authorization", defaultAuth)
		res, err := srv.Client().Do(hr)
		require.NoError(t, err)
		res.Body.Close()
		assert.Equal(t, http.StatusCreated, res.StatusCode, "the key was never taken")
		assert.Equal(t, int32(1), calls.Load())
	}},
	{"spec6/one caller never receives another's response", func(t *testing.T, h storeHarness) {
		a := newApp(t, h)
		for i := range 20 {
			key := uuid.NewString()
			alice := post("/things", key, "same body")
			alice.auth = "Bearer alice"
			bob := alice
			bob.auth = fmt.Sprintf("Bearer bob-%d", i)
			ra := a.do(alice)
			rb := a.do(bob)
			assert.NotEqual(t, ra.body, rb.body)
			assert.False(t, rb.replayed())
		}
	}},
}

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
	a := newApp(t, memoryHarness(), idem.WithLease(30*time.Millisecond))
	first := a.async(post("/slow", key1, "x"))
	a.waitEntered(1)
	a.do(post("/things", key2, "x"))
	a.do(post("/things", key2, "x"))
	a.open()
	recv(t, first)
	a.srv.Close()
	a.srv.Client().CloseIdleConnections()
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
	h := storeHarness{name: "stuck", new: func(*testing.T) (idem.Store, func(time.Duration)) { return stuck, nil }}
	// Ticks every 5 ms; each stuck call's 60 ms deadline spans about a dozen.
	a := newApp(t, h, idem.WithLease(30*time.Millisecond), idem.WithStoreTimeout(60*time.Millisecond))
	first := a.async(post("/slow", key1, "x"))
	a.waitEntered(1)
	select {
	case <-stuck.expired:
	case <-time.After(10 * time.Second):
		t.Fatal("no renewal reached the store")
	}
	before := stuck.extends.Load()
	a.open()
	assert.Equal(t, http.StatusCreated, recv(t, first).status)
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
	h := storeHarness{name: "suffix", new: func(*testing.T) (idem.Store, func(time.Duration)) { return store, nil }}
	a := newApp(t, h)
	first := a.do(post("/things", key1, "x"))
	require.Equal(t, http.StatusCreated, first.status)
	replay1 := a.async(post("/things", key1, "x"))
	select {
	case <-store.appended1:
	case <-time.After(10 * time.Second):
		t.Fatal("the first replay did not reach the store")
	}
	replay2 := a.doBounded(post("/things", key1, "x"))
	r1 := recv(t, replay1)
	assert.Equal(t, first.body+"\nreplay 1", r1.body, "the second replay's line overwrote the first's")
	assert.Equal(t, first.body+"\nreplay 2", replay2.body)
	assert.True(t, r1.replayed() && replay2.replayed())
	assert.Equal(t, int32(1), a.calls.Load())
}

// TestSpec26_LostLeaseSaysTheLeaseMayHaveExpired: a lease that ran out,
// whose key an operator then forgot, is reported as lost_lease with
// ErrNotOwner, whose text does not claim that another request took it. (A
// lease that merely ran out while nobody took the key loses nothing: its
// completion lands, SPEC 23.)
func TestSpec26_LostLeaseSaysTheLeaseMayHaveExpired(t *testing.T) {
	var cs *countingStore
	ev := newEvents()
	a := newApp(t, counted(memoryHarness(), &cs), idem.WithLease(300*time.Millisecond), idem.WithEventHook(ev.hook))
	refused := make(chan struct{}, 100)
	cs.onExtend = func() { refused <- struct{}{} }
	first := a.async(post("/slow", key1, "x"))
	a.waitEntered(1)
	acquired := ev.waitFor(t, idem.EventAcquired)
	a.advance(time.Minute) // the store's clock passes the lease before the first renewal
	select {
	case <-refused: // the renewal found the lease expired
	case <-time.After(10 * time.Second):
		t.Fatal("no renewal reached the store")
	}
	require.NoError(t, cs.Delete(context.Background(), acquired.Key)) // an operator forgets the key
	a.open()
	recv(t, first)
	lost := ev.waitFor(t, idem.EventLostLease)
	require.ErrorIs(t, lost.Err, idem.ErrNotOwner)
	assert.Contains(t, lost.Err.Error(), "expired")
	assert.NotContains(t, lost.Err.Error(), "lost to another request")
	assert.False(t, a.do(post("/slow", key1, "x")).replayed(), "nothing was stored")
}

// waitForKey waits for an event of kind for the store key key, skipping
// the others.
func (e *events) waitForKey(t *testing.T, kind idem.EventKind, key string) idem.Event {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case ev := <-e.ch:
			if ev.Kind == kind && ev.Key == key {
				return ev
			}
		case <-deadline:
			t.Fatalf("no %s event for %s", kind, key)
			return idem.Event{}
		}
	}
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
		ev := newEvents()
		svc := newOrderService(t, store, &runs, &arrived, gate, idem.WithStoreTimeout(200*time.Millisecond),
			idem.WithCircuitBreaker(0, 0), idem.WithEventHook(ev.hook), idem.WithLogger(slog.New(slog.DiscardHandler)))
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
		ev.waitForKey(t, idem.EventAcquired, completedKey)
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
		ev.waitForKey(t, idem.EventStoreError, completedKey) // the completion goes on in the background
		require.NoError(t, syscall.Kill(pid, syscall.SIGCONT))
		stalled = false

		ev.waitForKey(t, idem.EventCompleted, completedKey)
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
