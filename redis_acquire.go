package idempotency

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Acquire implements [Store]: one round trip for a new key, or none for a
// completed record in the local cache. A value under the key that is not a
// readable record is an error wrapping [ErrCorruptRecord]; Acquire leaves
// it in place.
//
// A new key costs one plain command, SET key claim NX PX lease, which takes
// the key only when nothing holds it. When SET does not take it (the key
// holds a record, the marker of a deleted key or anything else) or Redis
// refuses the write (a full Redis with noeviction refuses every write, even
// to a key that holds a record), the acquire script runs in a second round
// trip: it reads first, so a held key is answered even by a full Redis, and
// takes a free key or a marker. An acquisition that takes over an orphan of
// this process runs the script at once.
func (s *RedisStore) Acquire(ctx context.Context, key string, claim *Record, lease time.Duration) (string, *Record, error) {
	if err := ctx.Err(); err != nil {
		return "", nil, err
	}
	if held := s.Cached(key); held != nil {
		return "", held, nil
	}
	var inFlight Record
	if claim != nil {
		inFlight = Record{Fingerprint: claim.Fingerprint, Method: claim.Method, Path: claim.Path}
	}
	token := newRedisToken()
	value := encodeRecord(InFlight, token, &inFlight)
	if len(value) > s.maxSize {
		return "", nil, fmt.Errorf("idempotency: redis acquire: claim of %d bytes exceeds the maximum record size %d", len(value), s.maxSize)
	}
	orphan, hasOrphan := s.takeOrphan(key)
	if !hasOrphan {
		taken, replicated, err := s.setNX(ctx, key, value, lease)
		switch {
		case err == nil && taken:
			return s.acquired(ctx, key, token, lease, replicated)
		case err == nil, redis.HasErrorPrefix(err, "OOM"):
			// Held, or refused by a full Redis: the script reads first.
		default:
			if maybeApplied(err) {
				s.addOrphan(key, token, time.Now().Add(2*lease)) // SET may run late, when a stalled Redis wakes
			}
			return "", nil, fmt.Errorf("idempotency: redis acquire: %w", err)
		}
	}
	return s.acquireHeld(ctx, key, token, value, lease, orphan, hasOrphan)
}

// setNX takes key for value with SET NX PX: one plain command, pipelined
// with WAIT when the store waits for replicas. It reports whether SET took
// the key, and a replication shortfall apart from the command's error.
func (s *RedisStore) setNX(ctx context.Context, key string, value []byte, lease time.Duration) (taken bool, replicated, err error) {
	cmd := redis.NewBoolCmd(ctx, "set", s.redisKey(key), value, "px", millis(lease), "nx")
	if s.waitReplicas == 0 {
		err = s.client.Process(ctx, cmd)
		return cmd.Val(), nil, err
	}
	replicated, err = s.processWaited(ctx, key, func(p redis.Pipeliner, _ bool) redis.Cmder {
		_ = p.Process(ctx, cmd)
		return cmd
	})
	return cmd.Val(), replicated, err
}

// acquired returns the token of an acquisition, unless too few replicas
// have it: then the lease, which a failover could forget, is given back.
func (s *RedisStore) acquired(ctx context.Context, key string, token redisToken, lease time.Duration, replicated error) (string, *Record, error) {
	if replicated != nil {
		s.giveBack(ctx, key, token, lease)
		return "", nil, fmt.Errorf("idempotency: redis acquire: %w", replicated)
	}
	return token.String(), nil, nil
}

// acquireScript takes a free key or reads the record that holds it. It
// reads before it writes, so that under a full Redis with noeviction a held
// key is still answered (only a new key is refused).
// KEYS[1] is the record key; ARGV[1] the new in-flight record, ARGV[2] the
// lease in ms, ARGV[3] the largest record the caller decodes, ARGV[4] the
// head of an in-flight record of this process whose acquisition timed out
// (an orphan, which this acquisition takes over), or ""; ARGV[5] the marker
// of a key deleted while in flight, which it takes like a free key.
// Replies: {0} acquired; {1, record, pttl} held; {2, size} held by a value
// too large to read; {3} held by a value that is not a string.
// STRLEN goes through pcall because it raises WRONGTYPE on a hash or list.
var acquireScript = redis.NewScript(`
local n = redis.pcall('STRLEN', KEYS[1])
if type(n) ~= 'number' then
  return {3}
end
if (n == 0 and redis.call('EXISTS', KEYS[1]) == 0) or
   (n == #ARGV[5] and redis.call('GET', KEYS[1]) == ARGV[5]) or
   (ARGV[4] ~= '' and redis.call('GETRANGE', KEYS[1], 0, #ARGV[4] - 1) == ARGV[4]) then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return {0}
end
if n > tonumber(ARGV[3]) then
  return {2, n}
end
return {1, redis.call('GET', KEYS[1]), redis.call('PTTL', KEYS[1])}
`)

// acquireHeld runs the acquire script for a key that SET did not take, or
// that an orphan of this process holds.
func (s *RedisStore) acquireHeld(ctx context.Context, key string, token redisToken, value []byte, lease time.Duration, orphan orphan, hasOrphan bool) (string, *Record, error) {
	orphanHead := ""
	if hasOrphan {
		orphanHead = ownerHead(orphan.token)
	}
	start := s.now() // before Redis reads the PTTL: start+PTTL is never past the real expiry
	cmd, replicated := s.runScript(ctx, acquireScript, key, value, millis(lease), s.maxSize, orphanHead, forgottenValue)
	reply, err := cmd.Slice()
	if err != nil {
		if hasOrphan { // still to release, whether Redis answered or not
			s.requeueOrphan(key, orphan)
		}
		if maybeApplied(err) {
			s.addOrphan(key, token, time.Now().Add(2*lease)) // the script may run late, when a stalled Redis wakes
		}
		return "", nil, fmt.Errorf("idempotency: redis acquire: %w", err)
	}
	code, _ := replyInt(reply, 0)
	switch {
	case code == 0 && len(reply) == 1:
		return s.acquired(ctx, key, token, lease, replicated)
	case code == 1 && len(reply) == 3:
		raw, ok := reply[1].(string)
		pttl, ok2 := replyInt(reply, 2)
		if !ok || !ok2 {
			break
		}
		if strings.HasPrefix(raw, ownerHead(token)) {
			// This acquisition's own record: its SET took the key, but
			// the reply was lost and the client sent it again.
			return s.acquired(ctx, key, token, lease, replicated)
		}
		if pttl < 0 {
			return "", nil, fmt.Errorf("%w: the key has no expiry", ErrCorruptRecord)
		}
		held, err := decodeRecord(raw, s.maxSize)
		if err != nil {
			return "", nil, err
		}
		held.ExpiresAt = start.Add(time.Duration(pttl) * time.Millisecond)
		if held.State == Completed {
			s.cacheRecord(key, held, start)
		}
		return "", held, nil
	case code == 2:
		size, _ := replyInt(reply, 1)
		return "", nil, fmt.Errorf("%w: %d bytes, more than the maximum record size %d", ErrCorruptRecord, size, s.maxSize)
	case code == 3:
		return "", nil, fmt.Errorf("%w: the key holds a value that is not a string", ErrCorruptRecord)
	}
	return "", nil, fmt.Errorf("idempotency: redis acquire: unexpected reply %.100v", reply)
}
