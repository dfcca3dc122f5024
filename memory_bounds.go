package idempotency

import "time"

// How a MemoryStore stays within its bounds. Every entry sits in one of two
// rings, by state: in-flight records in a ring of their own, few because one
// is held per running request, and completed records, the many, in an LRU
// ring. Making room for a new record costs a walk of the in-flight ring and a
// few steps at the LRU tail, never a scan of the completed records.

// live returns the unexpired entry for key, reclaiming an expired one.
func (s *MemoryStore) live(key string, now time.Time) *memoryEntry {
	e := s.records[key]
	if e == nil {
		return nil
	}
	if !now.Before(e.expiresAt) {
		s.remove(e)
		return nil
	}
	return e
}

// owned returns the in-flight entry for key held by token, live or not:
// an expired one is left in place, since its completion still lands while
// nobody took the key (SPEC 23); live says whether its lease still runs.
func (s *MemoryStore) owned(key, token string, now time.Time) (e *memoryEntry, live bool) {
	e = s.records[key]
	if e == nil || e.state != InFlight || !e.ownedBy(token) {
		return nil, false
	}
	return e, now.Before(e.expiresAt)
}

// put adds e to the map and to the ring of its state.
func (s *MemoryStore) put(e *memoryEntry) {
	if e.state == Completed {
		s.link(&s.completed, e)
	} else {
		s.link(&s.inFlight, e)
	}
	s.records[e.key] = e
	s.bytes += e.size
}

func (s *MemoryStore) remove(e *memoryEntry) {
	s.unlink(e)
	delete(s.records, e.key)
	s.bytes -= e.size
}

// link inserts e right after the sentinel of ring: for the completed ring,
// as the most recently used record.
func (s *MemoryStore) link(ring, e *memoryEntry) {
	e.prev, e.next = ring, ring.next
	e.prev.next, e.next.prev = e, e
}

func (s *MemoryStore) unlink(e *memoryEntry) {
	e.prev.next, e.next.prev = e.next, e.prev
	e.prev, e.next = nil, nil
}

// touch makes e the most recently used completed record.
func (s *MemoryStore) touch(e *memoryEntry) {
	s.unlink(e)
	s.link(&s.completed, e)
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

// makeRoom makes entries more records of size more bytes fit within the
// bounds, and reports whether they do. A few expired records go from the
// LRU tail on every call. When that is not enough, every expired in-flight
// record goes, then completed records from the LRU tail: expired ones,
// then live ones, least recently used first, but never spare. Live
// in-flight records are never evicted.
func (s *MemoryStore) makeRoom(entries int, size int64, now time.Time, spare *memoryEntry) bool {
	s.reclaimExpiredTail(now, spare)
	if s.fits(entries, size) {
		return true
	}
	s.reclaimExpiredInFlight(now)
	for e := s.oldest(); !s.fits(entries, size) && e != nil && e != spare; e = s.oldest() {
		s.remove(e)
	}
	return s.fits(entries, size)
}

// reclaimExpiredTail drops a few expired records from the least recently
// used end, so that a quiet store gives memory back without a janitor.
func (s *MemoryStore) reclaimExpiredTail(now time.Time, spare *memoryEntry) {
	for range 2 {
		e := s.oldest()
		if e == nil || e == spare || now.Before(e.expiresAt) {
			return
		}
		s.remove(e)
	}
}

// reclaimExpiredInFlight drops every in-flight record whose lease has run
// out: its request died or lost the key.
func (s *MemoryStore) reclaimExpiredInFlight(now time.Time) {
	for e := s.inFlight.next; e != &s.inFlight; {
		next := e.next
		if !now.Before(e.expiresAt) {
			s.remove(e)
		}
		e = next
	}
}
