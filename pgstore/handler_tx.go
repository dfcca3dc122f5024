package pgstore

import (
	"context"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// handlerTx is the request's transaction as the handler sees it: a pgx.Tx
// that opens at its first statement, and that the handler cannot end.
type handlerTx struct{ t *requestTx }

var _ pgx.Tx = handlerTx{}

// Begin starts a pseudo nested transaction (a savepoint), opening the
// request's transaction first.
func (h handlerTx) Begin(ctx context.Context) (pgx.Tx, error) {
	tx, err := h.t.open(ctx)
	if err != nil {
		return nil, err
	}
	return tx.Begin(ctx)
}

// Commit refuses: see ErrHandlerCommit.
func (handlerTx) Commit(context.Context) error { return ErrHandlerCommit }

// Rollback refuses: see ErrHandlerCommit.
func (handlerTx) Rollback(context.Context) error { return ErrHandlerCommit }

// CopyFrom runs COPY FROM in the request's transaction.
func (h handlerTx) CopyFrom(ctx context.Context, table pgx.Identifier, columns []string, rows pgx.CopyFromSource) (int64, error) {
	tx, err := h.t.open(ctx)
	if err != nil {
		return 0, err
	}
	return tx.CopyFrom(ctx, table, columns, rows)
}

// SendBatch sends b in the request's transaction.
func (h handlerTx) SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults {
	tx, err := h.t.open(ctx)
	if err != nil {
		return failedBatch{err}
	}
	return tx.SendBatch(ctx, b)
}

// LargeObjects returns the large objects of the request's transaction,
// which opens with no deadline of its own: prefer the statements that take
// a context.
func (h handlerTx) LargeObjects() pgx.LargeObjects {
	tx, err := h.t.open(context.Background())
	if err != nil {
		return pgx.LargeObjects{}
	}
	return tx.LargeObjects()
}

// Prepare prepares a statement on the request's transaction's connection.
func (h handlerTx) Prepare(ctx context.Context, name, sql string) (*pgconn.StatementDescription, error) {
	tx, err := h.t.open(ctx)
	if err != nil {
		return nil, err
	}
	return tx.Prepare(ctx, name, sql)
}

// Exec runs sql in the request's transaction.
func (h handlerTx) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	tx, err := h.t.open(ctx)
	if err != nil {
		return pgconn.CommandTag{}, err
	}
	return tx.Exec(ctx, sql, args...)
}

// Query runs sql in the request's transaction.
func (h handlerTx) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	tx, err := h.t.open(ctx)
	if err != nil {
		return nil, err
	}
	return tx.Query(ctx, sql, args...)
}

// QueryRow runs sql in the request's transaction; an error opening it is
// returned by Scan.
func (h handlerTx) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	tx, err := h.t.open(ctx)
	if err != nil {
		return failedRow{err}
	}
	return tx.QueryRow(ctx, sql, args...)
}

// Conn returns the connection of the request's transaction, opening it with
// no deadline of its own, or nil when it cannot be opened.
func (h handlerTx) Conn() *pgx.Conn {
	tx, err := h.t.open(context.Background())
	if err != nil {
		return nil
	}
	return tx.Conn()
}

// failedRow is the row of a statement that could not run.
type failedRow struct{ err error }

func (r failedRow) Scan(...any) error { return r.err }

// failedBatch is the result of a batch that could not be sent.
type failedBatch struct{ err error }

func (b failedBatch) Exec() (pgconn.CommandTag, error) { return pgconn.CommandTag{}, b.err }
func (b failedBatch) Query() (pgx.Rows, error)         { return nil, b.err }
func (b failedBatch) QueryRow() pgx.Row                { return failedRow(b) }
func (b failedBatch) Close() error                     { return b.err }
func (failedBatch) Tx() pgx.Tx                         { return nil }
