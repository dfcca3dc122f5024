package idempotency

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"time"
)

// ErrStoreFull is returned by [MemoryStore.Acquire] when the store is at its
// entry or byte bound and every record in it is in flight, so nothing can be
// evicted. The middleware answers such a request like any store failure.
var ErrStoreFull = errors.New("idempotency: memory store is full of in-flight records")

// MemoryStore is the embedded, bounded, in-process [Store] and the
// middleware's default. It is safe for concurrent use.
//
// It is bounded by entries and bytes: when a new key would exceed a bound,
// expired in-flight records and the expired completed records at the least
// recently used end are reclaimed first, then the least recently used live
// completed records are evicted; live in-flight records are never evicted.
// Expired records are reclaimed lazily, on access and while making room, so
// the store runs no goroutine and needs no Close. Each record is kept
// encoded in one byte slice: a record is three heap objects (its entry,
// key and bytes), of which only the small entry holds pointers, so a full
// store costs the garbage collector little.
//
// A MemoryStore shares keys only within one process; use a Redis store to
// share them between replicas. Make one with [NewMemoryStore]: the zero
// value has no clock and no bounds, and [WithStore] refuses it.
type MemoryStore struct {
	mu         sync.Mutex
	records    map[string]*memoryEntry
	completed  memoryEntry // sentinel of the LRU ring of completed records: next is the most recent
	inFlight   memoryEntry // sentinel of the ring of in-flight records, in no particular order
	bytes      int64
	seq        uint64 // source of fencing tokens: unique within the store
	maxEntries int
	maxBytes   int64
	now        func() time.Time
}

// MemoryStoreOption configures a [MemoryStore].
type MemoryStoreOption func(*MemoryStore)

// WithMaxEntries bounds the number of records a [MemoryStore] keeps
// (default 100,000). Values below 1 are ignored.
func WithMaxEntries(n int) MemoryStoreOption {
	return func(s *MemoryStore) {
		if n > 0 {
			s.maxEntries = n
		}
	}
}

// WithMaxBytes bounds the approximate memory a [MemoryStore] uses for its
// records: keys, fingerprints, headers and bodies (default 64 MiB). Values
// below 1 are ignored.
func WithMaxBytes(n int64) MemoryStoreOption {
	return func(s *MemoryStore) {
		if n > 0 {
			s.maxBytes = n
		}
	}
}

// WithClock replaces the clock a [MemoryStore] uses for leases and expiry,
// for tests.
func WithClock(now func() time.Time) MemoryStoreOption {
	return func(s *MemoryStore) {
		if now != nil {
			s.now = now
		}
	}
}

// NewMemoryStore returns an empty [MemoryStore].
//
//	store := idempotency.NewMemoryStore(idempotency.WithMaxEntries(10_000))
//	r.Use(idempotency.New(idempotency.WithStore(store)))
func NewMemoryStore(opts ...MemoryStoreOption) *MemoryStore {
	s := &MemoryStore{
		records:    make(map[string]*memoryEntry),
		maxEntries: 100_000,
		maxBytes:   64 << 20,
		now:        time.Now,
	}
	for _, opt := range opts {
		opt(s)
	}
	for _, ring := range []*memoryEntry{&s.completed, &s.inFlight} {
		ring.prev, ring.next = ring, ring
	}
	return s
}

// Validate returns an error unless s was made by [NewMemoryStore]; [WithStore]
// refuses a nil or zero MemoryStore with it.
func (s *MemoryStore) Validate() error {
	if s == nil || s.now == nil {
		return errors.New("a nil or zero MemoryStore: make it with NewMemoryStore")
	}
	return nil
}

// Len reports how many records the store holds, expired ones included until
// they are reclaimed.
func (s *MemoryStore) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.records)
}

// Bytes reports the approximate size of the records the store holds.
func (s *MemoryStore) Bytes() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.bytes
}

