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
	"github.com/ginidem/idempotency/internal/suite"
)

// An operator's Delete of a key in flight on Redis (SPEC 29) must not be
// undone by the deleted request's completion, although the complete script
// takes a key that holds nothing (SPEC 23): Delete leaves a marker that no
// token owns and that the next acquisition takes like a free key.

// TestSpec29_RedisDeletedInFlightKeyStaysForgotten: after the Delete, and
// still after the deleted record's lease would have ended, the deleted
// token can neither complete, release nor renew the key; the key reads as
// having no record and runs as new.
func TestSpec29_RedisDeletedInFlightKeyStaysForgotten(t *testing.T) {
	forEachRedis(t, func(t *testing.T, client redis.UniversalClient, prefix string, advance func(time.Duration)) {
		ctx := storeCtx(t)
		const lease, ttl = time.Minute, time.Hour
		s := idem.NewRedisStore(client, idem.WithRedisKeyPrefix(prefix))
		old, _, err := s.Acquire(ctx, "k", testClaim, lease)
		require.NoError(t, err)
		require.NoError(t, s.Delete(ctx, "k"))
		advance(lease + time.Second) // the deleted record's lease is over

		assert.ErrorIs(t, s.Complete(ctx, "k", old, completed(201, `{"id":1}`), ttl), idem.ErrNotOwner,
			"the deleted request's completion does not bring the key back")
		assert.ErrorIs(t, s.Release(ctx, "k", old), idem.ErrNotOwner)
		assert.ErrorIs(t, s.Extend(ctx, "k", old, lease), idem.ErrNotOwner)
		_, err = s.Get(ctx, "k")
		assert.ErrorIs(t, err, idem.ErrNoRecord)
		assert.ErrorIs(t, s.Delete(ctx, "k"), idem.ErrNoRecord)
		left, err := client.PTTL(ctx, prefix+"{k}").Result()
		require.NoError(t, err)
		assert.Positive(t, left, "what Delete leaves expires")

		fresh, held, err := s.Acquire(ctx, "k", testClaim, lease)
		require.NoError(t, err)
		require.Nil(t, held, "the key runs as new")
		assert.ErrorIs(t, s.Complete(ctx, "k", old, completed(201, `{"id":1}`), ttl), idem.ErrNotOwner)
		require.NoError(t, s.Complete(ctx, "k", fresh, completed(201, `{"id":2}`), ttl))
		_, held, err = s.Acquire(ctx, "k", testClaim, lease)
		require.NoError(t, err)
		require.NotNil(t, held)
		assert.Equal(t, `{"id":2}`, string(held.Body))

		require.NoError(t, s.Delete(ctx, "k"), "a completed record is deleted")
		n, err := client.Exists(ctx, prefix+"{k}").Result()
		require.NoError(t, err)
		assert.Zero(t, n, "nothing is left of a completed record")
	})
}

// TestSpec29_ForgottenRequestOutlivingItsLeaseStoresNothing: over HTTP, an
// operator forgets a key while its handler runs, and the handler runs on
// past the end of its 1 s lease before it answers. Its client still gets
// its answer, but the answer is not stored (lost_lease), and the caller's
// next request with the key runs the handler again instead of replaying
// the forgotten run.
func TestSpec29_ForgottenRequestOutlivingItsLeaseStoresNothing(t *testing.T) {
	const lease = time.Second
	for _, target := range redisTargets(false) {
		t.Run(target.name, func(t *testing.T) {
			client, prefix, _ := target.open(t)
			store := idem.NewRedisStore(client, idem.WithRedisKeyPrefix(prefix))
			var runs atomic.Int32
			gate := make(chan struct{})
			ev := suite.NewEvents()
			svc := newOutageService(t, store, &runs, gate, idem.WithLease(lease), idem.WithEventHook(ev.Hook))
			hc := newHTTPClient(t)

			first := make(chan redisResp, 1)
			go func() { first <- postOrder(hc, svc.srv, redisHTTPKey) }()
			ev.WaitFor(t, idem.EventAcquired)
			require.NoError(t, idem.Forget(storeCtx(t), store, "Bearer alice", redisHTTPKey))
			// The handler runs on for longer than the lease after the
			// Forget: the length under test, not a synchronisation.
			outlast(time.Now(), lease)
			close(gate)
			answer := recvRedis(t, first)
			assert.Equal(t, http.StatusCreated, answer.status, "the forgotten request's client gets its answer")
			ev.WaitFor(t, idem.EventLostLease)

			retry := postOrder(hc, svc.srv, redisHTTPKey)
			assert.Equal(t, http.StatusCreated, retry.status)
			assert.False(t, retry.replayed(), "the key runs as new, not the forgotten run's replay")
			assert.NotEqual(t, answer.body, retry.body)
			assert.Equal(t, int32(2), runs.Load())
		})
	}
}
