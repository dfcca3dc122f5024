package pgstore

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ginidem/idempotency"
	"github.com/ginidem/idempotency/internal/wire"
)

// Store is an [idempotency.TxStore] on Postgres: each record is a row of
// one table (see [Store.Schema]), so every replica of a service on one
// database shares the same records, and a handler's writes and its record
// can commit in one transaction (see [Store.Begin] and [Tx]).
//
// Each Store method is one statement, one round trip: a first request costs
// two (Acquire, Complete), or four in the request's transaction (Acquire,
// BEGIN, then the record's UPDATE and COMMIT); a replay one, or none when
// the local cache has the record. Leases and
// record lifetimes are computed on the database's clock; an expired row
// is free for the next Acquire and is deleted by [Store.Sweep].
//
// A Store is safe for concurrent use. It does not own the pool and never
// closes it, and it runs no goroutine.
type Store struct {
	pool  *pgxpool.Pool
	table string
	clock func() time.Time // nil: time.Now, with no shift of the database's clock
	// cache bounds, read when the store is built
	cacheEntries int
	cacheBytes   int64
	cacheMaxAge  time.Duration
	cache        *cache // nil when off
	maxBody      int
	txOptions    pgx.TxOptions
	begin        string        // BEGIN with txOptions
	maxTx        int           // WithMaxTransactions; 0: all but one of the pool's connections
	turns        chan struct{} // one per open request transaction
	locked       sync.Map      // tokens whose request transaction holds the key's lock
	orphans      orphans
	sql          statements
}

// New returns a [Store] on pool, configured by opts. It panics, with a
// "pgstore:" prefix, when pool is nil or an option is invalid. Create the
// table with [Store.Migrate] (or the SQL of [Store.Schema]) before use.
//
//	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL"))
//	...
//	store := pgstore.New(pool)
//	if err := store.Migrate(ctx); err != nil { ... }
//	r.Use(idempotency.New(idempotency.WithStore(store)))
func New(pool *pgxpool.Pool, opts ...Option) *Store {
	if pool == nil {
		panic("pgstore: New with a nil pool")
	}
	s := &Store{pool: pool, table: DefaultTable, cacheEntries: 10_000, cacheBytes: 32 << 20,
		cacheMaxAge: time.Minute, maxBody: DefaultMaxBodySize}
	for _, opt := range opts {
		opt.apply(s)
	}
	if err := validTable(s.table); err != nil {
		panic(err.Error())
	}
	if s.cacheEntries > 0 && s.cacheBytes > 0 && s.cacheMaxAge > 0 {
		s.cache = newCache(s.cacheEntries, s.cacheBytes, s.cacheMaxAge)
	}
	s.sql = newStatements(s.table)
	s.begin = beginSQL(s.txOptions)
	if s.maxTx == 0 {
		s.maxTx = max(1, int(pool.Config().MaxConns)-1)
	}
	s.turns = make(chan struct{}, s.maxTx)
	s.orphans.release = func(ctx context.Context, key string, token pgtype.UUID) error {
		return s.releaseOn(ctx, s.pool, key, token)
	}
	return s
}

// Validate reports whether s was made by [New]; the middleware's WithStore
// refuses a zero Store with its error.
func (s *Store) Validate() error {
	if s == nil || s.pool == nil {
		return errors.New("pgstore: a nil or zero Store (no pool): make it with pgstore.New")
	}
	return nil
}

// now reads the store's clock.
func (s *Store) now() time.Time {
	if s.clock == nil {
		return time.Now()
	}
	return s.clock()
}

// shift is how far the store's clock is from time.Now: the interval added
// to the database's clock in every statement (see WithClock).
func (s *Store) shift() time.Duration {
	if s.clock == nil {
		return 0
	}
	return s.clock().Sub(time.Now())
}

// Complete implements [idempotency.Store]: one round trip. A record whose
// body is larger than the store's maximum body size is kept without it (see
// [WithMaxBodySize]). So is a record with more than 64 headers, 256 header
// values or 64 KiB of header names and values, or with an invalid or
// non-canonical header name or an invalid value: it keeps only its Location
// header, so that duplicates get 409 with it.
func (s *Store) Complete(ctx context.Context, key, token string, rec *idempotency.Record, ttl time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	owner, ok := parseToken(token)
	if !ok {
		return idempotency.ErrNotOwner
	}
	stored := s.storable(rec)
	start := s.now()
	if err := s.completeOn(ctx, s.pool, s.completeArgs(key, owner, stored, ttl)); err != nil {
		return err
	}
	s.keep(key, token, stored, ttl, start)
	return nil
}

// execer runs a statement: the pool, or a connection of it.
type execer interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// completeOn runs the complete statement with args on db.
func (s *Store) completeOn(ctx context.Context, db execer, args []any) error {
	tag, err := db.Exec(ctx, s.sql.complete, args...)
	if err != nil {
		return fmt.Errorf("pgstore: complete: %w", err)
	}
	if tag.RowsAffected() != 1 {
		return idempotency.ErrNotOwner
	}
	return nil
}

// storable returns rec as Complete writes it: within the header bounds and
// the maximum body size.
func (s *Store) storable(rec *idempotency.Record) *idempotency.Record {
	if !wire.HeaderWithinBounds(rec.Header) {
		return withoutBody(rec, wire.LocationOnly(rec.Header))
	}
	if len(rec.Body) > s.maxBody || (rec.BodyOmitted && len(rec.Body) > 0) {
		return withoutBody(rec, rec.Header)
	}
	return rec
}

