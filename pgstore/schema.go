package pgstore

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
)

// schemaSQL creates the records table and its expiry index; %[1]s is the
// quoted table name, %[2]s the quoted index name.
const schemaSQL = `CREATE TABLE IF NOT EXISTS %[1]s (
    key          text        PRIMARY KEY,
    state        smallint    NOT NULL,
    token        uuid        NOT NULL,
    fingerprint  bytea       NOT NULL,
    method       text        NOT NULL,
    path         text        NOT NULL,
    status       integer     NOT NULL DEFAULT 0,
    header       bytea,
    body         bytea,
    body_omitted boolean     NOT NULL DEFAULT false,
    expires_at   timestamptz NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT statement_timestamp()
);
CREATE INDEX IF NOT EXISTS %[2]s ON %[1]s (expires_at);
`

// Schema returns the SQL that creates the store's table and the index on
// its expiry column, as [Store.Migrate] runs it. Both statements are
// idempotent (IF NOT EXISTS). Columns:
//
//   - key: the record's key (the middleware's hash of scope and key)
//   - state: 1 in flight, 2 completed ([idempotency.State])
//   - token: the fencing token of the request that owns or wrote the row
//   - fingerprint, method, path: the first request with the key
//   - status, header, body, body_omitted: the kept response; header holds
//     the replayable headers in a compact binary form
//   - expires_at: the end of the lease (in flight) or of the record's
//     lifetime (completed); an expired row is free for the next request
//   - created_at: when the key was acquired, for operators
func (s *Store) Schema() string {
	return fmt.Sprintf(schemaSQL, quote(s.table), quote(s.table+"_expires_at_idx"))
}

