package pgstore

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/ginidem/idempotency"
)

// orphans are this store's acquisitions that failed without a reply from
// Postgres but may have committed: a stalled commit or network whose reply
// came after the deadline leaves the key in flight, for a whole lease,
// under a token nobody will complete. Each is released with its token as
// soon as Postgres answers again, so that a key that got 503 is free within
// a second of the database's return (SPEC 22); an acquisition of the same
// key on this process takes it over in its own statement first.
//
// Releases run from a timer, armed only while orphans are pending: there is
// no goroutine to stop, and an orphan is forgotten once its lease is over.
type orphans struct {
	mu      sync.Mutex
	pending map[string][]orphan // by key
	timer   *time.Timer
	armed   bool
	pause   time.Duration
	release func(ctx context.Context, key string, token pgtype.UUID) error
}

type orphan struct {
	token pgtype.UUID
	until time.Time // after it, the row's lease is surely over
}

const (
	// maxOrphans bounds the keys with pending releases; past it, an orphan
	// is left to expire with its lease.
	maxOrphans = 10_000
	// maxOrphansPerKey bounds the tokens remembered for one key.
	maxOrphansPerKey = 4
	// orphanPauseMax is the longest wait between two rounds of releases.
	orphanPauseMax = time.Second
)

// maybeCommitted reports whether a failed statement may still have
// committed: any error but a reply from Postgres itself.
func maybeCommitted(err error) bool {
	var reply *pgconn.PgError
	return err != nil && !errors.As(err, &reply)
}

// add remembers an acquisition that may have committed, and arms the
// release timer.
func (o *orphans) add(key string, x orphan) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.pending == nil {
		o.pending = make(map[string][]orphan)
	}
	if len(o.pending) >= maxOrphans || len(o.pending[key]) >= maxOrphansPerKey {
		return
	}
	o.pending[key] = append(o.pending[key], x)
	if !o.armed {
		o.armed, o.pause = true, 50*time.Millisecond
		if o.timer == nil {
			o.timer = time.AfterFunc(o.pause, o.releaseAll)
		} else {
			o.timer.Reset(o.pause)
		}
	}
}

// take removes and returns a pending orphan of key, for an acquisition of
// the key to take over; the zero orphan (a NULL token) when none is.
func (o *orphans) take(key string) (orphan, bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	list := o.pending[key]
	if len(list) == 0 {
		return orphan{}, false
	}
	x := list[len(list)-1]
	if len(list) == 1 {
		delete(o.pending, key)
	} else {
		o.pending[key] = list[:len(list)-1]
	}
	return x, true
}

// released releases one orphan and reports whether Postgres answered: the
// row was deleted, or holds the key no longer.
func (o *orphans) released(ctx context.Context, key string, token pgtype.UUID) bool {
	err := o.release(ctx, key, token)
	return err == nil || errors.Is(err, idempotency.ErrNotOwner)
}

// releaseAll releases the pending orphans until Postgres fails again; the
// rest wait for the next round, after a longer pause.
func (o *orphans) releaseAll() {
	o.mu.Lock()
	jobs := o.pending
	o.pending = nil
	o.mu.Unlock()

	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	failed := false
	now := time.Now()
	for key, list := range jobs {
		for _, x := range list {
			switch {
			case !now.Before(x.until): // its lease is over: nothing left to release
			case failed || !o.released(ctx, key, x.token):
				failed = true
				o.add(key, x)
			}
		}
	}

	o.mu.Lock()
	defer o.mu.Unlock()
	if o.armed = len(o.pending) > 0; o.armed {
		if failed {
			o.pause = min(2*o.pause, orphanPauseMax)
		}
		o.timer.Reset(o.pause)
	}
}
