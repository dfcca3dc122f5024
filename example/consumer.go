package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
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
	// readFrom is where the next XREADGROUP starts: ">", the new entries;
	// after the store failed, "0" or the last entry read again: this
	// consumer's own pending entries, applied again before any new one.
	readFrom string
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
// pending for one lease (min-idle, the lease of runner's keys). A live
// consumer renews its key's lease, so an entry it is applying is found in
// flight and left pending again. A dead consumer's key is free one lease
// after its last renewal, and it took the key after the entry's delivery:
// the first reclaim, one min-idle after the delivery, usually finds the
// key still held, and the next one, one min-idle later, applies the event.
// A dead consumer's entry is thus applied up to about two leases after its
// delivery (after its death, when the consumer died later).
func newStreamConsumer(client redis.UniversalClient, stream, name string, runner *idempotency.Runner, reqs requisitionCreator, lease time.Duration) *streamConsumer {
	return &streamConsumer{
		client: client, stream: stream, group: consumerGroup, name: name, runner: runner, reqs: reqs,
		batch: 16, block: 2 * time.Second, minIdle: lease, retry: time.Second,
		log:       slog.Default().With("stream", stream, "group", consumerGroup, "consumer", name),
		claimFrom: "0-0", readFrom: ">",
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
	outcomeApplied     outcome = iota + 1 // the event ran now: one requisition created
	outcomeReplayed                       // an earlier delivery applied it; nothing ran
	outcomeRefused                        // the event can never be applied (kept, see refusedEventError)
	outcomeMismatch                       // its event id was used with other fields: a poisoned id
	outcomeMalformed                      // the entry has no event id
	outcomeInFlight                       // another consumer is applying it now
	outcomeFailed                         // the function failed: the requisition was not written
	outcomeStoreFailed                    // the idempotency store failed (down, its circuit open)
)

// acknowledged reports whether the entry is done with (XACK). An entry in
// flight elsewhere or whose function failed stays pending, and is
// reclaimed one min-idle later; one whose store failed stays pending too,
// and the consumer stops until the store answers (see process).
func (o outcome) acknowledged() bool {
	switch o {
	case outcomeApplied, outcomeReplayed, outcomeRefused, outcomeMismatch, outcomeMalformed:
		return true
	default: // outcomeInFlight, outcomeFailed, outcomeStoreFailed
		return false
	}
}

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
	var applyErr error // the function's own error: Do's other errors are the store's
	res, err := c.runner.Do(ctx, call, func(ctx context.Context, tx idempotency.Tx) ([]byte, error) {
		value, err := c.apply(ctx, tx, ev)
		applyErr = err
		return value, err
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
	case applyErr != nil:
		log.ErrorContext(ctx, "consumer: applying the event failed; left pending", "err", err)
		return outcomeFailed
	}
	log.ErrorContext(ctx, "consumer: the idempotency store failed; left pending", "err", err)
	return outcomeStoreFailed
}

// apply is the function the Runner runs for ev: it creates the
// requisition, through tx when the store has one.
func (c *streamConsumer) apply(ctx context.Context, tx idempotency.Tx, ev requisitionEvent) ([]byte, error) {
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
}

// errStoreFailed is the error of a batch that stopped at an entry whose
// idempotency store failed.
var errStoreFailed = errors.New("the idempotency store failed")

// process handles msgs in order and acknowledges each one that is done
// with. It stops at the first entry whose store failed and returns
// errStoreFailed: that entry and the next ones stay pending, the consumer
// waits (run), and it applies its own pending entries again (readFrom "0")
// before it reads new ones, so that an outage does not deliver the whole
// backlog to fail it. Once ctx is done it starts no other entry: those
// stay pending, and are reclaimed.
func (c *streamConsumer) process(ctx context.Context, msgs []redis.XMessage) error {
	for _, msg := range msgs {
		if ctx.Err() != nil {
			return nil
		}
		work, cancel := context.WithTimeout(context.WithoutCancel(ctx), applyTimeout)
		o := c.handle(work, msg)
		if o.acknowledged() {
			c.checkpoint(pointBeforeAck)
			if err := c.client.XAck(work, c.stream, c.group, msg.ID).Err(); err != nil {
				// Pending still: reclaimed, then replayed and acknowledged.
				c.log.WarnContext(work, "consumer: XACK failed", "entry", msg.ID, "err", err)
			}
		}
		cancel()
		if o == outcomeStoreFailed {
			c.readFrom = "0"
			return fmt.Errorf("entry %s: %w", msg.ID, errStoreFailed)
		}
	}
	return nil
}

// checkpoint calls pause, when set, at point.
func (c *streamConsumer) checkpoint(point string) {
	if c.pause != nil {
		c.pause(point)
	}
}
