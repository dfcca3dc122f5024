package idempotency_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	idem "github.com/ginidem/idempotency"
)

// redisHarnesses returns the Redis-backed stores for the shared suites: a
// real redis-server (miniredis when the binary is missing) and, when
// IDEM_REDIS_CLUSTER is set, a Redis Cluster. See redis_helpers_test.go.
func redisHarnesses(t *testing.T) []storeHarness {
	t.Helper()
	var hs []storeHarness
	for _, target := range redisTargets(false) {
		hs = append(hs, storeHarness{name: target.name, new: func(t *testing.T) (idem.Store, func(time.Duration)) {
			client, prefix, advance := target.open(t)
			// The local cache's clock moves with Redis' keys, so the suites
			// run with the cache on, as users do.
			var offset atomic.Int64
			clock := func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }
			store := idem.NewRedisStore(client, idem.WithRedisKeyPrefix(prefix), idem.WithRedisClock(clock))
			return store, func(d time.Duration) {
				advance(d)
				offset.Add(int64(d))
			}
		}})
	}
	return hs
}

// forEachRedis runs fn as a subtest on every Redis kind available,
// miniredis included.
func forEachRedis(t *testing.T, fn func(t *testing.T, client redis.UniversalClient, prefix string, advance func(time.Duration))) {
	for _, target := range redisTargets(true) {
		t.Run(target.name, func(t *testing.T) {
			client, prefix, advance := target.open(t)
			fn(t, client, prefix, advance)
		})
	}
}

// noHang runs fn and fails the test if it has not returned within limit:
// a guard against a hung call, not a speed assertion.
func noHang(t *testing.T, limit time.Duration, fn func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn()
	}()
	select {
	case <-done:
	case <-time.After(limit):
		t.Fatalf("the call hung for more than %v", limit)
	}
}

func completed(status int, body string) *idem.Record {
	return &idem.Record{State: idem.Completed, Fingerprint: testClaim.Fingerprint, Method: testClaim.Method,
		Path: testClaim.Path, Status: status, Header: http.Header{"Location": {"/things/1"}}, Body: []byte(body)}
}

func TestNewRedisStore_NilClientPanics(t *testing.T) {
	assert.PanicsWithValue(t, "idempotency: NewRedisStore with a nil client", func() { idem.NewRedisStore(nil) })
}

// TestRedisStore_KeysAndExpiry checks the key layout (one key per record,
// <prefix>{<key>}, so Cluster never needs a cross-slot operation) and that
// leases and lifetimes are Redis' own expiry.
func TestRedisStore_KeysAndExpiry(t *testing.T) {
	const lease, ttl = time.Minute, 24 * time.Hour
	forEachRedis(t, func(t *testing.T, client redis.UniversalClient, prefix string, _ func(time.Duration)) {
		ctx := storeCtx(t)
		s := idem.NewRedisStore(client, idem.WithRedisKeyPrefix(prefix))
		token, _, err := s.Acquire(ctx, "k", testClaim, lease)
		require.NoError(t, err)
		key := prefix + "{k}"
		pttl, err := client.PTTL(ctx, key).Result()
		require.NoError(t, err)
		assert.InDelta(t, lease.Seconds(), pttl.Seconds(), 5, "the lease is the key's PX")

		_, held, err := s.Acquire(ctx, "k", testClaim, lease)
		require.NoError(t, err)
		require.NotNil(t, held)
		assert.Equal(t, token, held.Token)
		assert.WithinDuration(t, time.Now().Add(lease), held.ExpiresAt, 5*time.Second)

		require.NoError(t, s.Extend(ctx, "k", token, 2*lease))
		pttl, err = client.PTTL(ctx, key).Result()
		require.NoError(t, err)
		assert.InDelta(t, (2 * lease).Seconds(), pttl.Seconds(), 5, "Extend sets a new PX")

		require.NoError(t, s.Complete(ctx, "k", token, completed(201, "{}"), ttl))
		pttl, err = client.PTTL(ctx, key).Result()
		require.NoError(t, err)
		assert.InDelta(t, ttl.Seconds(), pttl.Seconds(), 5, "the ttl is the completed record's PX")
		uncached := idem.NewRedisStore(client, idem.WithRedisKeyPrefix(prefix), idem.WithRedisLocalCache(0, 0))
		_, held, err = uncached.Acquire(ctx, "k", testClaim, lease)
		require.NoError(t, err)
		require.NotNil(t, held)
		assert.WithinDuration(t, time.Now().Add(ttl), held.ExpiresAt, 5*time.Second)
		_, held, err = s.Acquire(ctx, "k", testClaim, lease)
		require.NoError(t, err)
		require.NotNil(t, held)
		assert.WithinDuration(t, time.Now().Add(time.Minute), held.ExpiresAt, 5*time.Second,
			"the local cache keeps a record at most a minute (SPEC 30)")

		var keys []string
		require.NoError(t, forEachKey(ctx, client, prefix, func(_ context.Context, _ redis.Cmdable, k string) error {
			keys = append(keys, k)
			return nil
		}))
		assert.Equal(t, []string{key}, keys, "one Redis key per record")
	})
}

