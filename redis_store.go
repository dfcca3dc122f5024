package idempotency

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ginidem/idempotency/internal/wire"
)

// RedisStore is a [Store] on Redis: a single node, Sentinel (a failover
// client) or Cluster. Every replica of a service that uses one RedisStore
// configuration on one Redis shares the same records, so a retry may land
// on any replica.
//
// Each record is one Redis string under <prefix>{<key>}: the key is a hash
// tag, so a record never spans Cluster slots. Leases and record lifetimes
// are Redis' own expiry (PX), so a process that dies holds a key for at most
// one lease. A new key is acquired with one plain SET NX; every other step
// is one Lua script, run with EVALSHA (EVAL when the server's script cache
// lacks it): a first request costs two round trips (Acquire, Complete), a
// replay or a conflict two when the local cache does not have it (SET NX,
// then the script that reads the record), a replay in the cache none.
//
// A RedisStore is safe for concurrent use; it does not own the client and
// never closes it. Besides its configuration it holds a bounded local cache
// of completed records, the acquisitions that timed out and the releases
// that failed, which it releases when Redis answers again, and the
// completions the middleware still retries, which it replays to a retry on
// this process.
type RedisStore struct {
	client  redis.UniversalClient
	prefix  string
	maxSize int
	now     func() time.Time
	cache   *MemoryStore // completed records seen here; nil when off
	// cache bounds, read when the store is built
	cacheEntries int
	cacheBytes   int64
	orphans      orphans // timed-out acquisitions and failed releases to release
	answers      answers // completions still retried, for a retry on this process
	cacheMaxAge  time.Duration
	waitReplicas int // WAIT for this many replicas after Acquire and Complete; 0: no WAIT
	waitTimeout  time.Duration
}

// NewRedisStore returns a [RedisStore] on client: a *redis.Client,
// *redis.ClusterClient, failover client or any other
// [redis.UniversalClient]. It panics when client is nil.
//
// Create the client with ContextTimeoutEnabled: true (in redis.Options,
// redis.ClusterOptions, redis.FailoverOptions or redis.UniversalOptions).
// The middleware gives every store call a deadline (1 s by default), and
// go-redis applies a context's deadline to socket reads and writes only when
// that option is set. Without it, go-redis still stops dialing, pool waits
// and retries at the deadline, but waits for a reply from a slow or paused
// server for ReadTimeout (5 s by default in go-redis v9.23) regardless of
// the context. redis.ParseURL does not set it for redis:// URLs: set it on
// the parsed options. Keep ReadTimeout and WriteTimeout set as a backstop.
// A server that is down is redialed and the command retried (MaxRetries,
// DialerRetries) until the deadline, so such a call fails at its deadline;
// lower them to fail sooner.
//
//	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379", ContextTimeoutEnabled: true})
//	defer rdb.Close()
//	r.Use(idempotency.New(idempotency.WithStore(idempotency.NewRedisStore(rdb))))
func NewRedisStore(client redis.UniversalClient, opts ...RedisStoreOption) *RedisStore {
	if client == nil {
		panic("idempotency: NewRedisStore with a nil client")
	}
	s := &RedisStore{client: client, prefix: "idem:", maxSize: DefaultRedisMaxRecordSize, now: time.Now,
		cacheEntries: 10_000, cacheBytes: 32 << 20, cacheMaxAge: defaultRedisCacheMaxAge}
	for _, opt := range opts {
		opt(s)
	}
	if s.cacheEntries > 0 && s.cacheBytes > 0 {
		s.cache = NewMemoryStore(WithMaxEntries(s.cacheEntries), WithMaxBytes(s.cacheBytes), WithClock(s.now))
	}
	return s
}

// Validate returns an error unless s was made by [NewRedisStore]; [WithStore]
// refuses a nil or zero RedisStore with it.
func (s *RedisStore) Validate() error {
	if s == nil || s.client == nil {
		return errors.New("a nil or zero RedisStore (no client): make it with NewRedisStore")
	}
	return nil
}

// completeScript stores the completed record of a token: over the
// in-flight record the token owns, or under a key that holds nothing, as
// when that in-flight record expired during an outage longer than the
// lease and no other request took the key meanwhile (SPEC 23).
// KEYS[1] is the record key; ARGV[1] the owner's record head (version,
// InFlight, token), ARGV[2] the completed record, which starts with the
// head of the record this token completed (version, Completed, token),
// ARGV[3] its ttl in ms. Replies 1 when stored, 2 when this very record is
// already stored by this token (a retry after a lost reply, or to wait for
// replicas again), 0 when the key holds anything else: another token's
// record, another record of this token, or the marker an operator's Delete
// left in place of the token's in-flight record (pcall: a key of another
// type is simply not owned). A completion runs two commands, GETRANGE and
// SET; the rest only when the token does not own the key. GETRANGE's range
// is written as strings ('17' is recordHeadLen-1): Redis 7.0 turns a Lua
// number argument into a string with snprintf, a tenth of the script's
// instructions for two numbers.
var completeScript = redis.NewScript(`
local head = redis.pcall('GETRANGE', KEYS[1], '0', '17')
if head == ARGV[1] or (head == '' and redis.call('EXISTS', KEYS[1]) == 0) then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
if head == string.sub(ARGV[2], 1, #ARGV[1]) and redis.call('GET', KEYS[1]) == ARGV[2] then
  return 2
end
return 0
`)