// Acquire implements [Store].
func (s *MemoryStore) Acquire(ctx context.Context, key string, claim *Record, lease time.Duration) (string, *Record, error) {
	if err := ctx.Err(); err != nil {
		return "", nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	if e := s.live(key, now); e != nil {
		if e.state == Completed {
			s.touch(e)
		}
		return "", s.read(e), nil
	}
	s.seq++
	token := strconv.FormatUint(s.seq, 36)
	e := newMemoryEntry(key, InFlight, token,
		&Record{Fingerprint: claim.Fingerprint, Method: claim.Method, Path: claim.Path}, now.Add(lease))
	e.created = now.UnixNano()
	if !s.makeRoom(1, e.size, now, nil) {
		return "", nil, ErrStoreFull
	}
	s.put(e)
	return token, nil, nil
}

// Complete implements [Store].
func (s *MemoryStore) Complete(ctx context.Context, key, token string, rec *Record, ttl time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	// An in-flight record whose lease ran out while nobody took the key is
	// still this token's: its answer lands (SPEC 23).
	e, _ := s.owned(key, token, now)
	if e == nil {
		return ErrNotOwner
	}
	// The entry keeps its map slot; only its record, size and ring change.
	s.bytes -= e.size
	e.set(Completed, token, rec, now.Add(ttl))
	s.bytes += e.size
	s.touch(e) // from the in-flight ring to the front of the LRU ring
	if !s.makeRoom(0, 0, now, e) {
		// Only in-flight records are left and this one does not fit: keep
		// nothing, so that a retry runs again rather than blocking the key.
		s.remove(e)
		return ErrStoreFull
	}
	return nil
}

// Release implements [Store].
func (s *MemoryStore) Release(ctx context.Context, key, token string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	e, _ := s.owned(key, token, s.now())
	if e == nil {
		return ErrNotOwner
	}
	s.remove(e)
	return nil
}

// Extend implements [Store].
func (s *MemoryStore) Extend(ctx context.Context, key, token string, lease time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	e, live := s.owned(key, token, now)
	if !live { // a lease that ran out is not renewed
		return ErrNotOwner
	}
	e.expiresAt = now.Add(lease)
	return nil
}

// Get implements [Store].
func (s *MemoryStore) Get(ctx context.Context, key string) (*Record, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.present(key, s.now())
	if e == nil {
		return nil, ErrNoRecord
	}
	rec := *s.read(e)
	rec.CreatedAt = time.Unix(0, e.created)
	return &rec, nil
}

// Delete implements [Store]: it removes the record for key, in flight or
// completed. A request that still runs under the deleted record can no
// longer complete, release or extend it.
func (s *MemoryStore) Delete(ctx context.Context, key string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if !s.forget(key) {
		return ErrNoRecord
	}
	return nil
}

// peek returns the live completed record for key, or nil; it
// changes nothing but the record's recency. It serves the Redis store's
// local cache.
func (s *MemoryStore) peek(key string) *Record {
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.live(key, s.now())
	if e == nil || e.state != Completed {
		return nil
	}
	s.touch(e)
	return s.read(e)
}

// read returns the record e holds. A completed record is decoded once and
// the decoded form kept for later reads: it never changes again, and it is
// read-only for the caller. An in-flight record is decoded afresh, as a copy
// that Extend and Complete leave alone.
func (s *MemoryStore) read(e *memoryEntry) *Record {
	if e.state != Completed {
		return e.decode()
	}
	if e.decoded == nil {
		e.decoded = e.decode() // its size is counted already: see memoryEntry.set
	}
	return e.decoded
}

// keep stores a copy of the completed record rec for key until
// rec.ExpiresAt, within the store's bounds. It serves the Redis store's
// local cache.
func (s *MemoryStore) keep(key string, rec *Record) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	if old := s.records[key]; old != nil {
		s.remove(old)
	}
	if rec.State != Completed || !now.Before(rec.ExpiresAt) {
		return
	}
	e := newMemoryEntry(key, Completed, rec.Token, rec, rec.ExpiresAt)
	if s.makeRoom(1, e.size, now, nil) {
		s.put(e)
	}
}

// forget removes the record for key, if any. It serves Delete and the Redis
// store's local cache.
func (s *MemoryStore) forget(key string) (found bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.present(key, s.now())
	if e != nil {
		s.remove(e)
	}
	return e != nil
}

// present returns key's live entry, or its in-flight entry whose lease ran
// out (its request may still complete it, SPEC 23), for an operator; nil
// otherwise, reclaiming an expired completed entry.
func (s *MemoryStore) present(key string, now time.Time) *memoryEntry {
	if e := s.records[key]; e != nil && e.state == InFlight {
		return e
	}
	return s.live(key, now)
}