// TestSpec15_RedisOversizedRecordIsKeptWithoutBody: a completed record over
// the store's maximum size is kept like a response over the body cap.
func TestSpec15_RedisOversizedRecordIsKeptWithoutBody(t *testing.T) {
	forEachRedis(t, func(t *testing.T, client redis.UniversalClient, prefix string, _ func(time.Duration)) {
		ctx := storeCtx(t)
		s := idem.NewRedisStore(client, idem.WithRedisKeyPrefix(prefix), idem.WithRedisMaxRecordSize(4096))
		token, _, err := s.Acquire(ctx, "k", testClaim, time.Minute)
		require.NoError(t, err)
		require.NoError(t, s.Complete(ctx, "k", token, completed(201, string(bytes.Repeat([]byte("x"), 8192))), time.Hour))
		_, held, err := s.Acquire(ctx, "k", testClaim, time.Minute)
		require.NoError(t, err)
		require.NotNil(t, held)
		assert.True(t, held.BodyOmitted)
		assert.Empty(t, held.Body)
		assert.Equal(t, 201, held.Status)
		assert.Equal(t, "/things/1", held.Header.Get("Location"))
	})
}

// TestSpec25_RedisUnboundedHeadersAreKeptWithoutBody: a completed record
// whose headers the decoder would refuse is kept without its body and with
// its Location alone, so that duplicates get 409 with the Location rather
// than a store failure until the record expires.
func TestSpec25_RedisUnboundedHeadersAreKeptWithoutBody(t *testing.T) {
	tooMany := http.Header{"Location": {"/things/1"}}
	for i := range 100 {
		tooMany[fmt.Sprintf("X-H%d", i)] = []string{"v"}
	}
	cases := map[string]struct {
		header   http.Header
		location []string // what is kept
	}{
		"too many headers":     {tooMany, []string{"/things/1"}},
		"CR LF in a value":     {http.Header{"Location": {"/things/1"}, "X-Bad": {"a\r\nb"}}, []string{"/things/1"}},
		"a non-canonical name": {http.Header{"Location": {"/things/1"}, "x-lower": {"v"}}, []string{"/things/1"}},
		"an invalid Location":  {http.Header{"Location": {"/things/1\n"}}, nil},
		"no Location":          {http.Header{"Bad Name": {"v"}}, nil},
	}
	forEachRedis(t, func(t *testing.T, client redis.UniversalClient, prefix string, _ func(time.Duration)) {
		for name, tc := range cases {
			t.Run(name, func(t *testing.T) {
				ctx := storeCtx(t)
				s := idem.NewRedisStore(client, idem.WithRedisKeyPrefix(prefix))
				rec := completed(201, `{"id":1}`)
				rec.Header = tc.header
				token, _, err := s.Acquire(ctx, name, testClaim, time.Minute)
				require.NoError(t, err)
				require.NoError(t, s.Complete(ctx, name, token, rec, time.Hour))

				uncached := idem.NewRedisStore(client, idem.WithRedisKeyPrefix(prefix), idem.WithRedisLocalCache(0, 0))
				for store, s := range map[string]idem.Store{"from Redis": uncached, "from the local cache": s} {
					_, held, err := s.Acquire(ctx, name, testClaim, time.Minute)
					require.NoError(t, err, store)
					require.NotNil(t, held, store)
					assert.Equal(t, 201, held.Status, store)
					assert.True(t, held.BodyOmitted, store)
					assert.Empty(t, held.Body, store)
					assert.Equal(t, tc.location, held.Header["Location"], store)
					assert.LessOrEqual(t, len(held.Header), 1, store)
				}
			})
		}
	})
}

// assertCorruptRefused: with a value under "k" that is not a record,
// Acquire is an ErrCorruptRecord (never a panic) and the other steps find
// no owner.
func assertCorruptRefused(t *testing.T, ctx context.Context, s idem.Store, token string) {
	t.Helper()
	var err error
	require.NotPanics(t, func() { _, _, err = s.Acquire(ctx, "k", testClaim, time.Minute) })
	assert.ErrorIs(t, err, idem.ErrCorruptRecord)
	assert.ErrorIs(t, s.Complete(ctx, "k", token, completed(200, ""), time.Hour), idem.ErrNotOwner)
	assert.ErrorIs(t, s.Release(ctx, "k", token), idem.ErrNotOwner)
	assert.ErrorIs(t, s.Extend(ctx, "k", token, time.Minute), idem.ErrNotOwner)
}

