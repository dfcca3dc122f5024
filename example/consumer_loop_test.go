package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ginidem/idempotency"
)

// The tests of the consumer's loop (consumer_loop.go): how it reads,
// reclaims and waits. They run on Redis only: the loop is the same on
// Postgres.

// TestConsumerRejoinsALostGroup: a stream deleted while the consumer runs
// (DEL, FLUSHALL, a restart of a Redis without persistence) takes its
// group with it, and the consumer's calls get NOGROUP. The consumer joins
// again, creating the group, and applies the events added since.
func TestConsumerRejoinsALostGroup(t *testing.T) {
	for _, tc := range []struct {
		name string
		lose func(ctx context.Context, rig *consumerRig) error
	}{
		{"DEL", func(ctx context.Context, rig *consumerRig) error { return rig.redis.Del(ctx, rig.stream).Err() }},
		{"FLUSHALL", func(ctx context.Context, rig *consumerRig) error { return rig.redis.FlushAll(ctx).Err() }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			rig := newConsumerRig(t, onRedis)
			rig.addEvent("evt-1")
			rig.start(rig.newConsumer("only"))
			rig.waitConsumed()
			require.NoError(t, tc.lose(ctx, rig))
			rig.addEvent("evt-2")
			rig.waitConsumed()
			assert.Equal(t, 1, rig.effects(facilityOf("evt-2")), "the event added after the stream was lost")
		})
	}
}

// TestSpec22_ConsumerWaitsForTheStore: while its store is down, the consumer
// stops at the first entry that fails and tries it again after its retry
// wait, without reading further: only the first batch is delivered, and
// the rest of the backlog stays in the stream, undelivered, instead of
// being delivered, failed and left pending entry after entry. Once the
// store is back, every event is applied once.
func TestSpec22_ConsumerWaitsForTheStore(t *testing.T) {
	const events, batch = 40, 4
	rig := newConsumerRig(t, onRedis)
	for i := range events {
		rig.addEvent(fmt.Sprintf("evt-%d", i))
	}
	var store *switchedStore
	var counts eventCounter
	c := rig.newConsumerWrapped("only", func(s idempotency.Store) idempotency.Store {
		store = &switchedStore{Store: s}
		store.down.Store(true)
		return store
	}, counts.hook())
	c.batch, c.retry = batch, 20*time.Millisecond
	rig.start(c)

	require.Eventually(t, func() bool { return counts.count(idempotency.EventStoreError) >= 3*batch },
		30*time.Second, 10*time.Millisecond, "the consumer did not try the store")
	g, found, err := rig.group()
	require.NoError(t, err)
	require.True(t, found)
	assert.EqualValues(t, batch, g.Pending, "only the first batch was delivered")
	assert.EqualValues(t, events-batch, g.Lag, "the rest of the backlog was not read")

	store.down.Store(false)
	rig.waitConsumed()
	for i := range events {
		assert.Equal(t, 1, rig.effects(facilityOf(fmt.Sprintf("evt-%d", i))), "evt-%d", i)
	}
	assert.Equal(t, events, counts.count(idempotency.EventAcquired), "each event ran once")
}

// TestConsumerReclaimsWithoutWaiting: a dead consumer left many entries
// pending. The survivor reclaims them batch after batch without waiting
// for new entries in between: it never blocks in XREADGROUP while
// XAUTOCLAIM's cursor says there is more to claim.
func TestConsumerReclaimsWithoutWaiting(t *testing.T) {
	const events, batch = 24, 4
	ctx := context.Background()
	rig := newConsumerRig(t, onRedis)
	for i := range events {
		rig.addEvent(fmt.Sprintf("evt-%d", i))
	}
	dead := rig.newConsumer("dead")
	require.NoError(t, dead.join(ctx))
	read, err := rig.redis.XReadGroup(ctx, &redis.XReadGroupArgs{
		Group: consumerGroup, Consumer: dead.name, Streams: []string{rig.stream, ">"}, Count: events, Block: -1,
	}).Result()
	require.NoError(t, err)
	require.Len(t, read[0].Messages, events, "every entry is pending for the dead consumer")

	survivor := rig.newConsumer("survivor")
	survivor.batch = batch
	watch := &streamWatch{}
	survivor.client.AddHook(watch)
	start := time.Now()
	rig.start(survivor)
	rig.waitConsumed()
	t.Logf("%d entries reclaimed in %v (min-idle %v)", events, time.Since(start), survivor.minIdle)
	for i := range events {
		assert.Equal(t, 1, rig.effects(facilityOf(fmt.Sprintf("evt-%d", i))), "evt-%d", i)
	}
	claims, blocked := watch.counts()
	require.Positive(t, claims, "XAUTOCLAIM never left more to claim: the test proves nothing")
	assert.Zero(t, blocked, "XREADGROUP blocked while there was more to claim")
}

