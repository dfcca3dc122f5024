package pgstore

import (
	"container/list"
	"sync"
	"time"

	"github.com/ginidem/idempotency"
)

// cache is the store's bounded, in-process cache of completed records, by
// entries and bytes, least recently used first out. A completed record
// never changes until it expires or is deleted, so a hit answers a replay,
// a mismatch or a 409 without a round trip. Each entry expires at the
// earliest of its row's expiry and maxAge after it was read, which bounds
// how long a row deleted by another process can still be answered here.
type cache struct {
	mu         sync.Mutex
	entries    map[string]*list.Element // of *cacheEntry
	lru        list.List                // front: most recently used
	bytes      int64
	maxEntries int
	maxBytes   int64
	maxAge     time.Duration
}

type cacheEntry struct {
	key     string
	rec     *idempotency.Record // read-only: shared by every hit
	size    int64
	expires time.Time
}

func newCache(maxEntries int, maxBytes int64, maxAge time.Duration) *cache {
	return &cache{entries: make(map[string]*list.Element), maxEntries: maxEntries, maxBytes: maxBytes, maxAge: maxAge}
}

// get returns the live record cached for key, or nil.
func (c *cache) get(key string, now time.Time) *idempotency.Record {
	c.mu.Lock()
	defer c.mu.Unlock()
	el := c.entries[key]
	if el == nil {
		return nil
	}
	e := el.Value.(*cacheEntry)
	if !now.Before(e.expires) {
		c.remove(el)
		return nil
	}
	c.lru.MoveToFront(el)
	return e.rec
}

// put caches rec, a completed record read or written at readAt, for key.
// rec.ExpiresAt is the row's expiry on the same clock as readAt.
func (c *cache) put(key string, rec *idempotency.Record, readAt time.Time) {
	expires := readAt.Add(c.maxAge)
	if rec.ExpiresAt.Before(expires) {
		expires = rec.ExpiresAt
	}
	size := recordSize(key, rec)
	c.mu.Lock()
	defer c.mu.Unlock()
	if el := c.entries[key]; el != nil {
		c.remove(el)
	}
	if !readAt.Before(expires) || size > c.maxBytes {
		return
	}
	for c.lru.Len() > 0 && (c.lru.Len() >= c.maxEntries || c.bytes+size > c.maxBytes) {
		c.remove(c.lru.Back())
	}
	c.entries[key] = c.lru.PushFront(&cacheEntry{key: key, rec: rec, size: size, expires: expires})
	c.bytes += size
}

// forget drops key from the cache.
func (c *cache) forget(key string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el := c.entries[key]; el != nil {
		c.remove(el)
	}
}

func (c *cache) remove(el *list.Element) {
	e := c.lru.Remove(el).(*cacheEntry)
	delete(c.entries, e.key)
	c.bytes -= e.size
}

// recordSize approximates the memory a cached record takes.
func recordSize(key string, rec *idempotency.Record) int64 {
	n := 200 + len(key) + len(rec.Token) + len(rec.Fingerprint) + len(rec.Method) + len(rec.Path) + len(rec.Body)
	for name, values := range rec.Header {
		n += 32 + len(name)
		for _, v := range values {
			n += 16 + len(v)
		}
	}
	return int64(n)
}