// TestSpec25_CorruptRecordIsAnError writes garbage, truncated records,
// foreign values, oversized values and other types under a record's key:
// Acquire returns an error wrapping ErrCorruptRecord (never a panic) and
// leaves the value alone; Complete, Release and Extend find no owner.
func TestSpec25_CorruptRecordIsAnError(t *testing.T) {
	forEachRedis(t, func(t *testing.T, client redis.UniversalClient, prefix string, _ func(time.Duration)) {
		ctx := storeCtx(t)
		const maxSize = 64 << 10
		s := idem.NewRedisStore(client, idem.WithRedisKeyPrefix(prefix), idem.WithRedisMaxRecordSize(maxSize))
		key := prefix + "{k}"

		// A real record to truncate, and a real token to try on foreign keys.
		token, _, err := s.Acquire(ctx, "src", testClaim, time.Minute)
		require.NoError(t, err)
		require.NoError(t, s.Complete(ctx, "src", token, completed(201, `{"id":1}`), time.Hour))
		valid, err := client.Get(ctx, prefix+"{src}").Result()
		require.NoError(t, err)

		values := map[string]string{
			"spec25/empty string":          "",
			"spec25/foreign text":          "hello",
			"spec25/foreign json":          `{"state":"completed","status":201}`,
			"spec25/truncated head":        valid[:10],
			"spec25/truncated fields":      valid[:len(valid)/2],
			"spec25/truncated body":        valid[:len(valid)-1],
			"spec25/trailing garbage":      valid + "\x00",
			"spec25/unknown version":       "\x09" + valid[1:],
			"spec25/huge length":           valid[:18] + "\xff\xff\xff\xff\xff\xff\xff\xff\x7f" + valid[19:],
			"spec25/varint overflow":       valid[:18] + string(bytes.Repeat([]byte{0xff}, 12)),
			"spec25/over the maximum size": string(bytes.Repeat([]byte{1}, maxSize+1)),
		}
		for name, value := range values {
			t.Run(name, func(t *testing.T) {
				require.NoError(t, client.Set(ctx, key, value, time.Hour).Err())
				assertCorruptRefused(t, ctx, s, token)
				got, err := client.Get(ctx, key).Result()
				require.NoError(t, err)
				assert.Equal(t, value, got, "the value is left alone")
			})
		}
		t.Run("spec25/a record without expiry", func(t *testing.T) {
			require.NoError(t, client.Set(ctx, key, valid, 0).Err())
			_, _, err := s.Acquire(ctx, "k", testClaim, time.Minute)
			assert.ErrorIs(t, err, idem.ErrCorruptRecord)
		})
		others := map[string]func() error{
			"spec25/a hash under the key": func() error { return client.HSet(ctx, key, "state", "1").Err() },
			"spec25/a list under the key": func() error { return client.RPush(ctx, key, "a", "b").Err() },
			"spec25/a set under the key":  func() error { return client.SAdd(ctx, key, "a").Err() },
		}
		for name, write := range others {
			t.Run(name, func(t *testing.T) {
				require.NoError(t, client.Del(ctx, key).Err())
				require.NoError(t, write())
				assertCorruptRefused(t, ctx, s, token)
				typ, err := client.Type(ctx, key).Result()
				require.NoError(t, err)
				assert.NotEqual(t, "string", typ, "the value is left alone")
			})
		}
		t.Run("spec27/other keys are untouched", func(t *testing.T) {
			_, held, err := s.Acquire(ctx, "src", testClaim, time.Minute)
			require.NoError(t, err)
			require.NotNil(t, held)
			assert.Equal(t, []byte(`{"id":1}`), held.Body)
		})
	})
}

// TestSpec23_RedisFencingAcrossClients: two clients stand for two
// processes. The first one's lease runs out (its process died); the second
// acquires the key with a new token, and the first can neither complete,
// release nor extend it.
func TestSpec23_RedisFencingAcrossClients(t *testing.T) {
	for _, target := range redisTargets(true) {
		t.Run(target.name+"/spec23/an expired owner cannot touch the new record", func(t *testing.T) {
			const lease = time.Minute
			ctx := storeCtx(t)
			clientA, prefix, advance := target.open(t)
			clientB := secondClient(t, clientA)
			a := idem.NewRedisStore(clientA, idem.WithRedisKeyPrefix(prefix))
			b := idem.NewRedisStore(clientB, idem.WithRedisKeyPrefix(prefix))

			old, _, err := a.Acquire(ctx, "k", testClaim, lease)
			require.NoError(t, err)
			advance(lease + time.Second)
			fresh, held, err := b.Acquire(ctx, "k", testClaim, lease)
			require.NoError(t, err)
			require.Nil(t, held)
			require.NotEqual(t, old, fresh)

			assert.ErrorIs(t, a.Extend(ctx, "k", old, lease), idem.ErrNotOwner)
			assert.ErrorIs(t, a.Complete(ctx, "k", old, completed(200, "stale"), time.Hour), idem.ErrNotOwner)
			assert.ErrorIs(t, a.Release(ctx, "k", old), idem.ErrNotOwner)
			_, held, err = a.Acquire(ctx, "k", testClaim, lease)
			require.NoError(t, err)
			require.NotNil(t, held)
			assert.Equal(t, idem.InFlight, held.State)
			assert.Equal(t, fresh, held.Token)

			require.NoError(t, b.Complete(ctx, "k", fresh, completed(201, "fresh"), time.Hour))
			assert.ErrorIs(t, a.Complete(ctx, "k", old, completed(200, "stale"), time.Hour), idem.ErrNotOwner)
			_, held, err = a.Acquire(ctx, "k", testClaim, lease)
			require.NoError(t, err)
			require.NotNil(t, held)
			assert.Equal(t, []byte("fresh"), held.Body)
		})
	}
}

// TestSpec10_RedisOneWinnerAcrossClients: concurrent acquires through two
// clients (two processes) on one key: exactly one gets a token.
func TestSpec10_RedisOneWinnerAcrossClients(t *testing.T) {
	for _, target := range redisTargets(true) {
		t.Run(target.name, func(t *testing.T) {
			ctx := storeCtx(t)
			clientA, prefix, _ := target.open(t)
			clientB := secondClient(t, clientA)
			stores := []idem.Store{
				idem.NewRedisStore(clientA, idem.WithRedisKeyPrefix(prefix)),
				idem.NewRedisStore(clientB, idem.WithRedisKeyPrefix(prefix)),
			}
			var wins atomic.Int32
			var wg sync.WaitGroup
			for i := range 100 {
				wg.Go(func() {
					token, held, err := stores[i%2].Acquire(ctx, "k", testClaim, time.Minute)
					if assert.NoError(t, err) && token != "" {
						wins.Add(1)
					} else if err == nil {
						assert.NotNil(t, held)
					}
				})
			}
			wg.Wait()
			assert.Equal(t, int32(1), wins.Load())
		})
	}
}

