package idempotency_test

import (
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	idem "github.com/ginidem/idempotency"
	"github.com/ginidem/idempotency/internal/suite"
)

// memoryApp serves the test routes over a memory store built with opts.
func memoryApp(t *testing.T, storeOpts []idem.MemoryStoreOption, opts ...idem.Option) (*suite.App, *idem.MemoryStore, *fakeClock) {
	t.Helper()
	clock := newFakeClock()
	store := idem.NewMemoryStore(append([]idem.MemoryStoreOption{idem.WithClock(clock.Now)}, storeOpts...)...)
	h := suite.Harness{Name: "memory", New: func(*testing.T) (idem.Store, func(time.Duration)) { return store, clock.Advance }}
	return suite.NewApp(t, h, opts...), store, clock
}

func TestSpec24_MemoryStoreBoundedByEntries(t *testing.T) {
	a, store, _ := memoryApp(t, []idem.MemoryStoreOption{idem.WithMaxEntries(100)})
	keys := make([]string, 1000)
	for i := range keys {
		keys[i] = uuid.NewString()
		require.Equal(t, http.StatusCreated, a.Do(suite.Post("/things", keys[i], "x")).Status)
		require.LessOrEqual(t, store.Len(), 100)
	}
	assert.Equal(t, 100, store.Len())
	assert.True(t, a.Do(suite.Post("/things", keys[999], "x")).Replayed(), "the newest is kept")
	assert.False(t, a.Do(suite.Post("/things", keys[0], "x")).Replayed(), "the least recently used was evicted")
}

func TestSpec24_MemoryStoreEvictsLeastRecentlyUsed(t *testing.T) {
	a, _, _ := memoryApp(t, []idem.MemoryStoreOption{idem.WithMaxEntries(3)})
	k := []string{uuid.NewString(), uuid.NewString(), uuid.NewString(), uuid.NewString()}
	for _, key := range k[:3] {
		a.Do(suite.Post("/things", key, "x"))
	}
	assert.True(t, a.Do(suite.Post("/things", k[0], "x")).Replayed()) // k[0] is now the most recent
	a.Do(suite.Post("/things", k[3], "x"))                            // evicts k[1]
	assert.True(t, a.Do(suite.Post("/things", k[0], "x")).Replayed())
	assert.False(t, a.Do(suite.Post("/things", k[1], "x")).Replayed())
}

func TestSpec24_MemoryStoreBoundedByBytes(t *testing.T) {
	const bound = 64 << 10
	a, store, _ := memoryApp(t, []idem.MemoryStoreOption{idem.WithMaxBytes(bound)})
	for range 200 { // each record holds a 4 KiB body
		require.Equal(t, http.StatusOK, a.Do(suite.Post("/big", uuid.NewString(), "x")).Status)
		require.LessOrEqual(t, store.Bytes(), int64(bound))
	}
	assert.Greater(t, store.Len(), 5)
	assert.Less(t, store.Len(), 17)
}

func TestSpec24_InFlightRecordsAreNeverEvicted(t *testing.T) {
	a, store, _ := memoryApp(t, []idem.MemoryStoreOption{idem.WithMaxEntries(2)})
	first := a.Async(suite.Post("/slow", suite.Key1, "x"))
	second := a.Async(suite.Post("/slow", suite.Key2, "x"))
	a.WaitEntered(2)
	full := a.Do(suite.Post("/things", uuid.NewString(), "x"))
	assert.Equal(t, http.StatusServiceUnavailable, full.Status, "no room: refuse rather than evict an in-flight key")
	assert.Equal(t, idem.ProblemStoreUnavailable, full.Problem(t).Type)
	assert.Equal(t, http.StatusConflict, a.DoBounded(suite.Post("/slow", suite.Key1, "x")).Status, "still held")
	a.Open()
	suite.Recv(t, first)
	suite.Recv(t, second)
	assert.Equal(t, 2, store.Len())
	assert.Equal(t, http.StatusCreated, a.Do(suite.Post("/things", uuid.NewString(), "x")).Status, "completed ones make room")
}

func TestSpec24_ExpiredRecordsAreReclaimed(t *testing.T) {
	a, store, clock := memoryApp(t, nil, idem.WithTTL(time.Hour))
	for range 10 {
		a.Do(suite.Post("/things", uuid.NewString(), "x"))
	}
	require.Equal(t, 10, store.Len())
	clock.Advance(2 * time.Hour)
	for range 10 {
		a.Do(suite.Post("/things", uuid.NewString(), "x"))
	}
	assert.Equal(t, 10, store.Len(), "the expired ten are gone without a janitor")
}

// TestSpec24_MemoryStoreFullOfInFlightRecords: the store refuses a new key
// at its bound rather than dropping one in flight, and an expired lease
// makes room.
func TestSpec24_MemoryStoreFullOfInFlightRecords(t *testing.T) {
	clock := newFakeClock()
	s := idem.NewMemoryStore(idem.WithMaxEntries(2), idem.WithClock(clock.Now))
	ctx := context.Background()
	for i := range 2 {
		_, _, err := s.Acquire(ctx, fmt.Sprint(i), testClaim, time.Minute)
		require.NoError(t, err)
	}
	_, _, err := s.Acquire(ctx, "2", testClaim, time.Minute)
	assert.ErrorIs(t, err, idem.ErrStoreFull)
	clock.Advance(2 * time.Minute)
	token, _, err := s.Acquire(ctx, "2", testClaim, time.Minute)
	assert.NoError(t, err)
	assert.NotEmpty(t, token)
	assert.Equal(t, 1, s.Len())
}

// TestSpec24_ExpiredInFlightGoesBeforeLiveCompleted: at the entry bound, an
// in-flight record whose lease ran out makes room for a new key; the live
// completed record stays, so its retry is still a replay.
func TestSpec24_ExpiredInFlightGoesBeforeLiveCompleted(t *testing.T) {
	clock := newFakeClock()
	s := idem.NewMemoryStore(idem.WithMaxEntries(3), idem.WithClock(clock.Now))
	ctx := context.Background()
	token, _, err := s.Acquire(ctx, "live", testClaim, time.Minute)
	require.NoError(t, err)
	require.NoError(t, s.Complete(ctx, "live", token, &idem.Record{State: idem.Completed, Status: 201}, time.Hour))
	_, _, err = s.Acquire(ctx, "stale", testClaim, time.Minute)
	require.NoError(t, err)
	_, _, err = s.Acquire(ctx, "running", testClaim, time.Hour) // in flight behind the stale one
	require.NoError(t, err)
	clock.Advance(2 * time.Minute)

	token, held, err := s.Acquire(ctx, "new", testClaim, time.Minute)
	require.NoError(t, err)
	assert.NotEmpty(t, token)
	assert.Nil(t, held)
	assert.Equal(t, 3, s.Len())
	for key, state := range map[string]idem.State{"live": idem.Completed, "running": idem.InFlight} {
		_, held, err = s.Acquire(ctx, key, testClaim, time.Minute)
		require.NoError(t, err)
		require.NotNil(t, held, "%s is kept", key)
		assert.Equal(t, state, held.State, key)
	}
}