// Complete implements [Store]: one round trip. It also stores the record
// when the key holds nothing: the token's in-flight record expired (an
// outage longer than the lease) and nobody took the key, so the request
// that ran is still the only one.
// It returns [ErrNotOwner] when the key holds another token's record, or
// the marker of an in-flight record deleted by [RedisStore.Delete]. A
// record that would exceed the maximum record size is stored without its
// body (see [WithRedisMaxRecordSize]). So is a record with more than 64
// headers, 256 header values or 64 KiB of header names and values, or with
// an invalid or non-canonical header name or an invalid value: it keeps
// only its Location header, so that duplicates get 409 with it.
func (s *RedisStore) Complete(ctx context.Context, key, token string, rec *Record, ttl time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	owner, ok := parseRedisToken(token)
	if !ok {
		return ErrNotOwner
	}
	stored, value, err := s.completedValue(owner, rec)
	if err != nil {
		return err
	}
	start := s.now()
	cmd, replicated := s.runScript(ctx, completeScript, key, ownerHead(owner), value, millis(ttl))
	n, err := cmd.Int64()
	switch {
	case err != nil:
		return fmt.Errorf("idempotency: redis complete: %w", err)
	case n == 0:
		return ErrNotOwner
	case replicated != nil:
		return fmt.Errorf("idempotency: redis complete: %w", replicated)
	}
	if s.cache != nil {
		kept := *stored
		kept.State, kept.Token = Completed, token
		kept.ExpiresAt = start.Add(min(ttl, s.cacheMaxAge)) // what cacheRecord caps it to: no second copy
		s.cache.keep(key, &kept)
	}
	return nil
}

// completedValue returns the record Complete stores for rec, and its
// encoding.
func (s *RedisStore) completedValue(owner redisToken, rec *Record) (*Record, []byte, error) {
	stored := rec
	if !wire.HeaderWithinBounds(rec.Header) {
		stored = withoutBody(rec, wire.LocationOnly(rec.Header)) // rather than a value Acquire refuses
	}
	value := encodeRecord(Completed, owner, stored)
	if len(value) > s.maxSize && !stored.BodyOmitted {
		stored = withoutBody(stored, stored.Header)
		value = encodeRecord(Completed, owner, stored)
	}
	if len(value) > s.maxSize {
		return nil, nil, fmt.Errorf("idempotency: redis complete: record of %d bytes without body exceeds the maximum record size %d", len(value), s.maxSize)
	}
	return stored, value, nil
}

// releaseScript deletes the in-flight record owned by a token.
// KEYS[1] is the record key; ARGV[1] the owner's record head.
// Replies 1 when deleted, 0 when the token does not own an in-flight record
// (as when the key holds the marker of a deleted one).
var releaseScript = redis.NewScript(`
if redis.pcall('GETRANGE', KEYS[1], 0, #ARGV[1] - 1) ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[1])
return 1
`)

// Release implements [Store]: one round trip.
func (s *RedisStore) Release(ctx context.Context, key, token string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	owner, ok := parseRedisToken(token)
	if !ok {
		return ErrNotOwner
	}
	n, err := releaseScript.Run(ctx, s.client, []string{s.redisKey(key)}, ownerHead(owner)).Int64()
	if err != nil {
		return fmt.Errorf("idempotency: redis release: %w", err)
	}
	if n != 1 {
		return ErrNotOwner
	}
	return nil
}

// extendScript renews the lease of the in-flight record owned by a token.
// KEYS[1] is the record key; ARGV[1] the owner's record head, ARGV[2] the
// new lease in ms. Replies 1 when renewed, 0 when the token does not own an
// in-flight record (as when the key holds the marker of a deleted one).
var extendScript = redis.NewScript(`
if redis.pcall('GETRANGE', KEYS[1], 0, #ARGV[1] - 1) ~= ARGV[1] then
  return 0
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
`)

// Extend implements [Store]: one round trip.
func (s *RedisStore) Extend(ctx context.Context, key, token string, lease time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	owner, ok := parseRedisToken(token)
	if !ok {
		return ErrNotOwner
	}
	n, err := extendScript.Run(ctx, s.client, []string{s.redisKey(key)}, ownerHead(owner), millis(lease)).Int64()
	if err != nil {
		return fmt.Errorf("idempotency: redis extend: %w", err)
	}
	if n != 1 {
		return ErrNotOwner
	}
	return nil
}

var _ CachingStore = (*RedisStore)(nil)
