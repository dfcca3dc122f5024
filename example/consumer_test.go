package main

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ginidem/idempotency"
	"github.com/ginidem/idempotency/internal/redistest"
)

// TestSpec17_ConsumerAppliesAnEventAddedTwiceOnce: a producer that adds
// one event twice (two entries with one event id, the same fields in
// another order) gets one requisition; the second entry is replayed and
// acknowledged like the first.
func TestSpec17_ConsumerAppliesAnEventAddedTwiceOnce(t *testing.T) {
	forEachSetup(t, func(t *testing.T, rig *consumerRig) {
		rig.addEvent("evt-1")
		rig.add(fieldFacility, facilityOf("evt-1"), fieldProgram, "Family Planning", fieldType, eventCreate, fieldEventID, "evt-1")
		rig.addEvent("evt-2")
		var events eventCounter
		rig.start(rig.newConsumer("only", events.hook()))
		rig.waitConsumed()
		assert.Equal(t, 1, rig.effects(facilityOf("evt-1")), "one requisition for the event added twice")
		assert.Equal(t, 1, rig.effects(facilityOf("evt-2")))
		assert.Equal(t, 2, events.count(idempotency.EventAcquired))
		assert.Equal(t, 1, events.count(idempotency.EventReplayed), "the second entry of evt-1 was replayed")
	})
}

// TestSpec17_ConsumerReclaimsAnAppliedEntryAndReplaysIt: a consumer
// applies an entry and stops before its XACK (it hangs, or its XACK is
// lost). Another consumer reclaims the entry with XAUTOCLAIM once it has
// been pending for a lease, gets the recorded result, and acknowledges it:
// one requisition.
func TestSpec17_ConsumerReclaimsAnAppliedEntryAndReplaysIt(t *testing.T) {
	forEachSetup(t, func(t *testing.T, rig *consumerRig) {
		ctx := context.Background()
		rig.addEvent("evt-1")
		stalled := rig.newConsumer("stalled")
		require.NoError(t, stalled.join(ctx))
		read, err := rig.redis.XReadGroup(ctx, &redis.XReadGroupArgs{
			Group: consumerGroup, Consumer: stalled.name, Streams: []string{rig.stream, ">"}, Count: 10, Block: -1,
		}).Result()
		require.NoError(t, err)
		require.Len(t, read[0].Messages, 1)
		assert.Equal(t, outcomeApplied, stalled.handle(ctx, read[0].Messages[0]), "applied, and not acknowledged")
		require.Equal(t, 1, rig.effects(facilityOf("evt-1")))
		require.EqualValues(t, 1, rig.pending())

		var events eventCounter
		rig.start(rig.newConsumer("survivor", events.hook()))
		rig.waitConsumed()
		assert.Equal(t, 1, rig.effects(facilityOf("evt-1")), "the reclaimed entry created nothing")
		assert.Equal(t, 1, events.count(idempotency.EventReplayed), "the survivor got the recorded result")
		assert.Zero(t, events.count(idempotency.EventAcquired), "the survivor never ran the function")
	})
}

// TestSpec16_ConsumerAcknowledgesPoisonedEntries: entries that can never be
// applied are acknowledged without an effect, so that they do not come
// back forever: an event id reused with other fields (a mismatch), an
// entry without an event id, and an event of an unknown type (refused,
// and refused again without running when it comes again).
func TestSpec16_ConsumerAcknowledgesPoisonedEntries(t *testing.T) {
	forEachSetup(t, func(t *testing.T, rig *consumerRig) {
		rig.addEvent("evt-1")
		rig.add(fieldEventID, "evt-1", fieldType, eventCreate, fieldProgram, "Family Planning", fieldFacility, "elsewhere")
		rig.add(fieldType, eventCreate, fieldProgram, "Family Planning", fieldFacility, "nowhere")
		for range 2 {
			rig.add(fieldEventID, "evt-2", fieldType, "delete", fieldProgram, "Family Planning", fieldFacility, facilityOf("evt-2"))
		}
		var events eventCounter
		c := rig.newConsumer("only", events.hook())
		rig.start(c)
		rig.waitConsumed()
		assert.Equal(t, 1, rig.effects(facilityOf("evt-1")))
		assert.Zero(t, rig.effects("elsewhere"), "the mismatched entry created nothing")
		assert.Zero(t, rig.effects("nowhere"), "the entry without an event id created nothing")
		assert.Zero(t, rig.effects(facilityOf("evt-2")), "the refused event created nothing")
		assert.Equal(t, 1, events.count(idempotency.EventMismatch))
		assert.Equal(t, 2, events.count(idempotency.EventAcquired), "evt-1, and evt-2 once")
		assert.Equal(t, 1, events.count(idempotency.EventReplayed), "the refusal of evt-2, replayed")
	})
}

