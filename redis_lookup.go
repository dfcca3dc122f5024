package idempotency

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// getScript reads a record for an operator, with its remaining time, in
// one round trip, within the size bound.
// Replies: {} no record; {1, record, pttl}; {2, size} too large.
var getScript = redis.NewScript(`
local size = redis.call('STRLEN', KEYS[1])
if size == 0 then return {} end
if size > tonumber(ARGV[1]) then return {2, size} end
return {1, redis.call('GET', KEYS[1]), redis.call('PTTL', KEYS[1])}
`)

// Get implements [Store]: one round trip. CreatedAt is zero: Redis keeps
// no acquisition time.
func (s *RedisStore) Get(ctx context.Context, key string) (*Record, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	start := s.now()
	reply, err := getScript.Run(ctx, s.client, []string{s.redisKey(key)}, s.maxSize).Slice()
	switch {
	case errors.Is(err, redis.Nil):
		return nil, ErrNoRecord
	case err != nil:
		return nil, fmt.Errorf("idempotency: redis get: %w", err)
	case len(reply) == 0:
		return nil, ErrNoRecord
	}
	code, _ := replyInt(reply, 0)
	if code == 2 {
		size, _ := replyInt(reply, 1)
		return nil, fmt.Errorf("%w: %d bytes, more than the maximum record size %d", ErrCorruptRecord, size, s.maxSize)
	}
	raw, ok := reply[1].(string)
	pttl, ok2 := replyInt(reply, 2)
	if code != 1 || len(reply) != 3 || !ok || !ok2 {
		return nil, fmt.Errorf("%w: unexpected reply %v", ErrCorruptRecord, reply)
	}
	rec, err := decodeRecord(raw, s.maxSize)
	if err != nil {
		return nil, err
	}
	rec.ExpiresAt = start.Add(time.Duration(max(pttl, 0)) * time.Millisecond)
	return rec, nil
}