// Migrate creates the store's table and its index when they do not exist
// (see [Store.Schema]), in one transaction under an advisory lock, so
// replicas that start together may all call it.
func (s *Store) Migrate(ctx context.Context) error {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("pgstore: migrate: %w", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	// Concurrent CREATE TABLE IF NOT EXISTS of one name can fail on the
	// catalog's unique index: one migration at a time per table name.
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock(hashtext('ginidem/pgstore:' || $1))", s.table); err != nil {
		return fmt.Errorf("pgstore: migrate: %w", err)
	}
	if _, err := tx.Exec(ctx, s.Schema()); err != nil {
		return fmt.Errorf("pgstore: migrate: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("pgstore: migrate: %w", err)
	}
	return nil
}

// Sweep deletes at most limit expired rows, oldest expiry first, and
// reports how many it deleted: one statement, which uses the expiry index
// and skips rows that another statement holds. An expired row is already
// free for the next request with its key; Sweep only reclaims its space.
//
// The store runs no goroutine of its own: run Sweep from yours, on a
// ticker, in batches, and stop it with your context:
//
//	go func() {
//		tick := time.NewTicker(time.Minute)
//		defer tick.Stop()
//		for {
//			select {
//			case <-ctx.Done():
//				return
//			case <-tick.C:
//			}
//			for { // batches of 1,000 until none is left
//				n, err := store.Sweep(ctx, 1000)
//				if err != nil || n < 1000 {
//					break
//				}
//			}
//		}
//	}()
//
// Replicas may all sweep: they skip each other's rows. A limit below 1
// deletes nothing.
func (s *Store) Sweep(ctx context.Context, limit int) (deleted int, err error) {
	if limit < 1 {
		return 0, nil
	}
	tag, err := s.pool.Exec(ctx, s.sql.sweep, limit, s.shift())
	if err != nil {
		return 0, fmt.Errorf("pgstore: sweep: %w", err)
	}
	return int(tag.RowsAffected()), nil
}

// quote quotes a plain identifier (see validTable): quoted, a reserved word
// is a name too.
func quote(name string) string { return `"` + name + `"` }

// beginSQL is the BEGIN statement of opts, as pgx writes it.
func beginSQL(opts pgx.TxOptions) string {
	if opts.BeginQuery != "" {
		return opts.BeginQuery
	}
	var b strings.Builder
	b.WriteString("BEGIN")
	if opts.IsoLevel != "" {
		b.WriteString(" ISOLATION LEVEL " + string(opts.IsoLevel))
	}
	if opts.AccessMode != "" {
		b.WriteString(" " + string(opts.AccessMode))
	}
	if opts.DeferrableMode != "" {
		b.WriteString(" " + string(opts.DeferrableMode))
	}
	return b.String()
}

// statements are the store's SQL, built once by New for its table.
type statements struct {
	acquire, complete, release, extend, get, delete, sweep string
}

func newStatements(table string) statements {
	r := strings.NewReplacer("{t}", quote(table))
	return statements{
		acquire:  r.Replace(acquireSQL),
		complete: r.Replace(completeSQL),
		release:  r.Replace(releaseSQL),
		extend:   r.Replace(extendSQL),
		get:      r.Replace(getSQL),
		delete:   r.Replace(deleteSQL),
		sweep:    r.Replace(sweepSQL),
	}
}

// acquireSQL takes a free or expired key for a new request, or reads the
// live row that holds it, in one statement. {t} is the table.
// $1 key, $2 new token, $3 fingerprint, $4 method, $5 path, $6 lease,
// $7 shift of the database's clock, $8 the largest body read, $9 the
// largest fingerprint, method, path and header read, together.
// $10 the key's advisory lock (lockID), $11 the token of an orphaned
// acquisition of this process to take over, or NULL.
// It reads before it writes: a key held by a live row (a replay, a
// conflict) costs a read, with no row lock and no transaction id, so no
// WAL flush at its commit. An in-flight row whose lease has expired is
// still live while its request's transaction holds the key's advisory lock
// (see Store.Begin): the statement tries the lock, which it holds until it
// ends, and an in-flight row whose lock it gets is free. Only a key without
// a live row in the statement's snapshot goes to the INSERT, which takes a
// free row over (ON CONFLICT ... WHERE expired and not locked).
// Replies one row: acquired = true for a key taken, else the held row (its
// body NULL when larger than $8, its other variable fields empty when
// larger than $9; their sizes tell) and the statement's time; or no row
// when a live row was committed after the statement's snapshot was taken
// (see Store.Acquire).
const acquireSQL = `WITH clock AS (SELECT statement_timestamp() + $7::interval AS t),
held AS (
    SELECT r.state, r.token, CASE WHEN m.ok THEN r.fingerprint END AS fingerprint,
        CASE WHEN m.ok THEN r.method ELSE '' END AS method, CASE WHEN m.ok THEN r.path ELSE '' END AS path,
        r.status, CASE WHEN m.ok THEN r.header END AS header, m.size,
        CASE WHEN octet_length(r.body) <= $8 THEN r.body END AS body, coalesce(octet_length(r.body), 0)::bigint AS body_size,
        r.body_omitted, r.expires_at
    FROM {t} r CROSS JOIN clock CROSS JOIN LATERAL (
        SELECT size, size <= $9 AS ok FROM (SELECT (octet_length(r.fingerprint) + octet_length(r.method) +
            octet_length(r.path) + coalesce(octet_length(r.header), 0))::bigint AS size) sized
    ) m
    WHERE r.key = $1::text AND r.token IS DISTINCT FROM $11::uuid
        AND (r.expires_at > clock.t OR (r.state = 1 AND NOT pg_try_advisory_xact_lock($10::bigint)))
),
acquired AS (
    INSERT INTO {t} AS r (key, state, token, fingerprint, method, path, status, header, body, body_omitted, expires_at, created_at)
    SELECT $1::text, 1, $2::uuid, $3::bytea, $4::text, $5::text, 0, NULL, NULL, false, clock.t + $6::interval, clock.t
    FROM clock WHERE NOT EXISTS (SELECT 1 FROM held)
    ON CONFLICT (key) DO UPDATE SET
        state = 1, token = excluded.token, fingerprint = excluded.fingerprint, method = excluded.method,
        path = excluded.path, status = 0, header = NULL, body = NULL, body_omitted = false,
        expires_at = excluded.expires_at, created_at = excluded.created_at
    WHERE r.token = $11::uuid OR (r.expires_at <= excluded.created_at AND (r.state <> 1 OR pg_try_advisory_xact_lock($10::bigint)))
    RETURNING 1
)
SELECT true, 0::smallint, NULL::uuid, NULL::bytea, ''::text, ''::text, 0, NULL::bytea, 0::bigint,
    NULL::bytea, 0::bigint, false, clock.t, clock.t
FROM acquired CROSS JOIN clock
UNION ALL
SELECT false, held.*, clock.t FROM held CROSS JOIN clock`

// completeSQL replaces the in-flight row owned by a token with the
// completed record, whether or not its lease has expired: a row that still
// holds the token was taken by no other request (SPEC 23). $1 key, $2
// token, $3 fingerprint, $4 method, $5 path, $6 status, $7 header, $8 body,
// $9 body omitted, $10 ttl, $11 shift of the database's clock. One row
// affected when stored, or when this very record is already stored by this
// token (a retry after a lost reply), none when the token owns neither.
const completeSQL = `UPDATE {t} SET state = 2, fingerprint = $3, method = $4, path = $5, status = $6,
    header = $7, body = $8, body_omitted = $9, expires_at = statement_timestamp() + $11::interval + $10::interval
WHERE key = $1 AND token = $2 AND (state = 1 OR
    (state = 2 AND status = $6 AND header IS NOT DISTINCT FROM $7 AND body IS NOT DISTINCT FROM $8
        AND body_omitted = $9))`

// releaseSQL deletes the in-flight row owned by a token, whether or not its
// lease has expired. $1 key, $2 token.
const releaseSQL = `DELETE FROM {t} WHERE key = $1 AND token = $2 AND state = 1`

// extendSQL renews the live lease of the in-flight row owned by a token: a
// lease that ran out is not renewed, as on every store (the completion
// still lands while nobody took the key). $1 key, $2 token, $3 lease,
// $4 shift of the database's clock.
const extendSQL = `UPDATE {t} SET expires_at = statement_timestamp() + $4::interval + $3::interval
WHERE key = $1 AND token = $2 AND state = 1 AND expires_at > statement_timestamp() + $4::interval`

// getSQL reads the row of a key for an operator: a live row, or an
// in-flight row whose lease ran out (its request may still run, or have
// died). $1 key, $2 shift of the database's clock, $3 the largest body
// read, $4 the largest fingerprint, method, path and header read. Its
// columns are the held row's of acquireSQL, then the statement's time and
// created_at.
const getSQL = `WITH clock AS (SELECT statement_timestamp() + $2::interval AS t)
SELECT r.state, r.token, CASE WHEN m.ok THEN r.fingerprint END,
    CASE WHEN m.ok THEN r.method ELSE '' END, CASE WHEN m.ok THEN r.path ELSE '' END,
    r.status, CASE WHEN m.ok THEN r.header END, m.size,
    CASE WHEN octet_length(r.body) <= $3 THEN r.body END, coalesce(octet_length(r.body), 0)::bigint,
    r.body_omitted, r.expires_at, clock.t, r.created_at
FROM {t} r CROSS JOIN clock CROSS JOIN LATERAL (
    SELECT size, size <= $4 AS ok FROM (SELECT (octet_length(r.fingerprint) + octet_length(r.method) +
        octet_length(r.path) + coalesce(octet_length(r.header), 0))::bigint AS size) sized
) m
WHERE r.key = $1::text AND (r.expires_at > clock.t OR r.state = 1)`

// deleteSQL deletes the row of a key, whatever its state. $1 key.
const deleteSQL = `DELETE FROM {t} WHERE key = $1`

// sweepSQL deletes at most $1 expired rows, oldest expiry first, skipping
// rows locked by another statement. $2 shift of the database's clock.
const sweepSQL = `DELETE FROM {t} WHERE key IN (
    SELECT key FROM {t} WHERE expires_at <= statement_timestamp() + $2::interval
    ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED
) AND expires_at <= statement_timestamp() + $2::interval`
