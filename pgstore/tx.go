package pgstore

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/ginidem/idempotency"
)

// Begin implements [idempotency.TxStore]: it begins the transaction of the
// request that holds key with token, on a connection of the store's pool
// (one round trip, BEGIN). The middleware calls it after Acquire, gives the
// transaction to the handler (see [Tx]), and ends it with Commit, which
// writes the completed record in the same transaction, or Rollback.
//
// Begin does not lock the key's row: the lease is renewed meanwhile by
// other statements, and ownership is checked when the record is written, at
// Commit. A token this store did not issue gets [idempotency.ErrNotOwner].
func (s *Store) Begin(ctx context.Context, key, token string) (idempotency.Tx, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	owner, ok := parseToken(token)
	if !ok {
		return nil, idempotency.ErrNotOwner
	}
	tx, err := s.pool.BeginTx(ctx, s.txOptions)
	if err != nil {
		return nil, fmt.Errorf("pgstore: begin: %w", err)
	}
	return &requestTx{store: s, key: key, token: token, owner: owner, handler: handlerTx{tx}}, nil
}

// requestTx is the transaction of one keyed request: an idempotency.Tx
// whose pgx.Tx the handler reads with Tx.
type requestTx struct {
	store   *Store
	key     string
	token   string
	owner   pgtype.UUID
	handler handlerTx // wraps the pgx.Tx
	done    bool
}

// rollbackTimeout bounds the ROLLBACK after a failed commit, whose context
// may already be spent. A connection that does not answer in time is
// closed, which rolls the transaction back too.
const rollbackTimeout = 5 * time.Second

// Commit implements [idempotency.Tx]: in the request's transaction, it
// replaces the live in-flight row owned by the request's token with rec,
// kept for ttl, then commits (two round trips). When the token no longer
// owns the key, it rolls back and returns [idempotency.ErrNotOwner]. When
// the UPDATE fails, it rolls back and returns the error. When COMMIT fails,
// Postgres has rolled back, and Commit returns the error; if the connection
// broke during COMMIT, the outcome is unknown to the client (the record and
// the handler's writes then committed together or not at all), so a caller
// must not report success on any error.
func (t *requestTx) Commit(ctx context.Context, rec *idempotency.Record, ttl time.Duration) error {
	if t.done {
		return errors.New("pgstore: commit: the transaction has already ended")
	}
	t.done = true
	tx := t.handler.Tx
	stored := t.store.storable(rec)
	start := t.store.now()
	tag, err := tx.Exec(ctx, t.store.sql.complete, t.store.completeArgs(t.key, t.owner, stored, ttl)...)
	if err != nil || tag.RowsAffected() != 1 {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), rollbackTimeout)
		defer cancel()
		_ = tx.Rollback(rctx)
		if err != nil {
			return fmt.Errorf("pgstore: commit: %w", err)
		}
		return idempotency.ErrNotOwner
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("pgstore: commit: %w", err)
	}
	t.store.keep(t.key, t.token, stored, ttl, start)
	return nil
}

// Rollback implements [idempotency.Tx]: it rolls back everything written
// through the transaction. After Commit, or a first Rollback, it does
// nothing and returns nil.
func (t *requestTx) Rollback(ctx context.Context) error {
	if t.done {
		return nil
	}
	t.done = true
	if err := t.handler.Tx.Rollback(ctx); err != nil && !errors.Is(err, pgx.ErrTxClosed) {
		return fmt.Errorf("pgstore: rollback: %w", err)
	}
	return nil
}

// PgxTx returns the transaction the handler writes through: see [Tx].
func (t *requestTx) PgxTx() pgx.Tx { return t.handler }

// ErrHandlerCommit is returned by Commit and Rollback of the transaction
// [Tx] returns: the middleware ends the request's transaction, after the
// handler, so that the handler's writes and the record commit together. To
// undo its writes, a handler answers with a status the middleware does not
// keep (a 5xx by default); nested transactions (tx.Begin, savepoints) end
// as usual.
var ErrHandlerCommit = errors.New("pgstore: the request's transaction is committed or rolled back by the idempotency middleware, not by the handler")

// handlerTx is the request's pgx.Tx as the handler sees it: everything but
// ending it.
type handlerTx struct{ pgx.Tx }

// Commit refuses: see ErrHandlerCommit.
func (handlerTx) Commit(context.Context) error { return ErrHandlerCommit }

// Rollback refuses: see ErrHandlerCommit.
func (handlerTx) Rollback(context.Context) error { return ErrHandlerCommit }

// Tx returns the transaction of the request, when the idempotency
// middleware runs it on a [Store] (or any [idempotency.TxStore] whose
// transaction has a PgxTx() pgx.Tx method, as a wrapper around a Store's
// may forward); nil otherwise: the request has no key, the key was not
// acquired, or the store failed and the middleware's fail-open option let
// the request run without one.
//
// A handler that writes through it gets exactly-once effects: its writes
// and the completed record commit in one transaction, after the handler
// returns and before the client receives anything, fenced by the key's
// token. The handler must not commit or roll it back itself (Commit and
// Rollback return [ErrHandlerCommit]); use the request's context for its
// statements.
//
//	r.POST("/orders", func(c *gin.Context) {
//		tx := pgstore.Tx(c)
//		if tx == nil { // no key: a transaction of its own, or the pool
//			...
//		}
//		_, err := tx.Exec(c.Request.Context(), "INSERT INTO orders (id, item) VALUES ($1, $2)", id, item)
//		...
//	})
func Tx(c *gin.Context) pgx.Tx {
	t, ok := idempotency.Transaction(c)
	if !ok {
		return nil
	}
	p, ok := t.(interface{ PgxTx() pgx.Tx })
	if !ok {
		return nil
	}
	return p.PgxTx()
}
