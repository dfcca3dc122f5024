package idempotency

import (
	"context"
	"fmt"
	"time"
)

// redisKey is the Redis key of a record: the record's key is the hash tag,
// so each record maps to one Cluster slot of its own.
func (s *RedisStore) redisKey(key string) string {
	return s.prefix + "{" + key + "}"
}

// Cached implements [CachingStore]: the completed record for key in this
// instance's local cache, or the record of a completion of key that the
// middleware is still retrying on this instance (even with the cache off),
// or nil.
func (s *RedisStore) Cached(key string) *Record {
	if held := s.pendingAnswer(key); held != nil {
		return held
	}
	if s.cache == nil {
		return nil
	}
	return s.cache.peek(key)
}

// Delete implements [Store]: one round trip, a DEL of the record's key,
// whatever it holds. It also drops the record from this instance's local
// cache and a completion of it still pending here (which lands if it is
// retried after the DEL, the key then holding nothing); other instances that cached it may replay it until it leaves
// their caches, at most a minute by default (see
// [WithRedisLocalCacheMaxAge]).
func (s *RedisStore) Delete(ctx context.Context, key string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	err := s.client.Del(ctx, s.redisKey(key)).Err()
	if s.cache != nil {
		// After the DEL: dropped before it, the record could be cached
		// again from Redis in between. Dropped even when the DEL failed.
		s.cache.forget(key)
	}
	s.forgetAnswer(key)
	if err != nil {
		return fmt.Errorf("idempotency: redis delete: %w", err)
	}
	return nil
}

// millis converts d to whole milliseconds for PX and PEXPIRE, rounding up
// and at least 1: Redis refuses an expiry of 0.
func millis(d time.Duration) int64 {
	ms := d.Milliseconds()
	if d%time.Millisecond > 0 {
		ms++
	}
	return max(ms, 1)
}

// replyInt reads the integer at index i of a script's array reply.
func replyInt(reply []any, i int) (int64, bool) {
	if i >= len(reply) {
		return 0, false
	}
	n, ok := reply[i].(int64)
	return n, ok
}
