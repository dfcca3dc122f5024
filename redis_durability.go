package idempotency

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// ErrNotReplicated is returned by [RedisStore.Acquire] and
// [RedisStore.Complete] when the store waits for replicas
// ([WithRedisWaitReplicas]) and fewer acknowledged the write in time. The
// middleware answers a failed acquisition with 503 (the key is released
// first) and retries a failed completion with the lease renewed.
var ErrNotReplicated = errors.New("idempotency: the write reached fewer Redis replicas than required")

// WithRedisWaitReplicas makes Acquire and Complete wait until n replicas
// have the write (Redis WAIT n timeout), so that a failover to one of them
// forgets neither a lease nor a completed record: without it, a record that
// lives only in the master's memory is lost with it, and the next retry
// runs the handler again. WAIT is pipelined with the script, so it costs no
// extra round trip, only the replication delay. Keep timeout well below
// the middleware's store timeout (1 s by default). With Redis Cluster the
// pipeline goes to the master of the record's slot.
//
//	store := idempotency.NewRedisStore(rdb, idempotency.WithRedisWaitReplicas(1, 100*time.Millisecond))
func WithRedisWaitReplicas(n int, timeout time.Duration) RedisStoreOption {
	if n < 0 {
		panic(fmt.Sprintf("idempotency: WithRedisWaitReplicas needs n >= 0, got %d", n))
	}
	if n > 0 {
		mustPositive("Redis WAIT timeout", timeout)
	}
	return func(s *RedisStore) { s.waitReplicas, s.waitTimeout = n, timeout }
}

// WithRedisLocalCacheMaxAge bounds how long the local cache serves a record
// after it last read or wrote it in Redis (default 1 minute): a record
// Redis has lost (a failover without WAIT, a restart without persistence,
// an operator's delete on another replica) is replayed from a local cache
// for at most this long. Values below 1 are ignored.
func WithRedisLocalCacheMaxAge(d time.Duration) RedisStoreOption {
	return func(s *RedisStore) {
		if d > 0 {
			s.cacheMaxAge = d
		}
	}
}

// defaultRedisCacheMaxAge is the default of [WithRedisLocalCacheMaxAge].
const defaultRedisCacheMaxAge = time.Minute

// cacheRecord keeps a completed record in the local cache, until its Redis
// expiry or the cache's maximum age, whichever comes first; a record served
// from the cache reports that as its ExpiresAt.
func (s *RedisStore) cacheRecord(key string, rec *Record, now time.Time) {
	if s.cache == nil {
		return
	}
	if limit := now.Add(s.cacheMaxAge); rec.ExpiresAt.After(limit) {
		capped := *rec
		capped.ExpiresAt = limit
		rec = &capped
	}
	s.cache.keep(key, rec)
}

// scriptPipeliner is what a store pipelines a script and WAIT on.
type scriptPipeliner interface {
	Pipelined(ctx context.Context, fn func(redis.Pipeliner) error) ([]redis.Cmder, error)
}

// runScript runs script on the record key, one round trip. When the store
// waits for replicas, WAIT goes in the same pipeline, and a shortfall is an
// error wrapping ErrNotReplicated, returned with the script's reply.
func (s *RedisStore) runScript(ctx context.Context, script *redis.Script, key string, args ...any) (*redis.Cmd, error) {
	keys := []string{s.redisKey(key)}
	if s.waitReplicas == 0 {
		return script.Run(ctx, s.client, keys, args...), nil
	}
	var cmd *redis.Cmd
	replicated, err := s.processWaited(ctx, key, func(p redis.Pipeliner, eval bool) redis.Cmder {
		if eval {
			cmd = script.Eval(ctx, p, keys, args...)
		} else {
			cmd = script.EvalSha(ctx, p, keys, args...)
		}
		return cmd
	})
	if cmd == nil { // not sent: no master for the key
		cmd = redis.NewCmd(ctx)
		cmd.SetErr(err)
	}
	return cmd, replicated
}

// processWaited sends the command that queue adds to a pipeline, then WAIT
// for the store's replicas, in one round trip to the master of key's
// record (on a Cluster too: WAIT has no key). queue is called again with
// eval true when the command was a script's EVALSHA and the server's
// script cache lacked it. It returns the command's error, or the one that
// kept it from being sent, and apart from it a replication shortfall, an
// error wrapping ErrNotReplicated.
func (s *RedisStore) processWaited(ctx context.Context, key string, queue func(p redis.Pipeliner, eval bool) redis.Cmder) (replicated, err error) {
	var target scriptPipeliner = s.client
	cluster, isCluster := s.client.(*redis.ClusterClient)
	if isCluster {
		master, err := cluster.MasterForKey(ctx, s.redisKey(key))
		if err != nil {
			return nil, err
		}
		target = master // WAIT has no key: it must go to the record's master
	}
	run := func(eval bool) (redis.Cmder, *redis.IntCmd) {
		var cmd redis.Cmder
		var wait *redis.IntCmd
		_, _ = target.Pipelined(ctx, func(p redis.Pipeliner) error {
			cmd = queue(p, eval)
			wait = redis.NewIntCmd(ctx, "wait", s.waitReplicas, s.waitTimeout.Milliseconds())
			_ = p.Process(ctx, wait)
			return nil
		})
		return cmd, wait
	}
	cmd, wait := run(false)
	if isCluster && (redis.HasErrorPrefix(cmd.Err(), "MOVED") || redis.HasErrorPrefix(cmd.Err(), "ASK")) {
		// The slot moved (a failover, a resharding) and the node client
		// does not follow redirects: the command did not run. The error
		// goes back (a 503 for an acquisition, a retried completion), and
		// the cluster reloads its slots for the next call.
		cluster.ReloadState(ctx)
		return nil, cmd.Err()
	}
	if redis.HasErrorPrefix(cmd.Err(), "NOSCRIPT") {
		cmd, wait = run(true) // a flushed script cache or a new master: one more round trip
	}
	if err := cmd.Err(); err != nil {
		return nil, err
	}
	if err := wait.Err(); err != nil {
		return fmt.Errorf("%w: WAIT: %w", ErrNotReplicated, err), nil
	}
	if got := wait.Val(); got < int64(s.waitReplicas) {
		return fmt.Errorf("%w: %d of %d replicas within %v", ErrNotReplicated, got, s.waitReplicas, s.waitTimeout), nil
	}
	return nil, nil
}