// TestRedisStore_RoundTripsPerStep counts what the store sends for each
// step (a go-redis hook on the client) and the scripts that the server runs
// (INFO commandstats, on a server of its own): a new key is one plain SET,
// no script; a completion, renewal or release one script; a key that
// something holds is SET, then the script that reads it.
func TestRedisStore_RoundTripsPerStep(t *testing.T) {
	srv := startRedisServer(t) // skips without redis-server: miniredis has no commandstats
	ctx := storeCtx(t)
	client := newRedisClient(t, srv.addr)
	counter := countCommands(client)
	s := idem.NewRedisStore(client, idem.WithRedisLocalCache(0, 0)) // every step goes to Redis
	check := func(name string, want sent, scripts int, step func()) {
		t.Helper()
		var got sent
		ran := evalDelta(t, client, func() { got = counter.during(step) })
		assert.Equal(t, want, got, name+": sent")
		assert.Equal(t, scripts, ran, name+": scripts run (EVALSHA and EVAL)")
	}

	var first string
	check("a new key, even with a cold script cache", sent{1, "set×1"}, 0, func() {
		var err error
		first, _, err = s.Acquire(ctx, "k", testClaim, time.Minute)
		require.NoError(t, err)
		require.NotEmpty(t, first)
	})
	// A cold script cache costs one extra call (EVALSHA answers NOSCRIPT,
	// then EVAL), once per script and server.
	check("a cold script: EVALSHA (NOSCRIPT), then EVAL", sent{2, "eval×1 evalsha×1"}, 2, func() {
		require.NoError(t, s.Extend(ctx, "k", first, time.Minute))
	})
	// Warm the other scripts on another key.
	token, _, err := s.Acquire(ctx, "warm", testClaim, time.Minute)
	require.NoError(t, err)
	_, held, err := s.Acquire(ctx, "warm", testClaim, time.Minute) // the acquire script
	require.NoError(t, err)
	require.NotNil(t, held)
	require.NoError(t, s.Complete(ctx, "warm", token, completed(201, "{}"), time.Hour))
	token, _, err = s.Acquire(ctx, "warm2", testClaim, time.Minute)
	require.NoError(t, err)
	require.NoError(t, s.Release(ctx, "warm2", token))

	check("in-flight conflict", sent{2, "evalsha×1 set×1"}, 1, func() {
		_, held, err := s.Acquire(ctx, "k", testClaim, time.Minute)
		require.NoError(t, err)
		require.NotNil(t, held)
		assert.Equal(t, idem.InFlight, held.State)
	})
	check("extend", sent{1, "evalsha×1"}, 1, func() { require.NoError(t, s.Extend(ctx, "k", first, time.Minute)) })
	check("complete", sent{1, "evalsha×1"}, 1, func() {
		require.NoError(t, s.Complete(ctx, "k", first, completed(201, `{"id":1}`), time.Hour))
	})
	check("replay from Redis", sent{2, "evalsha×1 set×1"}, 1, func() {
		_, held, err := s.Acquire(ctx, "k", testClaim, time.Minute)
		require.NoError(t, err)
		require.NotNil(t, held)
		assert.Equal(t, idem.Completed, held.State)
	})
	token, _, err = s.Acquire(ctx, "r", testClaim, time.Minute)
	require.NoError(t, err)
	check("release", sent{1, "evalsha×1"}, 1, func() { require.NoError(t, s.Release(ctx, "r", token)) })

	t.Run("a flushed script cache costs one extra call, not an error", func(t *testing.T) {
		require.NoError(t, client.ScriptFlush(ctx).Err())
		check("held key after SCRIPT FLUSH", sent{3, "eval×1 evalsha×1 set×1"}, 2, func() {
			_, held, err := s.Acquire(ctx, "k", testClaim, time.Minute)
			require.NoError(t, err)
			require.NotNil(t, held)
		})
	})
}

// TestRedisStore_HeldKeyOnAFullRedis: Redis full with noeviction refuses
// the plain SET of an acquisition with OOM even when the key is held; the
// store then runs the acquire script, which reads first, so a held key is
// still answered (a completed record, an in-flight one), in one more round
// trip, and a new key is refused with Redis' error.
func TestRedisStore_HeldKeyOnAFullRedis(t *testing.T) {
	srv := startRedisServer(t) // miniredis has no maxmemory
	ctx := storeCtx(t)
	client, admin := newRedisClient(t, srv.addr), newRedisClient(t, srv.addr)
	counter := countCommands(client)
	s := idem.NewRedisStore(client, idem.WithRedisLocalCache(0, 0))
	token, _, err := s.Acquire(ctx, "done", testClaim, time.Minute)
	require.NoError(t, err)
	require.NoError(t, s.Complete(ctx, "done", token, completed(201, `{"id":1}`), time.Hour))
	running, _, err := s.Acquire(ctx, "running", testClaim, time.Minute)
	require.NoError(t, err)
	_, held, err := s.Acquire(ctx, "running", testClaim, time.Minute) // warms the acquire script
	require.NoError(t, err)
	require.NotNil(t, held)

	require.NoError(t, admin.ConfigSet(ctx, "maxmemory-policy", "noeviction").Err())
	require.NoError(t, admin.ConfigSet(ctx, "maxmemory", "1").Err())
	t.Cleanup(func() { _ = admin.ConfigSet(context.Background(), "maxmemory", "0").Err() })

	assert.Equal(t, sent{2, "evalsha×1 set×1"}, counter.during(func() {
		_, held, err := s.Acquire(ctx, "done", testClaim, time.Minute)
		require.NoError(t, err)
		require.NotNil(t, held)
		assert.Equal(t, idem.Completed, held.State)
		assert.Equal(t, []byte(`{"id":1}`), held.Body)
	}), "a completed key: SET (OOM), then the acquire script")
	_, held, err = s.Acquire(ctx, "running", testClaim, time.Minute)
	require.NoError(t, err)
	require.NotNil(t, held)
	assert.Equal(t, idem.InFlight, held.State)
	assert.Equal(t, running, held.Token)
	_, _, err = s.Acquire(ctx, "new", testClaim, time.Minute)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "OOM")
}

