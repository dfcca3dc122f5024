package idempotency_test

import (
	"context"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	idem "github.com/ginidem/idempotency"
	"github.com/ginidem/idempotency/internal/suite"
)

// The faults production Redis has: a stalled process, a failover's write
// pause, a full memory. Each test runs on a redis-server of its own.

// redisPID returns the process id of the server behind client.
func redisPID(t *testing.T, client *redis.Client) int {
	t.Helper()
	info, err := client.Info(context.Background(), "server").Result()
	require.NoError(t, err)
	for _, line := range strings.Split(info, "\r\n") {
		if v, ok := strings.CutPrefix(line, "process_id:"); ok {
			pid, err := strconv.Atoi(v)
			require.NoError(t, err)
			return pid
		}
	}
	t.Fatal("INFO server has no process_id")
	return 0
}

// TestSpec22_TimedOutAcquisitionIsReleased: with Redis stalled (SIGSTOP),
// a keyed request gets 503 at its deadline, but its acquisition runs when
// Redis wakes. The store releases it with its token as soon as Redis
// answers, so a retry right after runs once, instead of 409 for a lease.
func TestSpec22_TimedOutAcquisitionIsReleased(t *testing.T) {
	srv := startRedisServer(t)
	client := newRedisClient(t, srv.addr)
	store := idem.NewRedisStore(client)
	var runs, arrived atomic.Int32
	svc := newOrderService(t, store, &runs, &arrived, nil,
		idem.WithStoreTimeout(200*time.Millisecond), idem.WithCircuitBreaker(0, 0))
	hc := newHTTPClient(t)
	require.Equal(t, 201, postOrder(hc, svc.srv, suite.Key2).status, "warm: a connection and a loaded script")

	pid := redisPID(t, client)
	require.NoError(t, syscall.Kill(pid, syscall.SIGSTOP))
	stalled := true
	t.Cleanup(func() {
		if stalled {
			_ = syscall.Kill(pid, syscall.SIGCONT)
		}
	})
	down := postOrder(hc, svc.srv, redisHTTPKey)
	require.NoError(t, down.err)
	assert.Equal(t, 503, down.status)
	require.NoError(t, syscall.Kill(pid, syscall.SIGCONT))
	stalled = false

	ctx := storeCtx(t)
	require.NoError(t, client.Ping(ctx).Err(), "Redis answers again")
	// The queued acquisition has run by now, holding the key with the
	// orphaned token; the store releases it within a second.
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		n, err := client.Exists(ctx, "idem:{"+eventKey(t, redisHTTPKey)+"}").Result()
		assert.NoError(c, err)
		assert.Zero(c, n, "the orphaned acquisition is released")
	}, 5*time.Second, 20*time.Millisecond)
	retry := postOrder(hc, svc.srv, redisHTTPKey)
	assert.Equal(t, 201, retry.status, "the retry runs, instead of 409 for a whole lease")
	assert.Equal(t, int32(2), runs.Load(), "the warm-up and the retry: each key ran once")
}

// eventKey is the store key of an idempotency key sent by postOrder's
// caller ("Bearer alice").
func eventKey(t *testing.T, key string) string {
	t.Helper()
	var got string
	ev := suite.NewEvents()
	r := suite.NewApp(t, suite.MemoryHarness(), idem.WithEventHook(ev.Hook))
	r.Do(suite.Req{Method: http.MethodPost, Path: "/things", Key: key, Body: "x", Auth: "Bearer alice"})
	for _, e := range ev.All() {
		got = e.Key
	}
	require.NotEmpty(t, got)
	return got
}

// TestSpec23_RefusedCompletionIsRetried: the completion is refused while
// the handler's answer goes out (a failover's write pause, an out-of-memory
// answer). The middleware keeps the lease and retries it until it is
// stored: the retry gets the replay and the handler ran once.
func TestSpec23_RefusedCompletionIsRetried(t *testing.T) {
	for _, fault := range []struct {
		name          string
		break_, mend  func(ctx context.Context, admin *redis.Client) error
		mendOnFailure bool // mend after the first failure is seen, not by itself
	}{
		{name: "CLIENT PAUSE WRITE", break_: func(ctx context.Context, admin *redis.Client) error {
			return admin.Do(ctx, "CLIENT", "PAUSE", 1500, "WRITE").Err()
		}, mend: func(context.Context, *redis.Client) error { return nil }},
		{name: "OOM with noeviction", mendOnFailure: true, break_: func(ctx context.Context, admin *redis.Client) error {
			if err := admin.ConfigSet(ctx, "maxmemory-policy", "noeviction").Err(); err != nil {
				return err
			}
			return admin.ConfigSet(ctx, "maxmemory", "1").Err()
		}, mend: func(ctx context.Context, admin *redis.Client) error {
			return admin.ConfigSet(ctx, "maxmemory", "0").Err()
		}},
	} {
		t.Run("spec23/"+fault.name, func(t *testing.T) {
			srv := startRedisServer(t)
			client := newRedisClient(t, srv.addr)
			admin := newRedisClient(t, srv.addr)
			ctx := storeCtx(t)
			var runs, arrived atomic.Int32
			gate := make(chan struct{})
			ev := suite.NewEvents()
			svc := newOrderService(t, idem.NewRedisStore(client), &runs, &arrived, gate,
				idem.WithStoreTimeout(300*time.Millisecond), idem.WithLease(3*time.Second), idem.WithEventHook(ev.Hook))
			hc := newHTTPClient(t)
			first := make(chan redisResp, 1)
			go func() { first <- postOrder(hc, svc.srv, redisHTTPKey) }()
			ev.WaitFor(t, idem.EventAcquired)

			require.NoError(t, fault.break_(ctx, admin))
			close(gate)
			answer := recvRedis(t, first)
			assert.Equal(t, 201, answer.status, "the first client gets its answer")
			ev.WaitFor(t, idem.EventStoreError)
			if fault.mendOnFailure {
				require.NoError(t, fault.mend(ctx, admin))
			}
			ev.WaitFor(t, idem.EventCompleted)

			retry := postOrder(hc, svc.srv, redisHTTPKey)
			assert.True(t, retry.replayed(), "the retry gets the replay")
			assert.Equal(t, answer.body, retry.body)
			assert.Equal(t, int32(1), runs.Load(), "the handler ran once")
		})
	}
}

