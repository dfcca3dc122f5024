package idempotency

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// orphans are in-flight records of this store that nobody will complete:
// acquisitions that failed on their deadline but may still have reached
// Redis (a stalled server, a failover, a paused or swapped-out process runs
// the queued script when it wakes), and releases that Redis did not
// confirm (a 5xx, a panic or an answer not kept, while Redis was down; the
// middleware hands them over with queueRelease). Either would hold the key
// for a whole lease. Each orphan is released with its token as soon as
// Redis answers again, so that a key that got 503 or 5xx is free again
// within a second of the store's return (SPEC 22). A retry of the same key
// on this process takes over the orphan in the same round trip as its own
// acquisition.
//
// Releases run from a timer, armed only while orphans are pending: there is
// no goroutine to stop, and an orphan is forgotten once its lease is over.
type orphans struct {
	any     atomic.Bool // some are pending: the only thing an acquisition reads when none are
	mu      sync.Mutex
	pending map[string][]orphan // by store key
	timer   *time.Timer
	armed   bool
	pause   time.Duration
}

type orphan struct {
	token redisToken
	until time.Time // the end of its lease: after it, Redis has dropped it
}

const (
	// maxOrphans bounds the pending releases; past it, an orphan is left
	// to expire with its lease.
	maxOrphans = 10_000
	// maxOrphansPerKey bounds the tokens remembered for one key.
	maxOrphansPerKey = 4
	// orphanPauseMax is the longest wait between two release attempts.
	orphanPauseMax = 500 * time.Millisecond
)

// maybeApplied reports whether a failed command may still have run: any
// error but a reply from Redis itself (a timeout, a reset connection).
func maybeApplied(err error) bool {
	var reply redis.Error
	return err != nil && !errors.As(err, &reply)
}

// addOrphan remembers an in-flight record to release, and arms the
// release timer. It reports false when its bounds are reached.
func (s *RedisStore) addOrphan(key string, token redisToken, until time.Time) bool {
	o := &s.orphans
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.pending == nil {
		o.pending = make(map[string][]orphan)
	}
	if (len(o.pending) >= maxOrphans && o.pending[key] == nil) || len(o.pending[key]) >= maxOrphansPerKey {
		return false
	}
	o.pending[key] = append(o.pending[key], orphan{token, until})
	o.any.Store(true)
	if !o.armed {
		o.armed, o.pause = true, 50*time.Millisecond
		if o.timer == nil {
			o.timer = time.AfterFunc(o.pause, s.releaseOrphans)
		} else {
			o.timer.Reset(o.pause)
		}
	}
	return true
}

// takeOrphan removes and returns one pending orphan of key, for an
// acquisition of the same key to take over.
func (s *RedisStore) takeOrphan(key string) (orphan, bool) {
	o := &s.orphans
	if !o.any.Load() {
		return orphan{}, false
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	list := o.pending[key]
	if len(list) == 0 {
		return orphan{}, false
	}
	taken := list[len(list)-1]
	if len(list) == 1 {
		delete(o.pending, key)
		o.any.Store(len(o.pending) > 0)
	} else {
		o.pending[key] = list[:len(list)-1]
	}
	return taken, true
}

// releaseOrphans releases the pending orphans, one script each, until Redis
// fails again (an error, or an error reply such as LOADING while a
// restarted server reads its AOF); then it re-arms the timer with a longer
// pause.
func (s *RedisStore) releaseOrphans() {
	o := &s.orphans
	o.mu.Lock()
	type job struct {
		key string
		orphan
	}
	var jobs []job
	now := time.Now()
	for key, list := range o.pending {
		for _, x := range list {
			if now.Before(x.until) {
				jobs = append(jobs, job{key, x})
			}
		}
		delete(o.pending, key)
	}
	o.mu.Unlock()

	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	failed := 0
	for i, j := range jobs {
		err := releaseScript.Run(ctx, s.client, []string{s.redisKey(j.key)}, ownerHead(j.token)).Err()
		if errors.Is(err, redis.ErrClosed) {
			break // the client is closed: nothing more can be released
		}
		if err != nil {
			for _, rest := range jobs[i:] {
				s.requeueOrphan(rest.key, rest.orphan)
			}
			failed = len(jobs) - i
			break
		}
	}

	o.mu.Lock()
	defer o.mu.Unlock()
	o.any.Store(len(o.pending) > 0)
	if o.armed = len(o.pending) > 0; o.armed {
		if failed > 0 {
			o.pause = min(2*o.pause, orphanPauseMax)
		}
		o.timer.Reset(o.pause)
	}
}

// requeueOrphan puts back an orphan whose release did not happen, unless
// its lease is over. It arms the timer when it is not.
func (s *RedisStore) requeueOrphan(key string, x orphan) {
	if time.Now().Before(x.until) {
		s.addOrphan(key, x.token, x.until)
	}
}

// giveBack releases an acquisition the caller will not use (one that did
// not reach enough replicas), with a deadline of its own: the caller's may
// be spent by the WAIT. When Redis does not confirm it, it becomes an
// orphan, released as soon as Redis answers.
func (s *RedisStore) giveBack(ctx context.Context, key string, token redisToken, lease time.Duration) {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
	defer cancel()
	if err := releaseScript.Run(rctx, s.client, []string{s.redisKey(key)}, ownerHead(token)).Err(); maybeApplied(err) {
		s.addOrphan(key, token, time.Now().Add(2*lease))
	}
}
