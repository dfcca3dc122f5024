package pgstore

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ginidem/idempotency"
)

// Begin implements [idempotency.TxStore]: it returns the transaction of the
// request that holds key with token, without a round trip. The transaction
// opens when the handler first uses it (see [Tx]): on a connection of the
// pool, waited for with the handler's own context, with BEGIN and a
// transaction-level advisory lock on the key in one round trip. From then
// on the lock holds the key: no lease renewal needs a second connection,
// and a process that dies frees its key at once. The middleware ends the
// transaction with Commit, which writes the completed record in it, or
// Release.
//
// At most all but one of the pool's connections hold request transactions
// at once (see [WithMaxTransactions]): a handler that opens one waits for
// its turn, so that acquisitions, releases and the handlers' reads through
// the pool always find a connection. A token this store did not issue gets
// [idempotency.ErrNotOwner].
func (s *Store) Begin(ctx context.Context, key, token string) (idempotency.Tx, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	owner, ok := parseToken(token)
	if !ok {
		return nil, idempotency.ErrNotOwner
	}
	return &requestTx{store: s, key: key, token: token, owner: owner}, nil
}

// requestTx is the transaction of one keyed request: an idempotency.Tx
// whose pgx.Tx the handler reads with Tx. It opens on first use.
type requestTx struct {
	store *Store
	key   string
	token string
	owner pgtype.UUID
	mu    sync.Mutex
	conn  *pgxpool.Conn // held from the first use to the end
	tx    pgx.Tx        // nil until the first use
	done  bool
}

// rollbackTimeout bounds the ROLLBACK after a failed commit, whose context
// may already be spent. A connection that does not answer in time is
// closed, which rolls the transaction back too.
const rollbackTimeout = 5 * time.Second

// open begins the transaction on its first use, bounded by ctx, the
// handler's context: waiting for a turn and a connection is queueing.
func (t *requestTx) open(ctx context.Context) (pgx.Tx, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	switch {
	case t.tx != nil:
		return t.tx, nil
	case t.done:
		return nil, fmt.Errorf("pgstore: the request's transaction has ended: %w", pgx.ErrTxClosed)
	}
	s := t.store
	select {
	case s.turns <- struct{}{}:
	case <-ctx.Done():
		return nil, fmt.Errorf("pgstore: waiting for a turn to open the request's transaction: %w", context.Cause(ctx))
	}
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		<-s.turns
		return nil, fmt.Errorf("pgstore: begin: %w", err)
	}
	tx, err := conn.BeginTx(ctx, pgx.TxOptions{BeginQuery: s.beginSQL(t.key)})
	if err != nil {
		conn.Release()
		<-s.turns
		return nil, fmt.Errorf("pgstore: begin: %w", err)
	}
	t.conn, t.tx = conn, tx
	s.locked.Store(t.token, struct{}{})
	return tx, nil
}

// beginSQL begins a request's transaction with the store's options and
// takes the key's advisory lock, in one round trip.
func (s *Store) beginSQL(key string) string {
	return s.begin + "; SELECT pg_advisory_xact_lock(" + strconv.FormatInt(lockID(key), 10) + ")"
}

// Begun reports whether the handler used the transaction.
func (t *requestTx) Begun() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.tx != nil
}

// end returns the transaction's connection and turn. The caller holds mu.
func (t *requestTx) end() {
	t.done = true
	if t.conn == nil {
		return
	}
	t.store.locked.Delete(t.token)
	t.conn.Release()
	t.conn, t.tx = nil, nil
	<-t.store.turns
}

