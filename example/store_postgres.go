package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ginidem/idempotency"
	"github.com/ginidem/idempotency/pgstore"
)

// postgres is the database of -postgres: the requisitions and, unless
// -idempotency=false, the idempotency records beside them (pgstore), so
// that a requisition and the record of its answer commit together.
type postgres struct {
	pool  *pgxpool.Pool
	reqs  *pgRequisitions
	store idempotency.Store // nil with -idempotency=false

	stopSweep context.CancelFunc
	swept     sync.WaitGroup
}

// openPostgres connects to the database at rawURL (postgres://user:password@host:port/db
// or a key=value string, see pgxpool.ParseConfig; pool_max_conns sizes the
// pool), creates the requisitions table and, when withStore, pgstore's
// table, and starts a sweep of expired records that close stops.
//
// Unlike the Redis store, the database must answer at start: the service
// cannot keep requisitions without it.
func openPostgres(ctx context.Context, rawURL string, withStore bool) (*postgres, error) {
	cfg, err := pgxpool.ParseConfig(rawURL)
	if err != nil {
		// Not pgx's error: it may quote a password it failed to recognise.
		return nil, errors.New("postgres URL: cannot parse it (postgres://user:password@host:port/db, or key=value pairs)")
	}
	start, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	pool, err := pgxpool.NewWithConfig(start, cfg)
	if err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}
	p := &postgres{pool: pool, reqs: &pgRequisitions{pool: pool}, stopSweep: func() {}}
	if err := p.reqs.migrate(start); err != nil {
		pool.Close()
		return nil, fmt.Errorf("postgres: creating the requisitions table: %w", err)
	}
	if !withStore {
		return p, nil
	}
	store := pgstore.New(pool)
	if err := store.Migrate(start); err != nil {
		pool.Close()
		return nil, fmt.Errorf("postgres: creating the idempotency table: %w", err)
	}
	p.store = store
	sweepCtx, stop := context.WithCancel(context.WithoutCancel(ctx))
	p.stopSweep = stop
	p.swept.Go(func() { sweep(sweepCtx, store, time.Minute) })
	return p, nil
}

// sweep deletes expired idempotency records every interval, in batches,
// until ctx is done. An expired record is already free for its key; the
// sweep reclaims its row.
func sweep(ctx context.Context, store *pgstore.Store, interval time.Duration) {
	const batch = 1000
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		for {
			n, err := store.Sweep(ctx, batch)
			if err != nil {
				if ctx.Err() == nil {
					slog.Warn("sweeping expired idempotency records", "err", err)
				}
				break
			}
			if n < batch {
				break
			}
		}
	}
}

// close stops the sweep and closes the pool.
func (p *postgres) close() {
	p.stopSweep()
	p.swept.Wait()
	p.pool.Close()
}

// redactPostgresURL returns a postgres:// URL with its password hidden, for
// logs; a key=value string is not shown.
func redactPostgresURL(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil || u.Scheme == "" {
		return "postgres (connection string not shown)"
	}
	return u.Redacted()
}
