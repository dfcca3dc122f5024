package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ginidem/idempotency"
)

// run consumes the stream until ctx is done: it joins the group (creating
// it and the stream when missing), then, each round, reclaims the entries
// left pending for minIdle by any consumer of the group, this one included
// (XAUTOCLAIM), and reads new ones (XREADGROUP ... BLOCK). A failed Redis
// call, or an entry whose store failed, is logged and tried again after
// retry; a NOGROUP error (the stream was deleted, or Redis lost its data)
// joins the group again. run returns only once ctx is done. On its way out
// it leaves the group when nothing is pending for it.
func (c *streamConsumer) run(ctx context.Context) {
	defer c.leave(context.WithoutCancel(ctx))
	grouped := false
	for ctx.Err() == nil {
		var err error
		if !grouped {
			err = c.join(ctx)
			grouped = err == nil
		}
		if err == nil {
			err = c.round(ctx)
		}
		if err != nil && ctx.Err() == nil {
			// The errors are wrapped: HasErrorPrefix unwraps them.
			if redis.HasErrorPrefix(err, "NOGROUP") { // the stream, and its group, are gone
				grouped = false
			}
			c.log.WarnContext(ctx, "consumer: round failed; trying again", "err", err, "in", c.retry)
			sleep(ctx, c.retry)
		}
	}
}

// round reclaims one batch of entries idle for minIdle and applies them,
// then reads one batch of entries and applies them. The read waits up to
// block for new entries only when XAUTOCLAIM has scanned the whole pending
// list: while there is more to claim, the next round comes at once. A
// failed XAUTOCLAIM does not keep round from reading; an entry whose store
// failed does (see process).
func (c *streamConsumer) round(ctx context.Context) error {
	more, claimErr := c.reclaim(ctx)
	if errors.Is(claimErr, errStoreFailed) {
		return claimErr
	}
	block := c.block
	if more {
		block = -1 // no BLOCK
	}
	return errors.Join(claimErr, c.read(ctx, block))
}

// reclaim claims one batch of the entries left pending for minIdle by any
// consumer of the group (XAUTOCLAIM) and applies them. more reports that
// the scan of the pending list is not over: XAUTOCLAIM's cursor is not
// back at "0-0".
func (c *streamConsumer) reclaim(ctx context.Context) (more bool, err error) {
	claimed, next, err := c.client.XAutoClaim(ctx, &redis.XAutoClaimArgs{
		Stream: c.stream, Group: c.group, Consumer: c.name,
		MinIdle: c.minIdle, Start: c.claimFrom, Count: c.batch,
	}).Result()
	if err != nil {
		return false, fmt.Errorf("XAUTOCLAIM: %w", err)
	}
	c.claimFrom = next // "0-0" once the whole pending list was scanned: start again
	return next != "0-0", c.process(ctx, claimed)
}

// read reads one batch of entries from readFrom (XREADGROUP) and applies
// them: new entries, waiting up to block for them, or, after the store
// failed, this consumer's own pending entries, from the first one on,
// until none is left to read again.
func (c *streamConsumer) read(ctx context.Context, block time.Duration) error {
	from := c.readFrom
	if from != ">" {
		block = -1 // pending entries are there or not: nothing to wait for
	}
	streams, err := c.client.XReadGroup(ctx, &redis.XReadGroupArgs{
		Group: c.group, Consumer: c.name, Streams: []string{c.stream, from},
		Count: c.batch, Block: block,
	}).Result()
	switch {
	case errors.Is(err, redis.Nil): // nothing new within block
		return nil
	case err != nil:
		return fmt.Errorf("XREADGROUP: %w", err)
	}
	var msgs []redis.XMessage
	for _, s := range streams {
		msgs = append(msgs, s.Messages...)
	}
	if from != ">" {
		if len(msgs) == 0 { // every pending entry was read again: new ones next
			c.readFrom = ">"
			return nil
		}
		c.readFrom = msgs[len(msgs)-1].ID
	}
	return c.process(ctx, msgs)
}

// join creates the group, reading the stream from its first entry, and
// the stream when it does not exist yet; a group that exists is joined as
// it is. Events added before the first consumer started are applied too.
// Joining starts the scans of the pending entries over: after a NOGROUP,
// the cursors of the lost group mean nothing in the new one.
func (c *streamConsumer) join(ctx context.Context) error {
	err := c.client.XGroupCreateMkStream(ctx, c.stream, c.group, "0").Err()
	if err != nil && !redis.HasErrorPrefix(err, "BUSYGROUP") {
		return fmt.Errorf("XGROUP CREATE: %w", err)
	}
	c.claimFrom, c.readFrom = "0-0", ">"
	return nil
}

// leave deletes this consumer from the group when no entry is pending for
// it, so that the group does not collect the names of stopped processes.
// Entries still pending for it stay, and the others reclaim them.
func (c *streamConsumer) leave(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	pending, err := c.client.XPendingExt(ctx, &redis.XPendingExtArgs{
		Stream: c.stream, Group: c.group, Consumer: c.name, Start: "-", End: "+", Count: 1,
	}).Result()
	if err != nil || len(pending) > 0 {
		return
	}
	if err := c.client.XGroupDelConsumer(ctx, c.stream, c.group, c.name).Err(); err != nil {
		c.log.WarnContext(ctx, "consumer: leaving the group", "err", err)
	}
}

// sleep waits d, or until ctx is done.
func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// consumerName names this process in the group: host and process id.
func consumerName() string {
	host, err := os.Hostname()
	if err != nil {
		host = "example"
	}
	return host + "-" + strconv.Itoa(os.Getpid())
}

// startConsumer starts, when cfg names a stream (-consume), a consumer of
// it on cfg.RedisURL that applies its events to reqs, with records in
// store (Redis with -redis, Postgres with -postgres too). The function it
// returns stops the consumer (the entry being applied finishes first) and
// waits for it; without -consume it does nothing.
func startConsumer(ctx context.Context, cfg config, store idempotency.Store, reqs repository) (stop func(), err error) {
	if cfg.ConsumeStream == "" {
		return func() {}, nil
	}
	creator, ok := reqs.(requisitionCreator)
	if !ok {
		return nil, fmt.Errorf("consume: the requisitions (%T) cannot apply events", reqs)
	}
	opts, err := redis.ParseURL(cfg.RedisURL)
	if err != nil {
		return nil, fmt.Errorf("redis URL: %w", err)
	}
	opts.ContextTimeoutEnabled = true // the consumer's deadlines bound socket reads and writes
	client := redis.NewClient(opts)
	runnerOpts := []idempotency.Option{idempotency.WithTTL(cfg.TTL), idempotency.WithLease(cfg.Lease)}
	if !cfg.Breaker {
		runnerOpts = append(runnerOpts, idempotency.WithCircuitBreaker(0, 0))
	}
	c := newStreamConsumer(client, cfg.ConsumeStream, consumerName(), newConsumerRunner(store, runnerOpts...), creator, cfg.Lease)
	slog.Info("example consuming", "stream", c.stream, "group", c.group, "consumer", c.name, "redis", cfg.redisName())

	stopConsumer := c.start(ctx)
	return func() {
		stopConsumer()
		_ = client.Close()
	}, nil
}

// start runs c in a goroutine until ctx is done or stop is called. stop
// waits for run to return: the entry being applied finishes first.
func (c *streamConsumer) start(ctx context.Context) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.run(ctx)
	}()
	return func() {
		cancel()
		<-done
	}
}