// withoutBody returns a copy of rec without its body and with header h: a
// record that cannot be replayed, whose duplicates get 409 with the
// Location it keeps.
func withoutBody(rec *idempotency.Record, h http.Header) *idempotency.Record {
	r := *rec
	r.Body, r.BodyOmitted, r.Header = nil, true, h
	return &r
}

// completeArgs are the arguments of the complete statement.
func (s *Store) completeArgs(key string, owner pgtype.UUID, rec *idempotency.Record, ttl time.Duration) []any {
	var body []byte
	if !rec.BodyOmitted {
		body = nonNil(rec.Body)
	}
	return []any{key, owner, nonNil(rec.Fingerprint), rec.Method, rec.Path, rec.Status,
		encodeHeader(rec.Header), body, rec.BodyOmitted, ttl, s.shift()}
}

// keep caches the completed record that token wrote for key, at start on
// the store's clock, kept for ttl.
func (s *Store) keep(key, token string, stored *idempotency.Record, ttl time.Duration, start time.Time) {
	if s.cache == nil {
		return
	}
	kept := *stored
	kept.State, kept.Token, kept.ExpiresAt = idempotency.Completed, token, start.Add(ttl)
	s.cache.put(key, &kept, start)
}

// Release implements [idempotency.Store]: one round trip.
func (s *Store) Release(ctx context.Context, key, token string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	owner, ok := parseToken(token)
	if !ok {
		return idempotency.ErrNotOwner
	}
	return s.releaseOn(ctx, s.pool, key, owner)
}

// releaseOn runs the release statement on db.
func (s *Store) releaseOn(ctx context.Context, db execer, key string, owner pgtype.UUID) error {
	tag, err := db.Exec(ctx, s.sql.release, key, owner)
	if err != nil {
		return fmt.Errorf("pgstore: release: %w", err)
	}
	if tag.RowsAffected() != 1 {
		return idempotency.ErrNotOwner
	}
	return nil
}

// Extend implements [idempotency.Store]: one round trip, or none while the
// request's transaction is open: its lock on the key holds the key then
// (see [Store.Begin]).
func (s *Store) Extend(ctx context.Context, key, token string, lease time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if _, locked := s.locked.Load(token); locked {
		return nil
	}
	owner, ok := parseToken(token)
	if !ok {
		return idempotency.ErrNotOwner
	}
	tag, err := s.pool.Exec(ctx, s.sql.extend, key, owner, lease, s.shift())
	if err != nil {
		return fmt.Errorf("pgstore: extend: %w", err)
	}
	if tag.RowsAffected() != 1 {
		return idempotency.ErrNotOwner
	}
	return nil
}

// Get implements [idempotency.Store]: one round trip. An in-flight row
// whose lease ran out is reported too, with its past expiry: its request
// may still run (its transaction holding the key), or may have died.
func (s *Store) Get(ctx context.Context, key string) (*idempotency.Record, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	start := s.now()
	var r heldRow
	var created time.Time
	err := s.pool.QueryRow(ctx, s.sql.get, key, s.shift(), s.maxBody, maxMetaSize).
		Scan(&r.state, &r.token, &r.fingerprint, &r.method, &r.path, &r.status, &r.header, &r.metaLen,
			&r.body, &r.bodyLen, &r.bodyOmitted, &r.expiresAt, &r.dbNow, &created)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return nil, idempotency.ErrNoRecord
	case err != nil:
		return nil, fmt.Errorf("pgstore: get: %w", err)
	}
	rec, err := r.record(s.maxBody, start)
	if err != nil {
		return nil, err
	}
	rec.CreatedAt = start.Add(created.Sub(r.dbNow))
	return rec, nil
}

// Delete implements [idempotency.Store]: one round trip, a DELETE of the
// key's row whatever its state. It also drops the record from this
// store's local cache; other processes that cached it may replay it until
// it leaves their caches (see [WithLocalCache]).
func (s *Store) Delete(ctx context.Context, key string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	tag, err := s.pool.Exec(ctx, s.sql.delete, key)
	if s.cache != nil {
		// After the DELETE: dropped before it, the record could be cached
		// again in between. Dropped even when the DELETE failed.
		s.cache.forget(key)
	}
	switch {
	case err != nil:
		return fmt.Errorf("pgstore: delete: %w", err)
	case tag.RowsAffected() == 0:
		return idempotency.ErrNoRecord
	}
	return nil
}

// lockID is the advisory lock of key: the FNV-1a hash of key. Two keys
// that share a lock only wait for each other's transactions.
func lockID(key string) int64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(key); i++ {
		h ^= uint64(key[i])
		h *= 1099511628211
	}
	return int64(h)
}

// parseToken reads a token returned by Acquire. A string that is not a UUID
// was not issued by a Store, so it owns no key.
func parseToken(s string) (pgtype.UUID, bool) {
	id, err := uuid.Parse(s)
	if err != nil {
		return pgtype.UUID{}, false
	}
	return pgtype.UUID{Bytes: id, Valid: true}, true
}

// nonNil returns b, or an empty slice for nil: pgx sends a nil slice as
// NULL.
func nonNil(b []byte) []byte {
	if b == nil {
		return []byte{}
	}
	return b
}

var (
	_ idempotency.Store        = (*Store)(nil)
	_ idempotency.TxStore      = (*Store)(nil)
	_ idempotency.CachingStore = (*Store)(nil)
)
