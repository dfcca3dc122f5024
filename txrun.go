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

// begin gets the request's transaction. When the store cannot give one,
// the key is released and the request answered like any store failure.
func (m *middleware) begin(c *gin.Context, f *flight, mark *requestMark, token string) (*txRun, bool) {
	ctx, cancel := m.storeCtx(c.Request.Context())
	tx, err := m.txStore.Begin(ctx, f.key, token)
	cancel()
	if err != nil {
		m.release(c.Request.Context(), f, token, 0)
		mark.leased = false
		m.storeFailed(c, f, err)
		return nil, false
	}
	mark.tx = tx
	t := &txRun{tx: tx}
	t.hold = newHoldWriter(c.Writer, m.maxResponse, func() bool {
		// The response outgrew the cap: it commits now and streams the
		// rest, kept without a body (SPEC 15, 31).
		f.noKeep = mark.noKeep
		return m.settleTx(c, f, t, token, f.rec.Status())
	})
	return t, true
}

// endTx ends a transactional run: a kept response commits with the record
// and is then sent; any other is rolled back and the key released. The
// client never hears of a success that did not commit.
func (m *middleware) endTx(c *gin.Context, f *flight, t *txRun, token string, status int) {
	switch {
	case t.hold.streaming:
		return // settled when it outgrew the cap; the rest went out as written
	case t.hold.failed:
		m.notCommitted(c, t)
	case f.rec.broken: // a recovery inside answered a panic: 500, not the half-written answer
		m.settleTx(c, f, t, token, http.StatusInternalServerError)
		t.hold.discard()
		c.AbortWithStatus(http.StatusInternalServerError)
	case m.settleTx(c, f, t, token, status):
		t.hold.send()
	default:
		m.notCommitted(c, t)
	}
}

// settleTx ends the request's transaction for an answer with status: a kept
// answer commits with its record, any other is rolled back and its key
// released. It reports whether the answer may go out: false only when a
// kept answer did not commit.
func (m *middleware) settleTx(c *gin.Context, f *flight, t *txRun, token string, status int) bool {
	ctx := context.WithoutCancel(c.Request.Context())
	switch {
	case f.rec.broken || f.noKeep || f.rec.wroteNothing() || !m.keep(status):
		if m.leases.stop(&f.lease) {
			m.rollback(ctx, t.tx)
			m.emit(ctx, f, EventLostLease, status, ErrNotOwner)
			return true
		}
		m.releaseTx(c.Request.Context(), f, t.tx, token, status)
		return true
	case !begun(t.tx):
		// The handler never used the transaction: the record is stored as on
		// any store, its completion retried if the store is briefly away.
		m.rollback(ctx, t.tx)
		m.complete(c.Request.Context(), f, token, f.rec.result(&f.claim), status)
		return true
	}
	return m.commit(ctx, f, t.tx, token, f.rec.result(&f.claim), status)
}

// commit writes out in tx and commits, and reports whether it did. A
// commit that failed releases the key; one that found the key taken leaves
// it.
func (m *middleware) commit(ctx context.Context, f *flight, tx Tx, token string, out *Record, status int) bool {
	// The transaction's lock keeps the key until the commit, and the
	// commit's fenced write tells whether another request took it.
	m.leases.stop(&f.lease)
	sctx, cancel := m.storeCtx(ctx)
	start := time.Now()
	err := tx.Commit(sctx, out, m.ttl)
	f.call = storeCall{StoreComplete, time.Since(start)}
	cancel()
	switch {
	case err == nil:
		m.emit(ctx, f, EventCompleted, status, nil)
		return true
	case errors.Is(err, ErrNotOwner):
		m.emit(ctx, f, EventLostLease, status, err)
	default:
		m.emit(ctx, f, EventStoreError, status, err)
		m.release(ctx, f, token, status)
	}
	return false
}

// releaseTx rolls the request's transaction back and releases its key, on
// the transaction's own connection when it has one, so that the release
// never waits for the pool; when that fails, the key is released as on any
// store.
func (m *middleware) releaseTx(req context.Context, f *flight, tx Tx, token string, status int) {
	ctx, cancel := m.storeCtx(req)
	start := time.Now()
	err := tx.Release(ctx)
	f.call = storeCall{StoreRelease, time.Since(start)}
	cancel()
	switch {
	case err == nil:
		m.emit(req, f, EventReleased, status, nil)
	case errors.Is(err, ErrNotOwner):
		m.emit(req, f, EventLostLease, status, err)
	default:
		m.release(req, f, token, status)
	}
}

// begun reports whether the handler used tx: a store that opens its
// transactions lazily says so with a Begun method.
func begun(tx Tx) bool {
	b, ok := tx.(interface{ Begun() bool })
	return !ok || b.Begun()
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