// TestSpec10_TwoConsumersApplyEachEventOnce: two consumers of one group
// run concurrently over many events, each added twice, the copy a few
// entries later, so that the two copies of an event often reach the two
// consumers at once. One of them runs it; the other gets the result, or
// finds it in flight, leaves the entry pending and reclaims it later.
// Every event has exactly one effect.
func TestSpec10_TwoConsumersApplyEachEventOnce(t *testing.T) {
	forEachSetup(t, func(t *testing.T, rig *consumerRig) {
		const events, stride = 48, 4
		for first := 0; first < events; first += stride {
			for range 2 { // each stride of events, then their copies
				for i := first; i < first+stride; i++ {
					rig.addEvent(fmt.Sprintf("evt-%d", i))
				}
			}
		}
		var countA, countB eventCounter
		a, b := rig.newConsumer("a", countA.hook()), rig.newConsumer("b", countB.hook())
		a.batch, b.batch = stride, stride
		rig.start(a)
		rig.start(b)
		rig.waitConsumed()
		for i := range events {
			assert.Equal(t, 1, rig.effects(facilityOf(fmt.Sprintf("evt-%d", i))), "evt-%d", i)
		}
		ran := countA.count(idempotency.EventAcquired) + countB.count(idempotency.EventAcquired)
		assert.Equal(t, events, ran, "each event ran once")
		assert.Positive(t, countA.handled(), "a took part")
		assert.Positive(t, countB.handled(), "b took part")
		t.Logf("a ran %d, replayed %d, in flight %d; b ran %d, replayed %d, in flight %d",
			countA.count(idempotency.EventAcquired), countA.count(idempotency.EventReplayed), countA.count(idempotency.EventConflict),
			countB.count(idempotency.EventAcquired), countB.count(idempotency.EventReplayed), countB.count(idempotency.EventConflict))
	})
}

// TestConsumerConfig: -consume (CONSUME_STREAM) names the stream, on
// -redis; with -postgres too, Redis holds only the stream. Without -redis,
// or without the idempotency records, it is refused.
func TestConsumerConfig(t *testing.T) {
	cfg, err := parseConfig([]string{"-redis", "redis://127.0.0.1:6379/0", "-consume", "requisition-events"}, noEnv)
	require.NoError(t, err)
	assert.Equal(t, "requisition-events", cfg.ConsumeStream)
	assert.Equal(t, "redis://127.0.0.1:6379/0", cfg.storeName())

	env := map[string]string{"CONSUME_STREAM": "events", "REDIS_URL": "redis://:secret@127.0.0.1:6379/0", "POSTGRES_URL": "postgres://u@127.0.0.1/db"}
	cfg, err = parseConfig(nil, func(k string) string { return env[k] })
	require.NoError(t, err)
	assert.Equal(t, "events", cfg.ConsumeStream)
	assert.Equal(t, "postgres://u@127.0.0.1/db", cfg.storeName(), "the records are in Postgres")
	assert.Equal(t, "redis://:xxxxx@127.0.0.1:6379/0", cfg.redisName())

	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"without redis", []string{"-consume", "events"}, "consume needs -redis"},
		{"without records", []string{"-redis", "redis://h:6379", "-consume", "events", "-idempotency=false"}, "consume needs the idempotency records"},
		{"redis and postgres without consume", []string{"-redis", "redis://h:6379", "-postgres", "postgres://h/db"}, "choose one store"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseConfig(tc.args, noEnv)
			require.ErrorContains(t, err, tc.want)
		})
	}
}

// TestConsumerRunsBesideTheAPI: run with -consume serves the API and
// consumes the stream; the API lists the requisition an event created.
// When ctx is done, run stops both and returns, and the consumer, with
// nothing pending, has left the group.
func TestConsumerRunsBesideTheAPI(t *testing.T) {
	forEachSetup(t, func(t *testing.T, rig *consumerRig) {
		port, err := redistest.FreePort()
		require.NoError(t, err)
		cfg := defaultConfig(t)
		cfg.Addr = "127.0.0.1:" + strconv.Itoa(port)
		cfg.RedisURL = "redis://" + rig.addr + "/0"
		cfg.PostgresURL = rig.dsn // empty on Redis
		cfg.ConsumeStream = rig.stream
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		ran := make(chan error, 1)
		go func() { ran <- run(ctx, cfg) }()

		rig.addEvent("evt-1")
		rig.waitConsumed() // run listens before it consumes
		items := (&testAPI{t: t, url: "http://" + cfg.Addr}).list()
		require.Len(t, items, 1)
		assert.Equal(t, facilityOf("evt-1"), items[0].Facility)

		cancel()
		select {
		case err := <-ran:
			require.NoError(t, err)
		case <-time.After(30 * time.Second):
			t.Fatal("run did not stop")
		}
		consumers, err := rig.redis.XInfoConsumers(context.Background(), rig.stream, consumerGroup).Result()
		require.NoError(t, err)
		assert.Empty(t, consumers, "the stopped consumer left the group")
	})
}

// TestConsumerAcknowledgesByOutcome: the entries done with are
// acknowledged; those in flight elsewhere, or whose function or store
// failed, stay pending.
func TestConsumerAcknowledgesByOutcome(t *testing.T) {
	for o, want := range map[outcome]bool{
		outcomeApplied: true, outcomeReplayed: true, outcomeRefused: true, outcomeMismatch: true, outcomeMalformed: true,
		outcomeInFlight: false, outcomeFailed: false, outcomeStoreFailed: false, 0: false,
	} {
		assert.Equal(t, want, o.acknowledged(), "outcome %d", o)
	}
}
