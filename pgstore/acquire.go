package pgstore

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ginidem/idempotency"
)

// maxMetaSize bounds the bytes of fingerprint, method, path and header
// column that Acquire reads from a row: far above what the middleware
// writes (a 32-byte fingerprint, a path within the request line's limit,
// headers within 64 KiB), so a larger row is not a record of this package.
const maxMetaSize = 2 << 20

// acquireAttempts bounds the statements one Acquire runs. A second one runs
// only when the row changed hands while the first ran (see Acquire).
const acquireAttempts = 5

// Cached implements [idempotency.CachingStore]: the completed record for
// key in the local cache, or nil.
func (s *Store) Cached(key string) *idempotency.Record {
	if s.cache == nil {
		return nil
	}
	return s.cache.get(key, s.now())
}

// Acquire implements [idempotency.Store]: one round trip, or none for a
// completed record in the local cache. A row under the key that is not a
// readable record is an error wrapping [ErrCorruptRecord]; Acquire leaves it
// in place. The wait for a connection of the pool is queueing (see
// [idempotency.Wait]).
//
// An acquisition that failed without a reply from Postgres (a timeout, a
// broken connection) may still have committed, holding the key for a
// lease that nobody will complete: the store releases it in the background
// as soon as Postgres answers again, and an acquisition of the same key on
// this process takes it over in its own statement (SPEC 22).
//
// The statement reads the live row that holds the key, or else inserts the
// key, taking it over when its row has expired. Under read committed, a row
// that another request inserted or took over after the statement's
// snapshot is seen by the insert but not by the read, and the statement
// returns nothing: Acquire then runs it again, at most a few times. A held
// key costs a read: no row lock, no write.
func (s *Store) Acquire(ctx context.Context, key string, claim *idempotency.Record, lease time.Duration) (string, *idempotency.Record, error) {
	if err := ctx.Err(); err != nil {
		return "", nil, err
	}
	if s.cache != nil {
		if held := s.cache.get(key, s.now()); held != nil {
			return "", held, nil
		}
	}
	var fp []byte
	var method, path string
	if claim != nil {
		fp, method, path = claim.Fingerprint, claim.Method, claim.Path
	}
	// Waiting for a connection is queueing, bounded by the request's own
	// context; the store timeout starts once the wait is over.
	var conn *pgxpool.Conn
	call := ctx
	ctx, cancel, err := idempotency.Wait(ctx, func(wait context.Context) (err error) {
		if st := s.pool.Stat(); st.TotalConns() < st.MaxConns() {
			wait = call // a new connection: talking to Postgres, bounded by the store timeout
		}
		conn, err = s.pool.Acquire(wait)
		return err
	})
	if err != nil {
		return "", nil, fmt.Errorf("pgstore: acquire: %w", err)
	}
	defer cancel()
	defer conn.Release()
	id := uuid.New() // random (v4)
	token := pgtype.UUID{Bytes: id, Valid: true}
	taken, took := s.orphans.take(key)
	for range acquireAttempts {
		start := s.now() // before Postgres reads its clock: start+remaining is never past the real expiry
		var r heldRow
		err := conn.QueryRow(ctx, s.sql.acquire, key, token, nonNil(fp), method, path, lease, s.shift(), s.maxBody, maxMetaSize, lockID(key), taken.token).
			Scan(&r.acquired, &r.state, &r.token, &r.fingerprint, &r.method, &r.path, &r.status, &r.header, &r.metaLen,
				&r.body, &r.bodyLen, &r.bodyOmitted, &r.expiresAt, &r.dbNow)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			continue // a live row committed after the statement's snapshot: run it again
		case err != nil:
			if took {
				s.orphans.add(key, taken)
			}
			if maybeCommitted(err) { // the row may hold the key for a lease: release it once Postgres answers
				s.orphans.add(key, orphan{token: token, until: time.Now().Add(2 * lease)})
			}
			return "", nil, fmt.Errorf("pgstore: acquire: %w", err)
		case r.acquired:
			return id.String(), nil, nil
		}
		held, err := r.record(s.maxBody, start)
		if err != nil {
			return "", nil, err
		}
		if s.cache != nil && held.State == idempotency.Completed {
			s.cache.put(key, held, start)
		}
		return "", held, nil
	}
	return "", nil, fmt.Errorf("pgstore: acquire: the key changed hands during each of %d attempts", acquireAttempts)
}

// heldRow is the reply of the acquire statement.
type heldRow struct {
	acquired         bool
	state            int16
	token            pgtype.UUID
	fingerprint      []byte
	method, path     string
	status           int32
	header, body     []byte
	metaLen, bodyLen int64
	bodyOmitted      bool
	expiresAt, dbNow time.Time
}

// record returns the record of a held row, read at start on the store's
// clock.
func (r *heldRow) record(maxBody int, start time.Time) (*idempotency.Record, error) {
	state := idempotency.State(r.state)
	switch {
	case state != idempotency.InFlight && state != idempotency.Completed:
		return nil, fmt.Errorf("%w: unknown state %d", ErrCorruptRecord, r.state)
	case !r.token.Valid:
		return nil, fmt.Errorf("%w: no token", ErrCorruptRecord)
	case r.metaLen > maxMetaSize:
		return nil, fmt.Errorf("%w: %d bytes of fingerprint, method, path and headers, more than the maximum %d",
			ErrCorruptRecord, r.metaLen, maxMetaSize)
	case r.bodyLen > int64(maxBody):
		return nil, fmt.Errorf("%w: a body of %d bytes, more than the maximum %d", ErrCorruptRecord, r.bodyLen, maxBody)
	case r.status < 0 || r.status > 999:
		return nil, fmt.Errorf("%w: status %d out of range", ErrCorruptRecord, r.status)
	case r.bodyOmitted && r.bodyLen > 0:
		return nil, fmt.Errorf("%w: %d body bytes on a record without body", ErrCorruptRecord, r.bodyLen)
	}
	header, err := decodeHeader(r.header)
	if err != nil {
		return nil, err
	}
	rec := &idempotency.Record{
		State:       state,
		Token:       uuid.UUID(r.token.Bytes).String(),
		Fingerprint: r.fingerprint,
		Method:      r.method,
		Path:        r.path,
		Status:      int(r.status),
		Header:      header,
		BodyOmitted: r.bodyOmitted,
		ExpiresAt:   start.Add(r.expiresAt.Sub(r.dbNow)),
	}
	if len(r.body) > 0 {
		rec.Body = r.body
	}
	return rec, nil
}
