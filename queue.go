package idempotency

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// ErrPoolWait is wrapped by the error of a store call that gave up waiting
// for a local resource, such as a connection of the application's own
// database pool, because the request ended first. Waiting for the pool is
// queueing, not a store failure: the circuit breaker never counts it
// (SPEC 22, 32).
var ErrPoolWait = errors.New("idempotency: gave up waiting for a connection of the application's pool")

// waitKey is the context key of a store call's [waitInfo].
type waitKey struct{}

// waitInfo is what [Wait] needs to queue a store call like the request's
// own work: the request's context and the store timeout.
type waitInfo struct {
	request context.Context
	bound   time.Duration // the longest wait
	timeout time.Duration // the store timeout
}

// Wait lets a store wait for a local resource, such as a connection of the
// application's pool, as the request's own work would: bounded by the
// request's context, and at most one lease, not by the store timeout
// (SPEC 22). It calls wait with
// that context, then returns the context for the store call that follows,
// whose timeout starts once the wait is over; call cancel when the call is
// done. When the request ends while it waits, the error wraps
// [ErrPoolWait]; any other error of wait is returned as it is, a store
// failure.
//
// Outside an acquisition by the middleware, wait gets ctx itself, and the
// call keeps ctx's deadline.
//
//	var conn *pgxpool.Conn
//	ctx, cancel, err := idempotency.Wait(ctx, func(ctx context.Context) (err error) {
//		conn, err = pool.Acquire(ctx)
//		return err
//	})
func Wait(ctx context.Context, wait func(context.Context) error) (context.Context, context.CancelFunc, error) {
	w, queued := ctx.Value(waitKey{}).(*waitInfo)
	waitCtx := ctx
	if queued {
		var cancel context.CancelFunc
		waitCtx, cancel = context.WithTimeout(w.request, w.bound)
		defer cancel()
	}
	if err := wait(waitCtx); err != nil {
		if queued && waitCtx.Err() != nil { // the request ended while it queued
			return nil, nil, fmt.Errorf("%w: %w", ErrPoolWait, err)
		}
		return nil, nil, err
	}
	if !queued {
		return ctx, func() {}, nil
	}
	call, cancel := context.WithTimeout(context.WithoutCancel(w.request), w.timeout)
	return call, cancel, nil
}

// acquireCtx is the context of an acquisition: the store timeout, and for
// a store that may first wait for the application's pool (a [TxStore]),
// the request's own context to wait with, for at most a lease (see
// [Wait]).
func (m *middleware) acquireCtx(req context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := m.storeCtx(req)
	if m.txStore == nil {
		return ctx, cancel
	}
	return context.WithValue(ctx, waitKey{}, &waitInfo{request: req, bound: m.lease, timeout: m.storeTimeout}), cancel
}