// TestRedisStore_AcquisitionWhoseReplyWasLost: when the SET of an
// acquisition took the key but its reply was lost and the client sent it
// again (go-redis retries a command whose connection broke), the second
// SET finds the key held; the acquire script then reads the acquisition's
// own record, and Acquire returns its token instead of a conflict with
// itself.
func TestRedisStore_AcquisitionWhoseReplyWasLost(t *testing.T) {
	forEachRedis(t, func(t *testing.T, client redis.UniversalClient, prefix string, _ func(time.Duration)) {
		ctx := storeCtx(t)
		client.AddHook(sendSetTwice{})
		s := idem.NewRedisStore(client, idem.WithRedisKeyPrefix(prefix))
		token, held, err := s.Acquire(ctx, "k", testClaim, time.Minute)
		require.NoError(t, err)
		require.Nil(t, held, "not a conflict with itself")
		require.NotEmpty(t, token)
		require.NoError(t, s.Complete(ctx, "k", token, completed(201, `{"id":1}`), time.Hour), "the token owns the key")
	})
}

// sendSetTwice sends each SET a second time, as a client does whose first
// reply was lost; the command keeps the second reply.
type sendSetTwice struct{}

func (sendSetTwice) DialHook(next redis.DialHook) redis.DialHook { return next }
func (sendSetTwice) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}
func (sendSetTwice) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if cmd.Name() == "set" {
			if err := next(ctx, cmd); err != nil {
				return err
			}
		}
		return next(ctx, cmd)
	}
}

// TestRedisStore_WaitWithoutReplicas: with WithRedisWaitReplicas on a
// Redis that has no replicas, WAIT (pipelined with the acquisition's SET or
// with a script, on a Cluster sent to the key's master) comes back short:
// an acquisition fails with ErrNotReplicated and gives its lease back, a
// held key is still answered, and a completion reports the shortfall.
func TestRedisStore_WaitWithoutReplicas(t *testing.T) {
	forEachRedis(t, func(t *testing.T, client redis.UniversalClient, prefix string, _ func(time.Duration)) {
		ctx := storeCtx(t)
		waiting := idem.NewRedisStore(client, idem.WithRedisKeyPrefix(prefix), idem.WithRedisWaitReplicas(1, 20*time.Millisecond))
		plain := idem.NewRedisStore(client, idem.WithRedisKeyPrefix(prefix), idem.WithRedisLocalCache(0, 0))

		_, _, err := waiting.Acquire(ctx, "k", testClaim, time.Minute)
		require.ErrorIs(t, err, idem.ErrNotReplicated)
		token, held, err := plain.Acquire(ctx, "k", testClaim, time.Minute)
		require.NoError(t, err)
		require.Nil(t, held, "the lease was given back")

		_, held, err = waiting.Acquire(ctx, "k", testClaim, time.Minute)
		require.NoError(t, err, "a held key is answered")
		require.NotNil(t, held)
		assert.Equal(t, idem.InFlight, held.State)

		err = waiting.Complete(ctx, "k", token, completed(201, `{"id":1}`), time.Hour)
		require.ErrorIs(t, err, idem.ErrNotReplicated)
		_, held, err = plain.Acquire(ctx, "k", testClaim, time.Minute)
		require.NoError(t, err)
		require.NotNil(t, held)
		assert.Equal(t, idem.Completed, held.State, "the record is written; only its replication is short")
	})
}

// TestSpec22_RedisRestart stops the server under a live client: calls fail
// within their deadline instead of hanging, and work again with the same
// client once the server is back on its port.
func TestSpec22_RedisRestart(t *testing.T) {
	srv := startRedisServer(t)
	client := newRedisClient(t, srv.addr)
	s := idem.NewRedisStore(client)
	call := func(key string) error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_, _, err := s.Acquire(ctx, key, testClaim, time.Minute)
		return err
	}
	require.NoError(t, call("before"))

	srv.Stop()
	var err error
	noHang(t, 10*time.Second, func() { err = call("down") })
	assert.Error(t, err, "Acquire with the server down")
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	assert.Error(t, s.Complete(ctx, "down", "00000000000000000000000000000000", completed(200, ""), time.Hour))

	require.NoError(t, srv.Start())
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.NoError(c, call("after"))
	}, 10*time.Second, 50*time.Millisecond, "the same client works again after the restart")
}

// TestSpec22_RedisPausedServer pauses the server (CLIENT PAUSE 3000 ALL)
// and calls Acquire with a 200 ms deadline: it returns an error. During the
// pause the server answers no command, so the only way Acquire can return
// before the pause ends is with an error at its own deadline: had it waited
// for the server, it would have succeeded.
func TestSpec22_RedisPausedServer(t *testing.T) {
	srv := startRedisServer(t)
	ctx := storeCtx(t)
	client := newRedisClient(t, srv.addr)
	s := idem.NewRedisStore(client)
	_, _, err := s.Acquire(ctx, "warm", testClaim, time.Minute) // an open connection and a loaded script
	require.NoError(t, err)

	admin := newRedisClient(t, srv.addr)
	require.NoError(t, admin.Do(ctx, "CLIENT", "PAUSE", 3000, "ALL").Err())

	short, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	var token string
	noHang(t, 10*time.Second, func() { token, _, err = s.Acquire(short, "k", testClaim, time.Minute) })
	require.Error(t, err)
	assert.Empty(t, token)
	var netErr net.Error
	assert.True(t, errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &netErr) && netErr.Timeout()),
		"a timeout error, got %v", err)
	srv.Stop() // rather than wait for the pause to end
}

