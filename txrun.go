package idempotency

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/gin-gonic/gin"
)

// txRun is a request running in its transaction on a TxStore.
type txRun struct {
	tx   Tx
	hold *holdWriter // the response, held until the commit
}

// begin opens the request's transaction. When it cannot, the key is
// released and the request answered like any store failure.
func (m *middleware) begin(c *gin.Context, f *flight, mark *requestMark, token string) (*txRun, bool) {
	ctx, cancel := m.storeCtx(c.Request.Context())
	tx, err := m.txStore.Begin(ctx, f.key, token)
	cancel()
	if err != nil {
		m.release(c, f, token, 0)
		mark.leased = false
		m.storeFailed(c, f, err)
		return nil, false
	}
	mark.tx = tx
	return &txRun{tx: tx, hold: newHoldWriter(c.Writer)}, true
}

// endTx ends a transactional run: a kept response commits with the record
// and is then sent; any other is rolled back and the key released. The
// client never hears of a success that did not commit.
func (m *middleware) endTx(c *gin.Context, f *flight, t *txRun, token string, status int) {
	ctx := context.WithoutCancel(c.Request.Context())
	switch {
	case f.rec.broken: // a recovery inside answered a panic: 500, not the half-written answer
		m.rollback(ctx, t.tx)
		t.hold.discard()
		m.endWithout(c, f, token, http.StatusInternalServerError)
		c.AbortWithStatus(http.StatusInternalServerError)
		return
	case f.rec.wroteNothing() || !m.keep(status):
		m.rollback(ctx, t.tx)
		t.hold.send()
		m.endWithout(c, f, token, status)
		return
	case m.leases.lost(&f.lease):
		m.rollback(ctx, t.tx)
		m.leases.stop(&f.lease)
		m.emit(ctx, f, EventLostLease, status, ErrNotOwner)
		m.notCommitted(c, t)
		return
	}
	m.leases.stop(&f.lease) // a renewal would wait on the row the commit locks
	sctx, cancel := m.storeCtx(ctx)
	start := time.Now()
	err := t.tx.Commit(sctx, f.rec.result(&f.claim), m.ttl)
	f.call = storeCall{StoreComplete, time.Since(start)}
	cancel()
	switch {
	case err == nil:
		m.emit(ctx, f, EventCompleted, status, nil)
		t.hold.send()
	case errors.Is(err, ErrNotOwner):
		m.emit(ctx, f, EventLostLease, status, err)
		m.notCommitted(c, t)
	default:
		m.emit(ctx, f, EventStoreError, status, err)
		m.release(c, f, token, status)
		m.notCommitted(c, t)
	}
}

// notCommitted answers a request whose transaction did not commit, or
// whose commit's outcome is unknown (a connection lost during COMMIT): the
// client is not told of a success, and its retry either runs again or gets
// the replay of what did commit.
func (m *middleware) notCommitted(c *gin.Context, t *txRun) {
	t.hold.discard()
	c.Header("Retry-After", "1")
	m.refuse(c, http.StatusServiceUnavailable, ProblemStoreUnavailable, "Request not committed",
		"the request's transaction did not commit, so the request is not known to have been done; retry with the same key")
}

// rollback discards a transaction within the store timeout: a database that
// stopped answering never holds the request.
func (m *middleware) rollback(ctx context.Context, tx Tx) {
	sctx, cancel := m.storeCtx(ctx)
	defer cancel()
	tx.Rollback(sctx)
}
