package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/gin-gonic/gin"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ginidem/idempotency/pgstore"
)

// requisitionsSchema is the requisitions table of -postgres; seq keeps the
// creation order.
const requisitionsSchema = `CREATE TABLE IF NOT EXISTS requisitions (
    seq      bigserial PRIMARY KEY,
    id       uuid      NOT NULL UNIQUE,
    program  text      NOT NULL,
    facility text      NOT NULL,
    status   text      NOT NULL
)`

// pgRequisitions is the repository of -postgres: a table, so that every
// replica of the service on one database serves the same requisitions.
//
// A write goes through the request's transaction when the idempotency
// middleware runs one (pgstore.Tx: the store is pgstore and the request
// has a key); the requisition and the record of the answer then commit
// together, and a retry never creates a second requisition, even when a
// process dies between the two. Without a key, a write is a statement of
// its own on the pool.
type pgRequisitions struct{ pool *pgxpool.Pool }

// migrate creates the table when it does not exist, under an advisory lock
// so that replicas that start together may all call it.
func (s *pgRequisitions) migrate(ctx context.Context) error {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock(hashtext('ginidem/example:requisitions'))"); err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, requisitionsSchema); err != nil {
		return err
	}
	return tx.Commit(ctx)
}

// querier is what a write runs on: the request's transaction or the pool.
type querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// db returns the request's transaction, when the middleware runs one, or
// the pool.
func (s *pgRequisitions) db(c *gin.Context) querier {
	if tx := pgstore.Tx(c); tx != nil {
		return tx
	}
	return s.pool
}

func (s *pgRequisitions) create(c *gin.Context, program, facility string) (requisition, error) {
	return insertRequisition(c.Request.Context(), s.db(c), program, facility)
}

// insertRequisition stores a new INITIATED requisition through q and
// returns it.
func insertRequisition(ctx context.Context, q querier, program, facility string) (requisition, error) {
	r := requisition{ID: uuid.NewString(), Program: program, Facility: facility, Status: statusInitiated}
	_, err := q.Exec(ctx, "INSERT INTO requisitions (id, program, facility, status) VALUES ($1, $2, $3, $4)",
		r.ID, r.Program, r.Facility, string(r.Status))
	if err != nil {
		return requisition{}, fmt.Errorf("create: %w", err)
	}
	return r, nil
}

func (s *pgRequisitions) apply(c *gin.Context, id string, t transition) (requisition, error) {
	if _, err := uuid.Parse(id); err != nil {
		return requisition{}, errNotFound
	}
	from := make([]string, len(t.from))
	for i, st := range t.from {
		from[i] = string(st)
	}
	ctx, q := c.Request.Context(), s.db(c)
	// One statement moves the requisition when its status allows it; under
	// concurrent transitions of one requisition, Postgres re-reads the row
	// after the other commits, so at most one of them applies.
	r, err := scanRequisition(q.QueryRow(ctx,
		"UPDATE requisitions SET status = $2 WHERE id = $1 AND status = ANY($3) RETURNING id, program, facility, status",
		id, string(t.to), from))
	if !errors.Is(err, errNotFound) {
		return r, err
	}
	var is string
	switch err := q.QueryRow(ctx, "SELECT status FROM requisitions WHERE id = $1", id).Scan(&is); {
	case errors.Is(err, pgx.ErrNoRows):
		return requisition{}, errNotFound
	case err != nil:
		return requisition{}, fmt.Errorf("apply: %w", err)
	}
	return requisition{}, &transitionError{t: t, is: status(is)}
}

func (s *pgRequisitions) get(ctx context.Context, id string) (requisition, error) {
	if _, err := uuid.Parse(id); err != nil {
		return requisition{}, errNotFound
	}
	return scanRequisition(s.pool.QueryRow(ctx, "SELECT id, program, facility, status FROM requisitions WHERE id = $1", id))
}

func (s *pgRequisitions) list(ctx context.Context) ([]requisition, error) {
	rows, err := s.pool.Query(ctx, "SELECT id, program, facility, status FROM requisitions ORDER BY seq")
	if err != nil {
		return nil, fmt.Errorf("list: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (requisition, error) { return scanRequisition(row) })
	if err != nil {
		return nil, fmt.Errorf("list: %w", err)
	}
	return out, nil
}

// scanRequisition reads a row of id, program, facility and status; no row
// is errNotFound.
func scanRequisition(row pgx.Row) (requisition, error) {
	var r requisition
	var st string
	switch err := row.Scan(&r.ID, &r.Program, &r.Facility, &st); {
	case errors.Is(err, pgx.ErrNoRows):
		return requisition{}, errNotFound
	case err != nil:
		return requisition{}, err
	}
	r.Status = status(st)
	return r, nil
}
