package idempotency

import (
	"sync"
	"sync/atomic"
	"time"
)

// answers are the completions the middleware still retries on this store
// (SPEC 23): the handler has answered, but Redis has not confirmed the
// record yet (an outage, a failover's write pause, an out-of-memory
// answer). A retry of such a key on this process gets the pending record
// as a replay, from [RedisStore.Cached], instead of 503 while Redis is
// down, or a second run of the handler when the in-flight record expired
// during the outage. Another process cannot see it: its retry gets 409
// while the in-flight record lasts, and runs the handler again once it has
// expired and before the completion lands (see docs/redis.md).
//
// The middleware adds an answer when its first completion attempt fails
// and removes it when the background attempts end, whatever their outcome.
type answers struct {
	any   atomic.Bool // some are pending: the only thing a lookup reads when none are
	mu    sync.Mutex
	byKey map[string]*Record
}

// maxAnswers bounds the pending answers; past it, a completion is still
// retried, but a retry of its key on this process is answered by Redis.
const maxAnswers = 10_000

// completing implements pendingKeeper: rec is kept as it will be stored
// (without its body when it is too large for a record).
func (s *RedisStore) completing(key, token string, rec *Record, ttl time.Duration) {
	owner, ok := parseRedisToken(token)
	if !ok {
		return
	}
	stored, _, err := s.completedValue(owner, rec)
	if err != nil {
		return // Complete refuses it too: there will be no such record
	}
	kept := *stored
	kept.State, kept.Token, kept.ExpiresAt = Completed, token, s.now().Add(ttl)
	a := &s.answers
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.byKey == nil {
		a.byKey = make(map[string]*Record)
	}
	if _, ok := a.byKey[key]; !ok && len(a.byKey) >= maxAnswers {
		return
	}
	a.byKey[key] = &kept
	a.any.Store(true)
}

// settled implements pendingKeeper.
func (s *RedisStore) settled(key, token string) {
	a := &s.answers
	if !a.any.Load() {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if rec := a.byKey[key]; rec != nil && rec.Token == token {
		delete(a.byKey, key)
		a.any.Store(len(a.byKey) > 0)
	}
}

// pendingAnswer returns the pending completed record of key, or nil.
func (s *RedisStore) pendingAnswer(key string) *Record {
	a := &s.answers
	if !a.any.Load() {
		return nil
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.byKey[key]
}

// forgetAnswer drops key's pending answer (an operator's Delete), and
// reports whether there was one; the completion itself is still retried.
func (s *RedisStore) forgetAnswer(key string) (found bool) {
	a := &s.answers
	if !a.any.Load() {
		return false
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	_, found = a.byKey[key]
	delete(a.byKey, key)
	a.any.Store(len(a.byKey) > 0)
	return found
}

// queueRelease implements pendingKeeper: the release becomes an orphan,
// released by the orphan timer as soon as Redis answers, and taken over by
// an acquisition of the same key on this process in its own round trip.
func (s *RedisStore) queueRelease(key, token string, until time.Time) bool {
	owner, ok := parseRedisToken(token)
	if !ok {
		return false
	}
	return s.addOrphan(key, owner, until)
}

var _ pendingKeeper = (*RedisStore)(nil)
