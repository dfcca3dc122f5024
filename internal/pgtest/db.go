package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// runID tells this binary's schemas from any other run's on a shared
// server.
var runID = func() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}()

var schemaSeq atomic.Int64

// DB is a schema of the test Postgres for one test, and a pool whose
// connections have it as their search_path.
type DB struct {
	// Pool is a pool on the schema, closed when the test ends.
	Pool *pgxpool.Pool
	// DSN is a connection string with the schema as search_path, for other
	// pools and processes.
	DSN string
	// Schema is the schema's name.
	Schema string
}

// NewDB creates a fresh schema for the test on the shared server (see
// [Shared]), dropped when the test ends, and a pool on it; opts adjust the
// pool's configuration. It skips the test when there is no Postgres.
func NewDB(t testing.TB, opts ...func(*pgxpool.Config)) *DB {
	t.Helper()
	srv := Shared(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	schema := fmt.Sprintf("t_%s_%d", runID, schemaSeq.Add(1))
	if _, err := srv.Admin.Exec(ctx, "CREATE SCHEMA "+schema); err != nil {
		t.Fatalf("creating schema %s: %v", schema, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_, _ = srv.Admin.Exec(ctx, "DROP SCHEMA "+schema+" CASCADE")
	})
	dsn := WithSearchPath(srv.DSN, schema)
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		t.Fatalf("parsing the test DSN: %v", err)
	}
	for _, opt := range opts {
		opt(cfg)
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatalf("opening a pool on schema %s: %v", schema, err)
	}
	t.Cleanup(pool.Close) // before the schema is dropped: cleanups run last in, first out
	return &DB{Pool: pool, DSN: dsn, Schema: schema}
}

// MaxConns sets the size of a pool, for [NewDB]: the default, at least 4
// and one per CPU, can be too small for a test whose requests each hold a
// connection for their transaction.
func MaxConns(n int32) func(*pgxpool.Config) {
	return func(cfg *pgxpool.Config) { cfg.MaxConns = n }
}

// WithSearchPath adds search_path to a connection string, in URL or
// key=value form.
func WithSearchPath(dsn, schema string) string {
	u, err := url.Parse(dsn)
	if err != nil || u.Scheme == "" {
		return dsn + " search_path=" + schema // key=value form
	}
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	return u.String()
}

// Exec runs sql on the test's schema and fails the test on error.
func (db *DB) Exec(t testing.TB, sql string, args ...any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := db.Pool.Exec(ctx, sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// Count returns the number of rows of table (or of "table WHERE ...") in
// the test's schema.
func (db *DB) Count(t testing.TB, table string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var n int
	if err := db.Pool.QueryRow(ctx, "SELECT count(*) FROM "+table).Scan(&n); err != nil {
		t.Fatalf("counting %s: %v", table, err)
	}
	return n
}
