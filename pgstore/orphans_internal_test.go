package pgstore

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ginidem/idempotency"
	"github.com/ginidem/idempotency/internal/pgtest"
)

// TestSpec22_ARetryTakesAnOrphanedAcquisitionOver: an acquisition of a key
// whose orphaned acquisition this process has not released yet takes the
// orphan's live in-flight row over in its own statement, instead of
// answering 409 for a lease. The orphan is pending with no release timer,
// so only the takeover can free the key.
func TestSpec22_ARetryTakesAnOrphanedAcquisitionOver(t *testing.T) {
	db := pgtest.NewDB(t)
	s := New(db.Pool)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, s.Migrate(ctx))
	claim := &idempotency.Record{Fingerprint: []byte("fp"), Method: http.MethodPost, Path: "/orders"}

	orphanToken, held, err := s.Acquire(ctx, "k", claim, time.Minute)
	require.NoError(t, err)
	require.Nil(t, held)
	id := uuid.MustParse(orphanToken)
	s.orphans.pending = map[string][]orphan{"k": {{token: pgtype.UUID{Bytes: id, Valid: true}, until: time.Now().Add(time.Minute)}}}

	other := New(db.Pool) // another process: no orphan of its own
	_, held, err = other.Acquire(ctx, "k", claim, time.Minute)
	require.NoError(t, err)
	require.NotNil(t, held, "the orphan's row holds the key for everyone else")

	token, held, err := s.Acquire(ctx, "k", claim, time.Minute)
	require.NoError(t, err)
	require.Nil(t, held, "taken over")
	assert.NotEqual(t, orphanToken, token)
	assert.Empty(t, s.orphans.pending, "the orphan is taken")
	assert.ErrorIs(t, s.Release(ctx, "k", orphanToken), idempotency.ErrNotOwner)
	assert.NoError(t, s.Complete(ctx, "k", token, &idempotency.Record{State: idempotency.Completed, Fingerprint: claim.Fingerprint,
		Method: claim.Method, Path: claim.Path, Status: http.StatusCreated}, time.Hour))
}
