package idempotency_test

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	idem "github.com/ginidem/idempotency"
	"github.com/ginidem/idempotency/internal/suite"
)

// renewalSpy is a RedisStore that says when a lease renewal was refused
// because the token no longer owns the key. Everything else is the
// RedisStore's own, its pending answers and local cache included.
type renewalSpy struct {
	*idem.RedisStore
	once    sync.Once
	refused chan struct{} // closed at the first renewal refused with ErrNotOwner
}

func (s *renewalSpy) Extend(ctx context.Context, key, token string, lease time.Duration) error {
	err := s.RedisStore.Extend(ctx, key, token, lease)
	if errors.Is(err, idem.ErrNotOwner) {
		s.once.Do(func() { close(s.refused) })
	}
	return err
}

// TestSpec23_RenewalAfterTheRecordExpiredStillCompletes: Redis stops while
// a handler runs and stays down past the end of its 1 s lease, so the
// in-flight record has expired when Redis is back. The next renewal finds
// the key gone and is refused (ErrNotOwner) while the handler still runs.
// Nobody took the key, so when the handler then answers, its completion
// lands (SPEC 23): a retry on another process gets the replay, and the
// handler ran once. A middleware that skipped the completion because the
// renewal was refused would have the retry run the handler again.
func TestSpec23_RenewalAfterTheRecordExpiredStillCompletes(t *testing.T) {
	const lease = time.Second
	srv := startAOFRedis(t)
	var runs atomic.Int32
	gate := make(chan struct{})
	var openGate sync.Once
	t.Cleanup(func() { openGate.Do(func() { close(gate) }) }) // never leave the handler blocked
	ev := suite.NewEvents()
	spy := &renewalSpy{RedisStore: idem.NewRedisStore(newRedisClient(t, srv.addr)), refused: make(chan struct{})}
	opts := []idem.Option{idem.WithStoreTimeout(200 * time.Millisecond), idem.WithLease(lease)}
	a := newOutageService(t, spy, &runs, gate, append(opts, idem.WithEventHook(ev.Hook))...)
	b := newOutageService(t, idem.NewRedisStore(newRedisClient(t, srv.addr), idem.WithRedisLocalCache(0, 0)), &runs, nil, opts...)
	hc := newHTTPClient(t)

	first := make(chan redisResp, 1)
	go func() { first <- postOrder(hc, a.srv, redisHTTPKey) }()
	ev.WaitFor(t, idem.EventAcquired)
	srv.Stop()
	outlast(time.Now(), lease) // the outage's length, longer than the lease, is the condition under test
	require.NoError(t, srv.Start())

	select {
	case <-spy.refused: // a renewal found the key gone while the handler runs
	case <-time.After(10 * time.Second):
		t.Fatal("no renewal was refused after Redis came back")
	}
	admin := newRedisClient(t, srv.addr)
	n, err := admin.Exists(storeCtx(t), "idem:{"+eventKey(t, redisHTTPKey)+"}").Result()
	require.NoError(t, err)
	require.Zero(t, n, "the in-flight record expired during the outage and nobody took the key")

	openGate.Do(func() { close(gate) })
	answer := recvRedis(t, first)
	require.Equal(t, http.StatusCreated, answer.status, "the first client gets its answer")
	ev.WaitFor(t, idem.EventCompleted)
	assert.NotContains(t, ev.Kinds(), idem.EventLostLease)

	retry := postOrder(hc, b.srv, redisHTTPKey)
	assert.Equal(t, http.StatusCreated, retry.status)
	assert.True(t, retry.replayed(), "the retry gets the replay, marked Idempotent-Replayed")
	assert.Equal(t, answer.body, retry.body)
	assert.Equal(t, int32(1), runs.Load(), "the handler ran once")
}
