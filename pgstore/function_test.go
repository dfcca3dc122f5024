package pgstore_test

import (
	"context"
	"errors"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	idem "github.com/ginidem/idempotency"
	"github.com/ginidem/idempotency/internal/pgtest"
	"github.com/ginidem/idempotency/pgstore"
)

// TestSpec31_AFunctionsWritesCommitWithItsRecord: a Runner's function on
// Postgres writes through the call's transaction: its row and the record
// commit together, a redelivery gets the recorded result and writes
// nothing, and a function that fails leaves no row and a free key.
func TestSpec31_AFunctionsWritesCommitWithItsRecord(t *testing.T) {
	db := pgtest.NewDB(t)
	db.Exec(t, ordersSchema)
	store := newStore(t, db)
	runner := idem.NewRunner(idem.WithStore(store))
	ctx := context.Background()
	insert := func(ctx context.Context, tx idem.Tx) ([]byte, error) {
		var id string
		err := pgstore.TxOf(tx).QueryRow(ctx, "INSERT INTO orders (item) VALUES ('book') RETURNING id::text").Scan(&id)
		return []byte(id), err
	}
	call := idem.Call{Scope: "orders", Key: "msg-1", Payload: []byte("book")}
	first, err := runner.Do(ctx, call, insert)
	require.NoError(t, err)
	again, err := runner.Do(ctx, call, insert)
	require.NoError(t, err)
	assert.True(t, again.Replayed)
	assert.Equal(t, first.Value, again.Value)
	assert.Equal(t, 1, db.Count(t, "orders"))
	assert.Equal(t, 1, db.Count(t, "idempotency_records WHERE state = 2"))

	failure := errors.New("payment refused")
	failed := idem.Call{Scope: "orders", Key: "msg-2", Payload: []byte("book")}
	_, err = runner.Do(ctx, failed, func(ctx context.Context, tx idem.Tx) ([]byte, error) {
		if _, err := insert(ctx, tx); err != nil {
			return nil, err
		}
		return nil, failure
	})
	assert.ErrorIs(t, err, failure)
	assert.Equal(t, 1, db.Count(t, "orders"), "the failed call's row rolled back")
	res, err := runner.Do(ctx, failed, insert)
	require.NoError(t, err, "the key was released")
	assert.False(t, res.Replayed)
	assert.Equal(t, 2, db.Count(t, "orders"))
}
