package main

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ginidem/idempotency"
)

// A streamConsumer applies the requisition events of a Redis stream, as one
// consumer of a consumer group, exactly once per event id: each entry runs
// through an idempotency.Runner keyed by its event id, and is acknowledged
// (XACK) only once the Runner has a result for it. The stream delivers at
// least once: an entry comes again when it was added twice, or when a
// consumer died before its XACK and another one reclaims it (XAUTOCLAIM);
// the Runner then replays the recorded result instead of creating a second
// requisition. consumer_loop.go reads and reclaims the entries.
type streamConsumer struct {
	client redis.UniversalClient // the stream's Redis
	stream string
	group  string // consumerGroup
	name   string // this consumer in the group: unique per process
	runner *idempotency.Runner
	reqs   requisitionCreator

	batch   int64         // entries per read and per reclaim
	block   time.Duration // how long a read waits for new entries
	minIdle time.Duration // entries pending this long are reclaimed: at least one lease
	retry   time.Duration // the wait after a failed Redis call

	// pause, when set, is called at each of the kill points below; the
	// crash tests stop a consumer process there and SIGKILL it.
	pause func(point string)
	log   *slog.Logger

	claimFrom string // where the next XAUTOCLAIM starts: "0-0", or its last cursor
}

// consumerGroup is the consumer group of the example's consumers.
const consumerGroup = "requisitions"

// The points of an entry's handling where the crash tests kill a consumer.
const (
	pointBeforeEffect = "before-effect" // the event's key is held; nothing is written yet
	pointAfterEffect  = "after-effect"  // the requisition is written; the result is not recorded
	pointBeforeAck    = "before-ack"    // the result is recorded (committed); the entry is not acknowledged
)

// applyTimeout bounds the handling of one entry. A stop does not cancel
// an entry being applied: its function and its record finish first.
const applyTimeout = 30 * time.Second

// newStreamConsumer returns the consumer name of consumerGroup on stream,
// which applies events to reqs through runner. It reclaims entries left
// pending for one lease (the lease of runner's keys): by then a dead
// consumer's key is free again, and a live one still holds it.
func newStreamConsumer(client redis.UniversalClient, stream, name string, runner *idempotency.Runner, reqs requisitionCreator, lease time.Duration) *streamConsumer {
	return &streamConsumer{
		client: client, stream: stream, group: consumerGroup, name: name, runner: runner, reqs: reqs,
		batch: 16, block: 2 * time.Second, minIdle: lease, retry: time.Second,
		log:       slog.Default().With("stream", stream, "group", consumerGroup, "consumer", name),
		claimFrom: "0-0",
	}
}

// newConsumerRunner returns the Runner of a consumer on store: it keeps
// refused events as their result, so that a redelivery is refused without
// running; opts add the service's lease, TTL and breaker.
func newConsumerRunner(store idempotency.Store, opts ...idempotency.Option) *idempotency.Runner {
	return idempotency.NewRunner(append([]idempotency.Option{
		idempotency.WithStore(store), idempotency.WithKeepError(isRefusedEvent),
	}, opts...)...)
}

// outcome is what handling one entry came to.
type outcome uint8

const (
	outcomeApplied   outcome = iota + 1 // the event ran now: one requisition created
	outcomeReplayed                     // an earlier delivery applied it; nothing ran
	outcomeRefused                      // the event can never be applied (kept, see refusedEventError)
	outcomeMismatch                     // its event id was used with other fields: a poisoned id
	outcomeMalformed                    // the entry has no event id
	outcomeInFlight                     // another consumer is applying it now
	outcomeFailed                       // the store or the database failed
)

// acknowledged reports whether the entry is done with (XACK). An entry in
// flight elsewhere or whose handling failed stays pending, and is
// reclaimed one minIdle later.
func (o outcome) acknowledged() bool { return o <= outcomeMalformed }

// handle applies one entry through the Runner and says what came of it.
// It does not acknowledge the entry: process does.
func (c *streamConsumer) handle(ctx context.Context, msg redis.XMessage) outcome {
	log := c.log.With("entry", msg.ID)
	ev, err := readEvent(msg)
	if err != nil {
		log.WarnContext(ctx, "consumer: acknowledging an entry that is not an event", "err", err)
		return outcomeMalformed
	}
	log = log.With("event", ev.id)
	call := idempotency.Call{Scope: c.stream, Key: ev.id, Payload: ev.payload}
	res, err := c.runner.Do(ctx, call, func(ctx context.Context, tx idempotency.Tx) ([]byte, error) {
		if err := ev.check(); err != nil {
			return nil, err
		}
		c.checkpoint(pointBeforeEffect)
		r, err := c.reqs.createInCall(ctx, tx, ev.program, ev.facility)
		if err != nil {
			return nil, err
		}
		c.checkpoint(pointAfterEffect)
		return json.Marshal(r)
	})
	var recorded *idempotency.RecordedError
	switch {
	case err == nil && res.Replayed:
		log.InfoContext(ctx, "consumer: event already applied", "requisition", string(res.Value))
		return outcomeReplayed
	case err == nil:
		log.InfoContext(ctx, "consumer: event applied", "requisition", string(res.Value))
		return outcomeApplied
	case isRefusedEvent(err) || errors.As(err, &recorded):
		log.WarnContext(ctx, "consumer: event refused", "err", err)
		return outcomeRefused
	case errors.Is(err, idempotency.ErrMismatch):
		log.WarnContext(ctx, "consumer: event id already used with other fields; acknowledged without applying", "err", err)
		return outcomeMismatch
	case errors.Is(err, idempotency.ErrInFlight):
		log.InfoContext(ctx, "consumer: event being applied by another consumer; left pending")
		return outcomeInFlight
	}
	log.ErrorContext(ctx, "consumer: applying the event failed; left pending", "err", err)
	return outcomeFailed
}

// process handles msgs in order and acknowledges each one that is done
// with. Once ctx is done it starts no other entry: those stay pending, and
// are reclaimed.
func (c *streamConsumer) process(ctx context.Context, msgs []redis.XMessage) {
	for _, msg := range msgs {
		if ctx.Err() != nil {
			return
		}
		work, cancel := context.WithTimeout(context.WithoutCancel(ctx), applyTimeout)
		if c.handle(work, msg).acknowledged() {
			c.checkpoint(pointBeforeAck)
			if err := c.client.XAck(work, c.stream, c.group, msg.ID).Err(); err != nil {
				// Pending still: reclaimed, then replayed and acknowledged.
				c.log.WarnContext(work, "consumer: XACK failed", "entry", msg.ID, "err", err)
			}
		}
		cancel()
	}
}

// checkpoint calls pause, when set, at point.
func (c *streamConsumer) checkpoint(point string) {
	if c.pause != nil {
		c.pause(point)
	}
}