// TestConsumerReadsWhenReclaimingFails: a failing XAUTOCLAIM does not keep
// the consumer from reading and applying new entries.
func TestConsumerReadsWhenReclaimingFails(t *testing.T) {
	rig := newConsumerRig(t, onRedis)
	c := rig.newConsumer("only")
	watch := &streamWatch{}
	watch.failClaims.Store(true)
	c.client.AddHook(watch)
	rig.addEvent("evt-1")
	rig.start(c)
	rig.waitConsumed()
	assert.Equal(t, 1, rig.effects(facilityOf("evt-1")))
}

// switchedStore is a store that can be taken down: while down is set, each
// Acquire fails at once, as with a store that cannot be reached. The other
// calls pass: none comes while Acquire fails.
type switchedStore struct {
	idempotency.Store
	down atomic.Bool
}

var errStoreDown = errors.New("the store is down (switchedStore)")

func (s *switchedStore) Acquire(ctx context.Context, key string, claim *idempotency.Record, lease time.Duration) (string, *idempotency.Record, error) {
	if s.down.Load() {
		return "", nil, errStoreDown
	}
	return s.Store.Acquire(ctx, key, claim, lease)
}

// streamWatch is a go-redis hook on a consumer's client. It follows the
// consumer's XAUTOCLAIM and XREADGROUP calls, and, while failClaims is
// set, makes its XAUTOCLAIM calls fail without sending them.
type streamWatch struct {
	failClaims atomic.Bool

	mu      sync.Mutex
	more    bool // the last XAUTOCLAIM's cursor was not "0-0": there is more to claim
	claims  int  // XAUTOCLAIM calls that left more to claim
	blocked int  // XREADGROUP calls with BLOCK sent while there was more to claim
}

var _ redis.Hook = (*streamWatch)(nil)

// errClaimFailed is the error of the XAUTOCLAIM calls streamWatch fails.
var errClaimFailed = errors.New("ERR XAUTOCLAIM failed (streamWatch)")

func (w *streamWatch) DialHook(next redis.DialHook) redis.DialHook { return next }

func (w *streamWatch) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

func (w *streamWatch) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		switch cmd.Name() {
		case "xautoclaim":
			if w.failClaims.Load() {
				cmd.SetErr(errClaimFailed)
				return errClaimFailed
			}
			err := next(ctx, cmd)
			if claim, ok := cmd.(*redis.XAutoClaimCmd); ok && err == nil {
				_, cursor := claim.Val()
				w.mu.Lock()
				w.more = cursor != "0-0"
				if w.more {
					w.claims++
				}
				w.mu.Unlock()
			}
			return err
		case "xreadgroup":
			blocks := slices.ContainsFunc(cmd.Args(), func(arg any) bool {
				s, ok := arg.(string)
				return ok && strings.EqualFold(s, "block")
			})
			w.mu.Lock()
			if blocks && w.more {
				w.blocked++
			}
			w.mu.Unlock()
		}
		return next(ctx, cmd)
	}
}

// counts returns the XAUTOCLAIM calls that left more to claim, and the
// XREADGROUP calls that blocked while there was more.
func (w *streamWatch) counts() (claims, blocked int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.claims, w.blocked
}
