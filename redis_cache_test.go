package idempotency_test

import (
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	idem "github.com/ginidem/idempotency"
)

// TestRedisLocalCache_ReplaysWithoutRoundTrip: instance A completes a key
// and replays it from its local cache with nothing sent to Redis; instance
// B, which has not seen the record, replays it from Redis (SET NX, then the
// script that reads the record), then from its own cache.
func TestRedisLocalCache_ReplaysWithoutRoundTrip(t *testing.T) {
	srv := startRedisServer(t) // skips without redis-server: miniredis has no commandstats
	clientA, clientB := newRedisClient(t, srv.addr), newRedisClient(t, srv.addr)
	countA, countB := countCommands(clientA), countCommands(clientB)
	var runs, arrived atomic.Int32
	a := newOrderService(t, idem.NewRedisStore(clientA), &runs, &arrived, nil)
	b := newOrderService(t, idem.NewRedisStore(clientB), &runs, &arrived, nil)
	httpClient := newHTTPClient(t)
	const warmKey = "0b0b2e0c-5f4c-4b7e-9a3d-2f1c6e8d9a10" // warms the scripts and B's connection
	require.Equal(t, http.StatusCreated, postOrder(httpClient, a.srv, warmKey).status)
	require.True(t, postOrder(httpClient, b.srv, warmKey).replayed())

	var original redisResp
	assert.Equal(t, sent{2, "evalsha×1 set×1"}, countA.during(func() { original = postOrder(httpClient, a.srv, redisHTTPKey) }),
		"first request: acquire + complete")
	assert.Equal(t, sent{}, countA.during(func() {
		r := postOrder(httpClient, a.srv, redisHTTPKey)
		require.True(t, r.replayed())
		assert.Equal(t, original.body, r.body)
	}), "replay on A: from A's cache")
	assert.Equal(t, sent{2, "evalsha×1 set×1"}, countB.during(func() {
		r := postOrder(httpClient, b.srv, redisHTTPKey)
		require.True(t, r.replayed())
		assert.Equal(t, original.body, r.body)
	}), "replay on B: from Redis")
	assert.Equal(t, sent{}, countB.during(func() { require.True(t, postOrder(httpClient, b.srv, redisHTTPKey).replayed()) }),
		"B cached what it read")
	assert.Equal(t, int32(2), runs.Load(), "the warm-up and the first request")
}

// TestRedisLocalCache_NeverServedAfterTTL: once Redis has expired a record,
// the instance that cached it runs the handler again rather than replay.
func TestRedisLocalCache_NeverServedAfterTTL(t *testing.T) {
	srv := startRedisServer(t) // real time on a real server: miniredis time stands still
	client := newRedisClient(t, srv.addr)
	var runs, arrived atomic.Int32
	const ttl = 300 * time.Millisecond
	a := newOrderService(t, idem.NewRedisStore(client), &runs, &arrived, nil, idem.WithTTL(ttl))
	httpClient := newHTTPClient(t)
	require.Equal(t, http.StatusCreated, postOrder(httpClient, a.srv, redisHTTPKey).status)
	require.True(t, postOrder(httpClient, a.srv, redisHTTPKey).replayed(), "cached while the record lives")
	ctx := storeCtx(t)
	require.Eventually(t, func() bool { return client.DBSize(ctx).Val() == 0 }, 10*time.Second, 10*time.Millisecond,
		"Redis expires the record")
	r := postOrder(httpClient, a.srv, redisHTTPKey)
	assert.False(t, r.replayed(), "the cached copy expired no later than Redis' own")
	assert.Equal(t, int32(2), runs.Load())
}

// TestSpec29_RedisDeleteDropsTheLocalCache: a record this instance serves
// from its local cache is no longer served once deleted.
func TestSpec29_RedisDeleteDropsTheLocalCache(t *testing.T) {
	forEachRedis(t, func(t *testing.T, client redis.UniversalClient, prefix string, _ func(time.Duration)) {
		ctx := storeCtx(t)
		s := idem.NewRedisStore(client, idem.WithRedisKeyPrefix(prefix))
		token, _, err := s.Acquire(ctx, "k", testClaim, time.Minute)
		require.NoError(t, err)
		require.NoError(t, s.Complete(ctx, "k", token, completed(201, "{}"), time.Hour))
		require.NoError(t, client.Del(ctx, prefix+"{k}").Err()) // now only the local cache holds it
		_, held, err := s.Acquire(ctx, "k", testClaim, time.Minute)
		require.NoError(t, err)
		require.NotNil(t, held, "served from the local cache")

		require.NoError(t, s.Delete(ctx, "k"))
		fresh, held, err := s.Acquire(ctx, "k", testClaim, time.Minute)
		require.NoError(t, err)
		assert.Nil(t, held, "the cached copy is gone too")
		assert.NotEmpty(t, fresh)
	})
}

// TestSpec30_LocalCacheStalenessIsBounded: a record Redis has lost (a
// failover without WAIT, a restart without persistence) is replayed from a
// local cache for at most a minute by default, not for the record's 24 h.
func TestSpec30_LocalCacheStalenessIsBounded(t *testing.T) {
	forEachRedis(t, func(t *testing.T, client redis.UniversalClient, prefix string, _ func(time.Duration)) {
		ctx := storeCtx(t)
		clock := newFakeClock()
		s := idem.NewRedisStore(client, idem.WithRedisKeyPrefix(prefix), idem.WithRedisClock(clock.Now))
		token, _, err := s.Acquire(ctx, "k", testClaim, time.Minute)
		require.NoError(t, err)
		require.NoError(t, s.Complete(ctx, "k", token, completed(201, "{}"), 24*time.Hour))
		require.NoError(t, client.Del(ctx, prefix+"{k}").Err()) // Redis lost it
		clock.Advance(59 * time.Second)
		_, held, err := s.Acquire(ctx, "k", testClaim, time.Minute)
		require.NoError(t, err)
		require.NotNil(t, held, "within the bound, the cache still answers")
		clock.Advance(2 * time.Second)
		_, held, err = s.Acquire(ctx, "k", testClaim, time.Minute)
		require.NoError(t, err)
		assert.Nil(t, held, "past a minute the cache asks Redis again, which has no record")
	})
}
