package idempotency

import (
	"context"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
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

// forgottenFor is how long, at least, the marker of a key deleted while in
// flight stays: the deleted request may run on for long after its lease
// would have ended (its renewals stop at the first refusal), and its
// completion must find the marker, not an empty key that it would take.
const forgottenFor = 24 * time.Hour

// deleteScript forgets a key. An in-flight record is replaced by the
// marker of a forgotten key (see redis_codec.go), kept for the rest of its
// lease and at least ARGV[3] ms, so that its token owns nothing: an empty
// key would let the deleted request's completion land (the complete script
// takes a key that holds nothing, SPEC 23). Anything else is deleted.
// KEYS[1] is the record key; ARGV[1] the start of every in-flight record
// (version, InFlight), ARGV[2] the marker.
// Replies 0 when the key held no record (nothing, or the marker), 1 when
// it was deleted, 2 when an in-flight record was replaced by the marker.
// STRLEN goes through pcall: a value of another type is simply deleted.
var deleteScript = redis.NewScript(`
local n = redis.pcall('STRLEN', KEYS[1])
if type(n) == 'number' and n > 0 then
  local head = redis.call('GETRANGE', KEYS[1], 0, 1)
  if n == #ARGV[2] and head == ARGV[2] then
    return 0
  end
  if head == ARGV[1] then
    local left = redis.call('PTTL', KEYS[1])
    redis.call('SET', KEYS[1], ARGV[2], 'PX', math.max(left, tonumber(ARGV[3])))
    return 2
  end
end
return redis.call('DEL', KEYS[1])
`)

// Delete implements [Store]: one round trip. A completed record is
// deleted. An in-flight record is replaced by a two-byte marker that no
// token owns and that the next acquisition takes like a free key, kept for
// the rest of the deleted request's lease and at least a day: the deleted
// request's completion, release and renewals return [ErrNotOwner] until
// then, where an empty key would let its completion land (see
// docs/redis.md). Delete returns [ErrNoRecord] when the key held no record
// (or only such a marker) and this instance had none cached or pending.
//
// It also drops the record from this instance's local cache and a
// completion of it still pending here; other instances that cached it may
// replay it until it leaves their caches, at most a minute by default (see
// [WithRedisLocalCacheMaxAge]).
func (s *RedisStore) Delete(ctx context.Context, key string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	n, err := deleteScript.Run(ctx, s.client, []string{s.redisKey(key)},
		inFlightPrefix, forgottenValue, millis(forgottenFor)).Int64()
	// After the script: dropped before it, the record could be cached
	// again from Redis in between. Dropped even when the script failed.
	cached := s.cache != nil && s.cache.forget(key)
	pending := s.forgetAnswer(key)
	switch {
	case err != nil:
		return fmt.Errorf("idempotency: redis delete: %w", err)
	case n == 0 && !cached && !pending:
		return ErrNoRecord
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