// Commit implements [idempotency.Tx]: in the request's transaction, it
// replaces the in-flight row owned by the request's token with rec, kept
// for ttl, then commits (two round trips). When the token no longer owns
// the key, it rolls back and returns [idempotency.ErrNotOwner]. When the
// UPDATE fails, it rolls back and returns the error. When COMMIT fails,
// Postgres has rolled back, and Commit returns the error; if the connection
// broke during COMMIT, the outcome is unknown to the client (the record and
// the handler's writes then committed together or not at all), so a caller
// must not report success on any error.
//
// When a statement of the handler failed (the transaction is aborted), its
// writes are rolled back and rec is stored alone, on the same connection:
// the handler's answer to its failure is kept like any other. A
// transaction the handler never used stores rec with [Store.Complete].
func (t *requestTx) Commit(ctx context.Context, rec *idempotency.Record, ttl time.Duration) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.done {
		return errors.New("pgstore: commit: the transaction has already ended")
	}
	defer t.end()
	s := t.store
	if t.tx == nil {
		return s.Complete(ctx, t.key, t.token, rec, ttl)
	}
	stored := s.storable(rec)
	start := s.now()
	args := s.completeArgs(t.key, t.owner, stored, ttl)
	if t.conn.Conn().PgConn().TxStatus() == 'E' { // a handler statement failed
		if err := t.rollback(ctx); err != nil {
			return fmt.Errorf("pgstore: commit: %w", err)
		}
		if err := s.completeOn(ctx, t.conn, args); err != nil {
			return err
		}
		s.keep(t.key, t.token, stored, ttl, start)
		return nil
	}
	tag, err := t.tx.Exec(ctx, s.sql.complete, args...)
	if err != nil || tag.RowsAffected() != 1 {
		_ = t.rollback(ctx)
		if err != nil {
			return fmt.Errorf("pgstore: commit: %w", err)
		}
		return idempotency.ErrNotOwner
	}
	if err := t.tx.Commit(ctx); err != nil {
		return fmt.Errorf("pgstore: commit: %w", err)
	}
	s.keep(t.key, t.token, stored, ttl, start)
	return nil
}

// rollback rolls the open transaction back, with a deadline of its own when
// ctx is spent.
func (t *requestTx) rollback(ctx context.Context) error {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), rollbackTimeout)
	defer cancel()
	if err := t.tx.Rollback(rctx); err != nil && !errors.Is(err, pgx.ErrTxClosed) {
		return fmt.Errorf("pgstore: rollback: %w", err)
	}
	return nil
}

// Release implements [idempotency.Tx]: it rolls back everything written
// through the transaction and releases the key, on the transaction's own
// connection when it was opened, so that it never waits for the pool.
func (t *requestTx) Release(ctx context.Context) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.done {
		return errors.New("pgstore: release: the transaction has already ended")
	}
	defer t.end()
	if t.tx == nil {
		return t.store.Release(ctx, t.key, t.token)
	}
	if err := t.rollback(ctx); err != nil {
		return err
	}
	return t.store.releaseOn(ctx, t.conn, t.key, t.owner)
}

// Rollback implements [idempotency.Tx]: it rolls back everything written
// through the transaction. After Commit, Release or a first Rollback, it
// does nothing and returns nil.
func (t *requestTx) Rollback(ctx context.Context) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.done {
		return nil
	}
	defer t.end()
	if t.tx == nil {
		return nil
	}
	return t.rollback(ctx)
}

// PgxTx returns the transaction the handler writes through: see [Tx].
func (t *requestTx) PgxTx() pgx.Tx { return handlerTx{t} }

// ErrHandlerCommit is returned by Commit and Rollback of the transaction
// [Tx] returns: the middleware ends the request's transaction, after the
// handler, so that the handler's writes and the record commit together. To
// undo its writes, a handler answers with a status the middleware does not
// keep (a 5xx by default); nested transactions (tx.Begin, savepoints) end
// as usual.
var ErrHandlerCommit = errors.New("pgstore: the request's transaction is committed or rolled back by the idempotency middleware, not by the handler")

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
// token. The transaction opens at its first statement, so a handler may do
// slow work (a call to another service) before it without holding a
// connection, and commits after the handler returns. While it is open, the
// handler holds one connection of the pool: read through the transaction
// too, not through the pool, which may have no connection left for it
// (see the package documentation). The handler must not commit or roll it
// back itself (Commit and Rollback return [ErrHandlerCommit]). Use the
// request's context for its statements: once the key is held, the
// middleware no longer cancels it when the client goes away, so that the
// work finishes and the client's retry gets the replay.
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
	return TxOf(t)
}

// TxOf returns the pgx transaction of tx, the transaction an
// [idempotency.Runner] gives its function on a [Store]; nil for another
// store's. The function writes through it, and its writes commit with the
// call's record.
//
//	runner.Do(ctx, call, func(ctx context.Context, tx idempotency.Tx) ([]byte, error) {
//		_, err := pgstore.TxOf(tx).Exec(ctx, "INSERT INTO payments (id) VALUES ($1)", id)
//		return nil, err
//	})
func TxOf(tx idempotency.Tx) pgx.Tx {
	p, ok := tx.(interface{ PgxTx() pgx.Tx })
	if !ok {
		return nil
	}
	return p.PgxTx()
}
