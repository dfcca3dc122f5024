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
// the least recently used completed records are evicted; in-flight records
// are never evicted. Expired records are reclaimed lazily, on access and
// while making room, so the store runs no goroutine and needs no Close.
//
// A MemoryStore shares keys only within one process; use a Redis store to
// share them between replicas.
type MemoryStore struct {
	mu         sync.Mutex
	records    map[string]*memoryEntry
	completed  memoryEntry // sentinel of the LRU ring of completed records: next is the most recent
	bytes      int64
	seq        uint64 // source of fencing tokens: unique within the store
	maxEntries int
	maxBytes   int64
	now        func() time.Time
}

type memoryEntry struct {
	key        string
	rec        Record
	size       int64
	prev, next *memoryEntry // LRU ring links; nil while in flight
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
	s.completed.prev, s.completed.next = &s.completed, &s.completed
	return s
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
		if e.rec.State == Completed {
			s.unlink(e)
			s.pushFront(e)
			return "", &e.rec, nil // never changed again: read-only for the caller
		}
		held := e.rec // an in-flight record changes on Extend and Complete
		return "", &held, nil
	}
	s.seq++
	e := &memoryEntry{key: key, rec: Record{
		State:       InFlight,
		Token:       strconv.FormatUint(s.seq, 36),
		Fingerprint: claim.Fingerprint,
		Method:      claim.Method,
		Path:        claim.Path,
		ExpiresAt:   now.Add(lease),
	}}
	e.size = recordSize(key, &e.rec)
	if !s.makeRoom(1, e.size, now, nil) {
		return "", nil, ErrStoreFull
	}
	s.put(e)
	return e.rec.Token, nil, nil
}

// Complete implements [Store].
func (s *MemoryStore) Complete(ctx context.Context, key, token string, rec *Record, ttl time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	e := s.owned(key, token, now)
	if e == nil {
		return ErrNotOwner
	}
	// The entry keeps its map slot; only its size and LRU place change.
	s.bytes -= e.size
	e.rec = *rec
	e.rec.State = Completed
	e.rec.Token = token
	e.rec.ExpiresAt = now.Add(ttl)
	e.size = recordSize(key, &e.rec)
	s.bytes += e.size
	s.pushFront(e)
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
	e := s.owned(key, token, s.now())
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
	e := s.owned(key, token, now)
	if e == nil {
		return ErrNotOwner
	}
	e.rec.ExpiresAt = now.Add(lease)
	return nil
}

// live returns the unexpired entry for key, reclaiming an expired one.
func (s *MemoryStore) live(key string, now time.Time) *memoryEntry {
	e := s.records[key]
	if e == nil {
		return nil
	}
	if !now.Before(e.rec.ExpiresAt) {
		s.remove(e)
		return nil
	}
	return e
}

// owned returns the live in-flight entry for key held by token.
func (s *MemoryStore) owned(key, token string, now time.Time) *memoryEntry {
	e := s.live(key, now)
	if e == nil || e.rec.State != InFlight || e.rec.Token != token {
		return nil
	}
	return e
}

func (s *MemoryStore) put(e *memoryEntry) {
	if e.rec.State == Completed {
		s.pushFront(e)
	}
	s.records[e.key] = e
	s.bytes += e.size
}

func (s *MemoryStore) remove(e *memoryEntry) {
	if e.next != nil {
		s.unlink(e)
	}
	delete(s.records, e.key)
	s.bytes -= e.size
}

// pushFront makes e the most recently used completed record.
func (s *MemoryStore) pushFront(e *memoryEntry) {
	e.prev, e.next = &s.completed, s.completed.next
	e.prev.next, e.next.prev = e, e
}

func (s *MemoryStore) unlink(e *memoryEntry) {
	e.prev.next, e.next.prev = e.next, e.prev
	e.prev, e.next = nil, nil
}

// oldest returns the least recently used completed record, or nil.
func (s *MemoryStore) oldest() *memoryEntry {
	if e := s.completed.prev; e != &s.completed {
		return e
	}
	return nil
}

// fits reports whether entries more records of size more bytes fit within
// the bounds.
func (s *MemoryStore) fits(entries int, size int64) bool {
	return len(s.records)+entries <= s.maxEntries && s.bytes+size <= s.maxBytes
}

// makeRoom evicts completed records, least recently used first but never
// spare, until entries more records of size more bytes fit within the
// bounds. When the completed records are not enough, it reclaims expired
// in-flight records. It reports whether they fit.
func (s *MemoryStore) makeRoom(entries int, size int64, now time.Time, spare *memoryEntry) bool {
	s.reclaimExpiredTail(now, spare) // expired records go before live ones
	for e := s.oldest(); !s.fits(entries, size) && e != nil && e != spare; e = s.oldest() {
		s.remove(e)
	}
	if s.fits(entries, size) {
		return true
	}
	for _, e := range s.records {
		if !now.Before(e.rec.ExpiresAt) {
			s.remove(e)
		}
	}
	return s.fits(entries, size)
}

// reclaimExpiredTail drops a few expired records from the least recently
// used end, so that a quiet store gives memory back without a janitor.
func (s *MemoryStore) reclaimExpiredTail(now time.Time, spare *memoryEntry) {
	for i := 0; i < 2; i++ {
		e := s.oldest()
		if e == nil || e == spare || now.Before(e.rec.ExpiresAt) {
			return
		}
		s.remove(e)
	}
}

// recordSize approximates the memory a record takes, for the byte bound.
func recordSize(key string, r *Record) int64 {
	const overhead = 160 // entry, record and map slot
	n := overhead + len(key) + len(r.Token) + len(r.Fingerprint) + len(r.Method) + len(r.Path) + len(r.Body)
	for name, values := range r.Header {
		n += len(name) + 16
		for _, v := range values {
			n += len(v) + 16
		}
	}
	return int64(n)
}

// peek returns the live completed record for key, or nil; it
// changes nothing but the record's recency. It serves the Redis store's
// local cache.
func (s *MemoryStore) peek(key string) *Record {
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.live(key, s.now())
	if e == nil || e.rec.State != Completed {
		return nil
	}
	s.unlink(e)
	s.pushFront(e)
	return &e.rec // a completed record never changes: read-only for the caller
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
	e := &memoryEntry{key: key, rec: *rec}
	e.size = recordSize(key, &e.rec)
	if s.makeRoom(1, e.size, now, nil) {
		s.put(e)
	}
}
