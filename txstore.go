package idempotency

import (
	"context"
	"time"

	"github.com/gin-gonic/gin"
)

// A TxStore is a [Store] that keeps its records in the application's own
// database, so that the handler's writes and the completed record commit in
// one transaction (SPEC 31): a crash, a lost lease or a failed commit at any
// point leaves both or neither.
//
// With a TxStore, the middleware acquires the key as with any store (in a
// statement of its own, so that the in-flight lease is visible to every
// process), then calls Begin. The handler writes through the request's
// transaction (see [Transaction]; the pgstore package has a typed
// accessor). When the handler's response is kept, the middleware calls
// Commit, which writes the completed record in the same transaction, fenced
// by the token, and commits; otherwise it calls Release, which rolls back
// and releases the key. The response is held, not streamed, until the
// commit, up to the response cap (see [WithMaxResponseBytes]): a response
// that outgrows the cap commits before its first byte leaves and streams
// the rest, and is kept without a body. No client is told of a success
// that rolled back.
type TxStore interface {
	Store
	// Begin returns the transaction of the request that holds key with
	// token. A store may open it lazily, when the handler first uses it.
	Begin(ctx context.Context, key, token string) (Tx, error)
}

// Tx is the transaction of one keyed request on a [TxStore].
type Tx interface {
	// Commit writes rec (State Completed) as the key's record, kept for
	// ttl, and commits everything written through the transaction: the
	// record and the handler's writes commit together or not at all. When
	// the token given to Begin no longer owns the key, it rolls everything
	// back and returns [ErrNotOwner]. On any error the client is not told
	// of a success; when the connection broke during the commit, the
	// outcome may be either, and a retry finds out (a replay, or a new run).
	Commit(ctx context.Context, rec *Record, ttl time.Duration) error
	// Release discards everything written through the transaction and
	// releases the key, fenced by the token, so that a retry runs again.
	// It returns [ErrNotOwner] when the token no longer owns the key.
	Release(ctx context.Context) error
	// Rollback discards everything written through the transaction,
	// leaving the key as it is. It is safe to call after Commit, Release
	// or Rollback, and then does nothing.
	Rollback(ctx context.Context) error
}

// Transaction returns the transaction of the request, when the middleware
// runs it on a [TxStore]; ok is false otherwise (no key, another store, or
// the store failed and [WithFailOpen] let the request run without one).
// Store packages offer a typed accessor over it, such as pgstore.Tx.
func Transaction(c *gin.Context) (tx Tx, ok bool) {
	mark := markOf(c)
	if mark == nil || mark.tx == nil {
		return nil, false
	}
	return mark.tx, true
}