// The tests below drive the middleware over HTTP with a Redis store.

// redisHTTPKey is the idempotency key of the HTTP tests (a UUID v4, as the
// default validator wants).
const redisHTTPKey = "7c9e6679-7425-40de-944b-e07fc1f90ae7"

// orderService is one replica of a service: a Gin engine behind a real HTTP
// server, with the middleware on POST /orders. The handler counts its runs
// in runs, shared by every replica, and waits for gate when one is given.
type orderService struct {
	srv     *httptest.Server
	arrived *atomic.Int32 // requests that reached the engine, all replicas
}

func newOrderService(t *testing.T, store idem.Store, runs, arrived *atomic.Int32, gate <-chan struct{}, opts ...idem.Option) *orderService {
	t.Helper()
	r := gin.New()
	r.Use(func(c *gin.Context) { arrived.Add(1) })
	r.Use(idem.New(append([]idem.Option{idem.WithStore(store)}, opts...)...))
	r.POST("/orders", func(c *gin.Context) {
		n := runs.Add(1)
		if gate != nil {
			<-gate
		}
		c.Header("Location", fmt.Sprintf("/orders/%d", n))
		c.JSON(http.StatusCreated, gin.H{"id": n})
	})
	srv := httptest.NewServer(r)
	t.Cleanup(srv.Close)
	return &orderService{srv: srv, arrived: arrived}
}

// redisResp is a response read in full.
type redisResp struct {
	status int
	header http.Header
	body   string
	err    error
}

func (r redisResp) replayed() bool { return r.header.Get("Idempotent-Replayed") == "true" }

// problemType decodes an RFC 9457 problem body and returns its type.
func (r redisResp) problemType(t *testing.T) string {
	t.Helper()
	assert.Equal(t, "application/problem+json", r.header.Get("Content-Type"))
	var p idem.Problem
	require.NoError(t, json.Unmarshal([]byte(r.body), &p), r.body)
	assert.Equal(t, r.status, p.Status)
	return p.Type
}

