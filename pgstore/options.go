package pgstore

import (
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Option configures a [Store].
type Option interface{ apply(*Store) }

type optionFunc func(*Store)

func (f optionFunc) apply(s *Store) { f(s) }

// DefaultTable is the table a [Store] keeps its records in unless
// [WithTable] names another.
const DefaultTable = "idempotency_records"

// DefaultMaxBodySize is the default largest response body a [Store] keeps
// or reads: the middleware's default response body cap (1 MiB).
const DefaultMaxBodySize = 1 << 20

// maxTableLen leaves room in Postgres' 63-byte names for the suffix of the
// index named after the table.
const maxTableLen = 48

// WithTable sets the table a [Store] keeps its records in (default
// [DefaultTable]). The name must be a plain, unquoted identifier: lower-case
// ASCII letters, digits and underscores, not starting with a digit, at most
// 48 bytes. The table is looked up on the connection's search_path; to keep
// it in a schema of its own, set search_path on the pool's connections
// (the search_path run-time parameter of the connection string). [New]
// panics on an invalid name.
//
//	store := pgstore.New(pool, pgstore.WithTable("orders_idempotency"))
func WithTable(name string) Option {
	return optionFunc(func(s *Store) { s.table = name })
}

// WithClock makes a [Store] read the time from now, for tests that move time
// forward.
//
// Every expiry the store enforces (leases, record lifetimes, the sweep) is
// computed by Postgres, from the database's clock (statement_timestamp()),
// so replicas of a service need not have synchronized clocks: they all read
// one clock. WithClock shifts that clock by how far now is from time.Now at
// each call; a test whose clock moves an hour forward sees every record an
// hour older. The local cache, and the ExpiresAt of the records the store
// returns, read now directly. Give every store that shares a table the same
// shift, or none.
func WithClock(now func() time.Time) Option {
	return optionFunc(func(s *Store) { s.clock = now })
}

// WithLocalCache bounds the in-process cache of completed records in front
// of Postgres (default 10,000 records and 32 MiB; 0 and 0 turn it off). A
// completed record never changes until it expires, so a replay, a mismatch
// or a 409 for a record this process has read or written is answered from
// the cache, without a round trip. Each cached record expires no later than
// its row, and at most the cache's maximum age after it was read (see
// [WithLocalCacheMaxAge]). A new key and an in-flight check always go to
// Postgres, so correctness across processes is unchanged. [Store.Delete]
// drops a record from this process's cache only: other processes may
// replay it until it leaves their caches.
func WithLocalCache(maxEntries int, maxBytes int64) Option {
	return optionFunc(func(s *Store) { s.cacheEntries, s.cacheBytes = maxEntries, maxBytes })
}

// WithLocalCacheMaxAge bounds how long the local cache keeps a record after
// reading it from Postgres (default and maximum 1 minute): how long a record
// deleted by an operator on another process, or lost with a restored
// database, can still be replayed here. Values below 1 turn the cache off.
func WithLocalCacheMaxAge(d time.Duration) Option {
	return optionFunc(func(s *Store) { s.cacheMaxAge = min(d, time.Minute) })
}

// WithMaxBodySize bounds the response body a [Store] keeps and reads, in
// bytes (default [DefaultMaxBodySize]). Complete keeps a record with a
// larger body without it, as if the body had been over the middleware's
// cap: duplicates get 409 with the stored Location instead of a replay.
// Acquire refuses a row with a larger body ([ErrCorruptRecord]) without
// reading the body out of Postgres. Keep it at or above the middleware's
// response body cap. Values below 1 are ignored.
func WithMaxBodySize(n int) Option {
	return optionFunc(func(s *Store) {
		if n > 0 {
			s.maxBody = n
		}
	})
}

// WithTxOptions sets the options of the request transactions that
// [Store.Begin] opens (default: Postgres' default, read committed). Under
// repeatable read or serializable, a commit that fails on a serialization
// conflict rolls back the handler's writes and the record together, and the
// middleware answers with a problem; the client may retry with the same
// key. A BeginQuery of opts replaces the BEGIN statement; the store still
// takes the key's lock after it.
//
//	store := pgstore.New(pool, pgstore.WithTxOptions(pgx.TxOptions{IsoLevel: pgx.Serializable}))
func WithTxOptions(opts pgx.TxOptions) Option {
	return optionFunc(func(s *Store) { s.txOptions = opts })
}

// WithMaxTransactions bounds the request transactions open at once (default:
// all but one of the pool's connections, at least one). A handler whose
// transaction would pass the bound waits for its turn at its first
// statement, with its own context, so that the store's own statements
// (acquisitions, releases) and the handlers' reads through the pool always
// find a connection. Set it lower when other work of the application needs
// more of the pool. [New] panics on a value below 1.
//
//	store := pgstore.New(pool, pgstore.WithMaxTransactions(8))
func WithMaxTransactions(n int) Option {
	if n < 1 {
		panic(fmt.Sprintf("pgstore: WithMaxTransactions needs at least 1, got %d", n))
	}
	return optionFunc(func(s *Store) { s.maxTx = n })
}

// validTable reports whether name is a plain identifier: see WithTable.
func validTable(name string) error {
	if name == "" || len(name) > maxTableLen {
		return fmt.Errorf("pgstore: table name %.80q must be 1 to %d bytes", name, maxTableLen)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c >= 'a' && c <= 'z', c == '_':
		case c >= '0' && c <= '9' && i > 0:
		default:
			return fmt.Errorf("pgstore: table name %.80q is not a plain identifier (lower-case letters, digits, underscores)", name)
		}
	}
	return nil
}
