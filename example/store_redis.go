package main

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ginidem/idempotency"
)

// newRedisStore returns an idempotency store on the Redis server at rawURL
// (redis://[user:password@]host:port/db, see redis.ParseURL), with a
// function that closes its client.
//
// A server that does not answer yet is only logged: until it does, writes
// with a key get 503 (the middleware fails closed), and they work again,
// without a restart, once it is back.
func newRedisStore(rawURL string) (idempotency.Store, func() error, error) {
	opts, err := redis.ParseURL(rawURL)
	if err != nil {
		return nil, nil, fmt.Errorf("redis URL: %w", err)
	}
	// Let the middleware's per-call deadline bound socket reads and writes
	// too (see idempotency.NewRedisStore); ParseURL leaves it off.
	opts.ContextTimeoutEnabled = true
	client := redis.NewClient(opts)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := client.Ping(ctx).Err(); err != nil {
		slog.Warn("redis not reachable yet; writes with a key get 503 until it is", "addr", opts.Addr, "err", err)
	}
	return idempotency.NewRedisStore(client), client.Close, nil
}