// postOrder posts an order with the idempotency key to srv. It returns
// transport errors in the response, so that it can run off the test
// goroutine.
func postOrder(client *http.Client, srv *httptest.Server, key string) redisResp {
	req, err := http.NewRequest(http.MethodPost, srv.URL+"/orders", strings.NewReader(`{"item":"book"}`))
	if err != nil {
		return redisResp{err: err}
	}
	req.Header.Set("Authorization", "Bearer alice")
	req.Header.Set("Idempotency-Key", key)
	res, err := client.Do(req)
	if err != nil {
		return redisResp{err: err}
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	return redisResp{status: res.StatusCode, header: res.Header, body: string(body), err: err}
}

func newHTTPClient(t *testing.T) *http.Client {
	tr := &http.Transport{MaxIdleConnsPerHost: 256}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

// TestSpec10_RedisTwoReplicasOneHandlerRun runs two replicas of a service,
// each with its own go-redis client, on one Redis. 200 concurrent requests
// with one key, spread over both, run the handler exactly once; every other
// answer is a 409 while it runs, then a replay.
func TestSpec10_RedisTwoReplicasOneHandlerRun(t *testing.T) {
	const n = 200
	for _, target := range redisTargets(false) {
		t.Run(target.name+"/spec10/one run, 409 while in flight, then replays", func(t *testing.T) {
			clientA, prefix, _ := target.open(t)
			clientB := secondClient(t, clientA)
			var runs, arrived atomic.Int32
			gate := make(chan struct{})
			var openGate sync.Once
			t.Cleanup(func() { openGate.Do(func() { close(gate) }) }) // never leave a handler blocked
			replicas := []*orderService{
				newOrderService(t, idem.NewRedisStore(clientA, idem.WithRedisKeyPrefix(prefix)), &runs, &arrived, gate),
				newOrderService(t, idem.NewRedisStore(clientB, idem.WithRedisKeyPrefix(prefix)), &runs, &arrived, gate),
			}
			httpClient := newHTTPClient(t)
			results := make(chan redisResp, n)
			for i := range n {
				go func() { results <- postOrder(httpClient, replicas[i%2].srv, redisHTTPKey) }()
			}
			// The first request holds the key while its handler waits at the
			// gate: every other request gets its 409 first.
			var answers []redisResp
			for len(answers) < n-1 {
				select {
				case r := <-results:
					answers = append(answers, r)
				case <-time.After(20 * time.Second):
					t.Fatalf("only %d of %d duplicates answered while the first request ran", len(answers), n-1)
				}
			}
			openGate.Do(func() { close(gate) })
			select {
			case r := <-results:
				answers = append(answers, r)
			case <-time.After(20 * time.Second):
				t.Fatal("the first request did not finish")
			}
			created, conflicts := 0, 0
			for _, r := range answers {
				require.NoError(t, r.err)
				switch {
				case r.status == http.StatusCreated && !r.replayed():
					created++
				case r.status == http.StatusConflict:
					assert.Equal(t, idem.ProblemInFlight, r.problemType(t))
					conflicts++
				default:
					t.Errorf("unexpected answer %d %q", r.status, r.body)
				}
			}
			assert.Equal(t, 1, created, "one original answer")
			assert.Equal(t, n-1, conflicts, "every duplicate in flight got 409")
			assert.Equal(t, int32(1), runs.Load(), "the handler ran once")

			// Once done, every duplicate on either replica is a replay.
			var wg sync.WaitGroup
			replays := make(chan redisResp, n)
			for i := range n {
				wg.Go(func() { replays <- postOrder(httpClient, replicas[i%2].srv, redisHTTPKey) })
			}
			wg.Wait()
			close(replays)
			for r := range replays {
				require.NoError(t, r.err)
				assert.Equal(t, http.StatusCreated, r.status)
				assert.True(t, r.replayed(), "a replay")
				assert.Equal(t, "/orders/1", r.header.Get("Location"))
				assert.JSONEq(t, `{"id":1}`, r.body)
			}
			assert.Equal(t, int32(1), runs.Load(), "the handler ran once")
		})

		t.Run(target.name+"/spec18/duplicates wait across replicas and get the replay", func(t *testing.T) {
			clientA, prefix, _ := target.open(t)
			clientB := secondClient(t, clientA)
			var runs, arrived atomic.Int32
			gate := make(chan struct{})
			var openGate sync.Once
			t.Cleanup(func() { openGate.Do(func() { close(gate) }) })
			wait := idem.WithWaitInFlight(20 * time.Second)
			replicas := []*orderService{
				newOrderService(t, idem.NewRedisStore(clientA, idem.WithRedisKeyPrefix(prefix)), &runs, &arrived, gate, wait),
				newOrderService(t, idem.NewRedisStore(clientB, idem.WithRedisKeyPrefix(prefix)), &runs, &arrived, gate, wait),
			}
			httpClient := newHTTPClient(t)
			results := make(chan redisResp, n)
			for i := range n {
				go func() { results <- postOrder(httpClient, replicas[i%2].srv, redisHTTPKey) }()
			}
			require.Eventually(t, func() bool { return arrived.Load() == n }, 20*time.Second, 5*time.Millisecond,
				"all requests reached a replica")
			openGate.Do(func() { close(gate) })
			created, replayed := 0, 0
			for range n {
				var r redisResp
				select {
				case r = <-results:
				case <-time.After(30 * time.Second):
					t.Fatal("a request did not finish")
				}
				require.NoError(t, r.err)
				require.Equal(t, http.StatusCreated, r.status, r.body)
				if r.replayed() {
					replayed++
				} else {
					created++
				}
				assert.JSONEq(t, `{"id":1}`, r.body)
			}
			assert.Equal(t, 1, created)
			assert.Equal(t, n-1, replayed)
			assert.Equal(t, int32(1), runs.Load(), "the handler ran once")
		})
	}
}

// TestRedisStore_RoundTripsOverHTTP counts what the store sends per
// request (a go-redis hook) and the scripts the server runs (INFO
// commandstats), on a server of its own: a first request costs two round
// trips, a plain SET and the complete script; a replay from Redis and an
// in-flight conflict two, SET then the script that reads the record; a
// replay from the local cache none.
func TestRedisStore_RoundTripsOverHTTP(t *testing.T) {
	srv := startRedisServer(t) // skips without redis-server: miniredis has no commandstats
	client := newRedisClient(t, srv.addr)
	counter := countCommands(client)
	var runs, arrived atomic.Int32
	gate := make(chan struct{})
	var openGate sync.Once
	t.Cleanup(func() { openGate.Do(func() { close(gate) }) })
	svc := newOrderService(t, idem.NewRedisStore(client, idem.WithRedisLocalCache(0, 0)), &runs, &arrived, gate)
	httpClient := newHTTPClient(t)
	check := func(name string, want sent, scripts int, step func()) {
		t.Helper()
		var got sent
		ran := evalDelta(t, client, func() { got = counter.during(step) })
		assert.Equal(t, want, got, name+": sent")
		assert.Equal(t, scripts, ran, name+": scripts run (EVALSHA and EVAL)")
	}

	// Warm the script cache (a cold script costs one NOSCRIPT reply once).
	openGate.Do(func() { close(gate) })
	const warmKey = "0b0b2e0c-5f4c-4b7e-9a3d-2f1c6e8d9a10"
	require.Equal(t, http.StatusCreated, postOrder(httpClient, svc.srv, warmKey).status)
	require.True(t, postOrder(httpClient, svc.srv, warmKey).replayed())

	check("first request: SET NX, then the complete script", sent{2, "evalsha×1 set×1"}, 1, func() {
		r := postOrder(httpClient, svc.srv, redisHTTPKey)
		require.NoError(t, r.err)
		require.Equal(t, http.StatusCreated, r.status)
		require.False(t, r.replayed())
	})
	check("replay from Redis: SET NX, then the acquire script", sent{2, "evalsha×1 set×1"}, 1, func() {
		r := postOrder(httpClient, svc.srv, redisHTTPKey)
		require.NoError(t, r.err)
		require.True(t, r.replayed())
	})

	// An in-flight conflict: a new key whose handler waits at a new gate.
	var runs2, arrived2 atomic.Int32
	gate2 := make(chan struct{})
	var openGate2 sync.Once
	t.Cleanup(func() { openGate2.Do(func() { close(gate2) }) })
	slow := newOrderService(t, idem.NewRedisStore(client), &runs2, &arrived2, gate2)
	const slowKey = "1d8c6e2a-7b3f-4c5d-9e1f-2a3b4c5d6e7f"
	first := make(chan redisResp, 1)
	go func() { first <- postOrder(httpClient, slow.srv, slowKey) }()
	require.Eventually(t, func() bool { return runs2.Load() == 1 }, 10*time.Second, time.Millisecond, "the first request runs")
	check("in-flight conflict: SET NX, then the acquire script", sent{2, "evalsha×1 set×1"}, 1, func() {
		r := postOrder(httpClient, slow.srv, slowKey)
		require.NoError(t, r.err)
		require.Equal(t, http.StatusConflict, r.status)
	})
	openGate2.Do(func() { close(gate2) })
	r := <-first
	require.NoError(t, r.err)
	assert.Equal(t, http.StatusCreated, r.status)
	check("replay from the local cache: nothing", sent{}, 0, func() {
		require.True(t, postOrder(httpClient, slow.srv, slowKey).replayed())
	})
}

// TestSpec22_RedisDownOverHTTP stops Redis under a running service: a
// request gets 503 problem+json with Retry-After at the store deadline
// (fail closed, the handler does not run), or runs without idempotency
// with WithFailOpen; once Redis is back on its port, requests work again
// with no restart of the service.
func TestSpec22_RedisDownOverHTTP(t *testing.T) {
	for _, failOpen := range []bool{false, true} {
		name := "spec22/fail closed: 503, then works again"
		var opts []idem.Option
		if failOpen {
			name = "spec22/fail open: the handler runs, then idempotency is back"
			opts = append(opts, idem.WithFailOpen())
		}
		t.Run(name, func(t *testing.T) {
			srv := startRedisServer(t)
			client := newRedisClient(t, srv.addr)
			var runs, arrived atomic.Int32
			opts := append(opts, idem.WithStoreTimeout(500*time.Millisecond))
			svc := newOrderService(t, idem.NewRedisStore(client), &runs, &arrived, nil, opts...)
			httpClient := newHTTPClient(t)
			require.Equal(t, http.StatusCreated, postOrder(httpClient, svc.srv, "0b0b2e0c-5f4c-4b7e-9a3d-2f1c6e8d9a10").status)

			srv.Stop()
			var r redisResp
			noHang(t, 10*time.Second, func() { r = postOrder(httpClient, svc.srv, redisHTTPKey) })
			require.NoError(t, r.err)
			if failOpen {
				assert.Equal(t, http.StatusCreated, r.status)
				assert.Equal(t, int32(2), runs.Load(), "the handler ran without idempotency")
			} else {
				assert.Equal(t, http.StatusServiceUnavailable, r.status)
				assert.Equal(t, idem.ProblemStoreUnavailable, r.problemType(t))
				assert.NotEmpty(t, r.header.Get("Retry-After"))
				assert.Equal(t, int32(1), runs.Load(), "the handler did not run")
			}

			require.NoError(t, srv.Start())
			runsBefore := runs.Load()
			require.EventuallyWithT(t, func(c *assert.CollectT) {
				r := postOrder(httpClient, svc.srv, redisHTTPKey)
				assert.NoError(c, r.err)
				assert.Equal(c, http.StatusCreated, r.status)
			}, 10*time.Second, 50*time.Millisecond, "requests work again after the restart")
			assert.Equal(t, runsBefore+1, runs.Load(), "the handler ran once after the restart")
			r = postOrder(httpClient, svc.srv, redisHTTPKey)
			assert.True(t, r.replayed(), "and the record is on Redis again")
		})
	}
}

// TestSpec25_RedisCorruptRecordOverHTTP overwrites a stored record with
// garbage, then with a hash: the retry gets 503 problem+json like any store
// failure (the handler does not run), and the server keeps serving.
func TestSpec25_RedisCorruptRecordOverHTTP(t *testing.T) {
	for _, target := range redisTargets(true) {
		t.Run(target.name, func(t *testing.T) {
			ctx := storeCtx(t)
			client, prefix, _ := target.open(t)
			var runs, arrived atomic.Int32
			// Without the local cache: the record is read back from Redis.
			store := idem.NewRedisStore(client, idem.WithRedisKeyPrefix(prefix), idem.WithRedisLocalCache(0, 0))
			svc := newOrderService(t, store, &runs, &arrived, nil)
			httpClient := newHTTPClient(t)
			require.Equal(t, http.StatusCreated, postOrder(httpClient, svc.srv, redisHTTPKey).status)
			var keys []string
			require.NoError(t, forEachKey(ctx, client, prefix, func(_ context.Context, _ redis.Cmdable, k string) error {
				keys = append(keys, k)
				return nil
			}))
			require.Len(t, keys, 1)

			for name, corrupt := range map[string]func() error{
				"spec25/garbage": func() error { return client.Set(ctx, keys[0], "\x01\x02garbage", time.Hour).Err() },
				"spec25/a hash": func() error {
					return errors.Join(client.Del(ctx, keys[0]).Err(), client.HSet(ctx, keys[0], "a", "b").Err())
				},
			} {
				t.Run(name, func(t *testing.T) {
					require.NoError(t, corrupt())
					before := runs.Load()
					r := postOrder(httpClient, svc.srv, redisHTTPKey)
					require.NoError(t, r.err)
					assert.Equal(t, http.StatusServiceUnavailable, r.status)
					assert.Equal(t, idem.ProblemStoreUnavailable, r.problemType(t))
					assert.Equal(t, before, runs.Load(), "the handler did not run")
					other := postOrder(httpClient, svc.srv, "1d8c6e2a-7b3f-4c5d-9e1f-2a3b4c5d6e7f")
					assert.Equal(t, http.StatusCreated, other.status, "other keys still work")
				})
			}
		})
	}
}
