package idempotency

import "time"

// DefaultRedisMaxRecordSize is the default largest record a [RedisStore]
// writes or reads: room for the middleware's default 1 MiB body cap plus
// 64 KiB of fingerprint, route and headers.
const DefaultRedisMaxRecordSize = 1<<20 + 64<<10

// RedisStoreOption configures a [RedisStore].
type RedisStoreOption func(*RedisStore)

// WithRedisKeyPrefix sets the prefix of every key a [RedisStore] writes
// (default "idem:"). Give each service its own prefix when services share a
// Redis. The prefix must not contain '{' or '}': Redis Cluster would hash
// the prefix's braces instead of the record's key, and put every record in
// one slot.
//
//	store := idempotency.NewRedisStore(rdb, idempotency.WithRedisKeyPrefix("orders:idem:"))
func WithRedisKeyPrefix(prefix string) RedisStoreOption {
	return func(s *RedisStore) { s.prefix = prefix }
}

// WithRedisMaxRecordSize bounds the encoded size of a record, in bytes
// (default [DefaultRedisMaxRecordSize]). Acquire refuses to decode a larger
// value under a record's key ([ErrCorruptRecord]) without reading it out of
// Redis. Complete stores a completed record that would be larger without
// its body, as if the body had been over the middleware's cap: duplicates
// get 409 with the stored Location instead of a replay. Keep it above the
// middleware's body cap. Values below 1 are ignored.
func WithRedisMaxRecordSize(n int) RedisStoreOption {
	return func(s *RedisStore) {
		if n > 0 {
			s.maxSize = n
		}
	}
}

// WithRedisLocalCache bounds the in-process cache of completed records in
// front of Redis (default 10,000 records and 32 MiB; 0 and 0 turn it off).
// A completed record never changes until it expires, so a replay, a
// mismatch or a 409 for a record this process has seen is answered from the
// cache, without a round trip; each cached record expires no later than its
// Redis copy, and at most a minute after it was read
// ([WithRedisLocalCacheMaxAge]). A new key and an in-flight check always go
// to Redis. The cache is a [MemoryStore]: least recently used records go
// first. [RedisStore.Delete] drops a record from this process's cache only:
// turn the cache off where an operator deletes keys and every replica must
// forget them at once.
func WithRedisLocalCache(maxEntries int, maxBytes int64) RedisStoreOption {
	return func(s *RedisStore) { s.cacheEntries, s.cacheBytes = maxEntries, maxBytes }
}

// WithRedisClock replaces the clock of a [RedisStore]'s local cache, for
// tests that move time forward on Redis. Redis keeps its own time for every
// expiry it enforces.
func WithRedisClock(now func() time.Time) RedisStoreOption {
	return func(s *RedisStore) {
		if now != nil {
			s.now = now
		}
	}
}
