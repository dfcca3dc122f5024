package idempotency

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// renewer keeps the leases of one middleware's requests in flight. One
// timer serves all of them; it stays armed while requests keep coming and
// disarms itself at the first tick with none in flight, so a request costs
// no timer operation of its own, and no store call unless it outlives a
// third of its lease. There is no goroutine to stop: the timer's function
// runs only when it fires, and each renewal runs in a goroutine of its own
// for the length of one store call.
type renewer struct {
	m       *middleware
	epoch   time.Time     // leases are timed from here, on the monotonic clock
	every   time.Duration // a flight is renewed once its lease is this old
	mu      sync.Mutex
	flights map[*leaseKeeper]struct{}
	timer   *time.Timer
	armed   bool // the timer will fire; it disarms itself at a tick with no flights
}

// leaseKeeper is the lease of one request in flight.
type leaseKeeper struct {
	mu      sync.Mutex // held while renewing, so that stop waits for it
	ctx     context.Context
	key     string
	token   string
	renewed atomic.Int64 // the acquisition or last renewal, as time since the renewer's epoch
	stopped bool
	lost    atomic.Bool // the store said another request owns the key
}

func newRenewer(m *middleware) *renewer {
	return &renewer{m: m, epoch: time.Now(), every: m.lease / 3, flights: make(map[*leaseKeeper]struct{})}
}

// start keeps k's lease until stop.
func (r *renewer) start(ctx context.Context, k *leaseKeeper, key, token string) {
	k.ctx, k.key, k.token = ctx, key, token
	k.renewed.Store(int64(r.since()))
	r.mu.Lock()
	defer r.mu.Unlock()
	r.flights[k] = struct{}{}
	if r.armed {
		return
	}
	r.armed = true
	// Tick twice per period, so that each lease is renewed between a third
	// and a half of it after the last renewal.
	if r.timer == nil {
		r.timer = time.AfterFunc(r.every/2, r.tick)
	} else {
		r.timer.Reset(r.every / 2)
	}
}

// stop ends k's renewals, waiting for one under way, and reports whether
// its lease was lost.
func (r *renewer) stop(k *leaseKeeper) (lost bool) {
	k.mu.Lock()
	k.stopped = true
	lost = k.lost.Load()
	k.mu.Unlock()
	r.mu.Lock()
	delete(r.flights, k) // the timer stays armed for the next request, or disarms at its tick
	r.mu.Unlock()
	return lost
}

// lost reports whether the store said k's key is owned by another request.
func (r *renewer) lost(k *leaseKeeper) bool { return k.lost.Load() }

// surelyLost reports whether k's lease is lost, or has not been confirmed
// for a whole lease: the store has let the key expire by now.
func (r *renewer) surelyLost(k *leaseKeeper) bool {
	return k.lost.Load() || int64(r.since())-k.renewed.Load() >= int64(r.m.lease)
}

// tick renews every lease that is due and re-arms the timer while requests
// are in flight.
func (r *renewer) tick() {
	now := r.since()
	r.mu.Lock()
	var due []*leaseKeeper
	for k := range r.flights {
		if k.due(now, r.every) {
			due = append(due, k)
		}
	}
	if r.armed = len(r.flights) > 0; r.armed {
		r.timer.Reset(r.every / 2)
	}
	r.mu.Unlock()
	for _, k := range due {
		go r.renew(k)
	}
}

// since is the monotonic time since the renewer's epoch: a wall clock that
// steps back never delays a renewal.
func (r *renewer) since() time.Duration { return time.Since(r.epoch) }

// due reports whether k's lease is at least every old at now.
func (k *leaseKeeper) due(now, every time.Duration) bool {
	return int64(now)-k.renewed.Load() >= int64(every)
}

// renew extends k's lease by one store call, unless k stopped meanwhile.
func (r *renewer) renew(k *leaseKeeper) {
	if !k.mu.TryLock() {
		return // a renewal under way covers this tick; stop must not queue behind more
	}
	defer k.mu.Unlock()
	start := r.since()
	if k.stopped || k.lost.Load() || !k.due(start, r.every) { // stopped, or renewed by an earlier tick
		return
	}
	ctx, cancel := r.m.storeCtx(k.ctx)
	defer cancel()
	switch err := r.m.store.Extend(ctx, k.key, k.token, r.m.lease); {
	case errors.Is(err, ErrNotOwner):
		k.lost.Store(true)
	case err != nil:
		r.m.logger.LogAttrs(k.ctx, slog.LevelWarn, "idempotency: lease renewal failed",
			slog.String("key", k.key), slog.Any("error", err))
	default:
		k.renewed.Store(int64(start))
	}
}
