package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ginidem/idempotency"
)

// run consumes the stream until ctx is done: it joins the group (creating
// it and the stream when missing), then, each round, reclaims the entries
// left pending for minIdle by any consumer of the group, this one included
// (XAUTOCLAIM), and reads new ones (XREADGROUP ... BLOCK). A failed Redis
// call is logged and tried again after retry: run returns only once ctx is
// done. On its way out it leaves the group when nothing is pending for it.
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
			if strings.HasPrefix(err.Error(), "NOGROUP") { // the stream was deleted
				grouped = false
			}
			c.log.WarnContext(ctx, "consumer: redis failed; trying again", "err", err, "in", c.retry)
			sleep(ctx, c.retry)
		}
	}
}

// round reclaims one batch of entries idle for minIdle, applies them, then
// reads one batch of new entries and applies them.
func (c *streamConsumer) round(ctx context.Context) error {
	claimed, next, err := c.client.XAutoClaim(ctx, &redis.XAutoClaimArgs{
		Stream: c.stream, Group: c.group, Consumer: c.name,
		MinIdle: c.minIdle, Start: c.claimFrom, Count: c.batch,
	}).Result()
	if err != nil {
		return fmt.Errorf("XAUTOCLAIM: %w", err)
	}
	c.claimFrom = next // "0-0" once the whole pending list was scanned: start again
	c.process(ctx, claimed)

	streams, err := c.client.XReadGroup(ctx, &redis.XReadGroupArgs{
		Group: c.group, Consumer: c.name, Streams: []string{c.stream, ">"},
		Count: c.batch, Block: c.block,
	}).Result()
	switch {
	case errors.Is(err, redis.Nil): // nothing new within block
		return nil
	case err != nil:
		return fmt.Errorf("XREADGROUP: %w", err)
	}
	for _, s := range streams {
		c.process(ctx, s.Messages)
	}
	return nil
}

// join creates the group, reading the stream from its first entry, and
// the stream when it does not exist yet; a group that exists is joined as
// it is. Events added before the first consumer started are applied too.
func (c *streamConsumer) join(ctx context.Context) error {
	err := c.client.XGroupCreateMkStream(ctx, c.stream, c.group, "0").Err()
	if err != nil && !strings.HasPrefix(err.Error(), "BUSYGROUP") {
		return fmt.Errorf("XGROUP CREATE: %w", err)
	}
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

	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.run(ctx)
	}()
	return func() {
		cancel()
		<-done
		_ = client.Close()
	}, nil
}