func recvRedis(t *testing.T, ch <-chan redisResp) redisResp {
	t.Helper()
	select {
	case r := <-ch:
		require.NoError(t, r.err)
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("no response")
		return redisResp{}
	}
}

// TestSpec30_FullRedisWithNoeviction: with Redis full and noeviction, a new
// key gets 503 and its handler does not run, a completed key is still
// replayed, and nothing is lost or run twice once memory is freed.
func TestSpec30_FullRedisWithNoeviction(t *testing.T) {
	srv := startRedisServer(t)
	client := newRedisClient(t, srv.addr)
	admin := newRedisClient(t, srv.addr)
	ctx := storeCtx(t)
	var runs, arrived atomic.Int32
	// No local cache: every replay is answered by Redis itself.
	store := idem.NewRedisStore(client, idem.WithRedisLocalCache(0, 0))
	svc := newOrderService(t, store, &runs, &arrived, nil, idem.WithCircuitBreaker(0, 0))
	hc := newHTTPClient(t)
	done := postOrder(hc, svc.srv, redisHTTPKey)
	require.Equal(t, 201, done.status)

	require.NoError(t, admin.ConfigSet(ctx, "maxmemory-policy", "noeviction").Err())
	require.NoError(t, admin.ConfigSet(ctx, "maxmemory", "1").Err())
	full := postOrder(hc, svc.srv, suite.Key2)
	assert.Equal(t, 503, full.status, "a new key is refused while Redis is full")
	replay := postOrder(hc, svc.srv, redisHTTPKey)
	assert.True(t, replay.replayed(), "a completed key is still replayed")
	assert.Equal(t, done.body, replay.body)

	require.NoError(t, admin.ConfigSet(ctx, "maxmemory", "0").Err())
	assert.Equal(t, 201, postOrder(hc, svc.srv, suite.Key2).status, "the refused key runs once Redis has room")
	assert.True(t, postOrder(hc, svc.srv, suite.Key2).replayed())
	assert.Equal(t, int32(2), runs.Load())
}

// TestSpec23_RedisCompletionRetryIsIdempotent: a completion retried after
// its reply was lost (or to wait for replicas again) finds its own record
// and succeeds, whatever headers the record has; another record under the
// same token is still refused.
func TestSpec23_RedisCompletionRetryIsIdempotent(t *testing.T) {
	forEachRedis(t, func(t *testing.T, client redis.UniversalClient, prefix string, _ func(time.Duration)) {
		ctx := storeCtx(t)
		s := idem.NewRedisStore(client, idem.WithRedisKeyPrefix(prefix), idem.WithRedisLocalCache(0, 0))
		token, _, err := s.Acquire(ctx, "k", testClaim, time.Minute)
		require.NoError(t, err)
		rec := completed(201, `{"id":1}`)
		rec.Header = http.Header{
			"Content-Type": {"application/json"}, "Location": {"/orders/1"},
			"Link": {"<a>", "<b>"}, "Vary": {"Accept-Encoding"}, "Etag": {`"x"`},
		}
		require.NoError(t, s.Complete(ctx, "k", token, rec, time.Hour))
		for range 20 {
			require.NoError(t, s.Complete(ctx, "k", token, rec, time.Hour), "the same record again")
		}
		other := completed(200, `{"id":2}`)
		assert.ErrorIs(t, s.Complete(ctx, "k", token, other, time.Hour), idem.ErrNotOwner, "another record")
	})
}

// TestSpec32_CachedReplaysDuringAnOutage: while Redis is stalled and the
// circuit is open, a replay this instance has cached is still answered, and
// it does not close the circuit in Redis' stead: only a call that reaches
// Redis counts.
func TestSpec32_CachedReplaysDuringAnOutage(t *testing.T) {
	srv := startRedisServer(t)
	client := newRedisClient(t, srv.addr)
	var runs, arrived atomic.Int32
	ev := suite.NewEvents()
	svc := newOrderService(t, idem.NewRedisStore(client), &runs, &arrived, nil,
		idem.WithStoreTimeout(100*time.Millisecond), idem.WithCircuitBreaker(2, 20*time.Millisecond), idem.WithEventHook(ev.Hook))
	hc := newHTTPClient(t)
	first := postOrder(hc, svc.srv, redisHTTPKey)
	require.Equal(t, 201, first.status)

	pid := redisPID(t, client)
	require.NoError(t, syscall.Kill(pid, syscall.SIGSTOP))
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGCONT) })
	for range 2 {
		assert.Equal(t, 503, postOrder(hc, svc.srv, suite.Key2).status)
	}
	ev.WaitFor(t, idem.EventBreakerOpen)
	assert.Never(t, func() bool {
		replay := postOrder(hc, svc.srv, redisHTTPKey)
		return !replay.replayed() || slices.Contains(ev.Kinds(), idem.EventBreakerClosed)
	}, 500*time.Millisecond, 10*time.Millisecond, "cached replays are served and never close the circuit")
	assert.Equal(t, int32(1), runs.Load())
}
