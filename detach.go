package idempotency

import (
	"context"
	"errors"
	"sync/atomic"
	"time"
)

// ErrClientGone is the cause of a keyed handler's context ending a lease
// after its client went away (see [context.Cause]).
var ErrClientGone = errors.New("idempotency: the client went away a lease ago; the handler's context has ended")

// detach returns the context a keyed handler runs with once it holds its
// key (SPEC 13): the request's values and deadline, but not cancelled when
// the client goes away, so that the handler's statements finish, its
// answer is recorded and the client's retry gets the replay. It ends one
// lease after the client went away, so that a handler stuck waiting ends
// too, and when done is called, once the handler has returned.
func (m *middleware) detach(req context.Context) (ctx context.Context, done func()) {
	ctx, cancel := context.WithCancelCause(context.WithoutCancel(req))
	if d, ok := req.Deadline(); ok { // a deadline of the server's own still applies
		var cancelDeadline context.CancelFunc
		ctx, cancelDeadline = context.WithDeadline(ctx, d)
		cancelOuter := cancel
		cancel = func(err error) { cancelDeadline(); cancelOuter(err) }
	}
	var late atomic.Pointer[time.Timer]
	stop := context.AfterFunc(req, func() {
		late.Store(time.AfterFunc(m.lease, func() { cancel(ErrClientGone) }))
	})
	return ctx, func() {
		stop()
		cancel(context.Canceled)
		if t := late.Load(); t != nil {
			t.Stop()
		}
	}
}
