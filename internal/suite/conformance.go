package suite

import (
	"context"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	idem "github.com/ginidem/idempotency"
)

// Conformance is the store-level contract every Store keeps: one table,
// run on the store of h (TestStoreConformance).
func Conformance(t *testing.T, h Harness) {
	const lease, ttl = time.Minute, time.Hour
	cases := []struct {
		name string
		run  func(t *testing.T, s idem.Store, advance func(time.Duration))
	}{
		{"spec10/acquire free key returns a token", func(t *testing.T, s idem.Store, _ func(time.Duration)) {
			token, held, err := s.Acquire(StoreCtx(t), "k", TestClaim, lease)
			require.NoError(t, err)
			assert.NotEmpty(t, token)
			assert.Nil(t, held)
		}},
		{"spec10/acquire held key returns the in-flight record", func(t *testing.T, s idem.Store, _ func(time.Duration)) {
			ctx := StoreCtx(t)
			_, _, err := s.Acquire(ctx, "k", TestClaim, lease)
			require.NoError(t, err)
			token, held, err := s.Acquire(ctx, "k", &idem.Record{Fingerprint: []byte("other")}, lease)
			require.NoError(t, err)
			assert.Empty(t, token)
			require.NotNil(t, held)
			assert.Equal(t, idem.InFlight, held.State)
			assert.Equal(t, TestClaim.Fingerprint, held.Fingerprint)
			assert.Equal(t, TestClaim.Method, held.Method)
			assert.Equal(t, TestClaim.Path, held.Path)
		}},
		{"spec10/tokens are unique per acquisition", func(t *testing.T, s idem.Store, advance func(time.Duration)) {
			ctx := StoreCtx(t)
			first, _, err := s.Acquire(ctx, "k", TestClaim, lease)
			require.NoError(t, err)
			advance(lease + time.Second)
			second, held, err := s.Acquire(ctx, "k", TestClaim, lease)
			require.NoError(t, err)
			assert.Nil(t, held)
			assert.NotEqual(t, first, second)
		}},
		{"spec11/complete stores the response exactly", func(t *testing.T, s idem.Store, _ func(time.Duration)) {
			ctx := StoreCtx(t)
			token, _, err := s.Acquire(ctx, "k", TestClaim, lease)
			require.NoError(t, err)
			body := []byte("{\"id\":1}\x00\xff binary \r\n")
			rec := &idem.Record{
				State: idem.Completed, Fingerprint: TestClaim.Fingerprint, Method: "POST", Path: "/things",
				Status: 201, Header: http.Header{"Location": {"/things/1"}, "Link": {"<a>", "<b>"}}, Body: body,
			}
			require.NoError(t, s.Complete(ctx, "k", token, rec, ttl))
			_, held, err := s.Acquire(ctx, "k", TestClaim, lease)
			require.NoError(t, err)
			require.NotNil(t, held)
			assert.Equal(t, idem.Completed, held.State)
			assert.Equal(t, 201, held.Status)
			assert.Equal(t, rec.Header, held.Header)
			assert.Equal(t, body, held.Body)
			assert.False(t, held.BodyOmitted)
			assert.Equal(t, TestClaim.Fingerprint, held.Fingerprint)
			assert.Equal(t, "POST", held.Method)
			assert.Equal(t, "/things", held.Path)
			assert.True(t, held.ExpiresAt.After(time.Now().Add(-time.Hour*24*365*10)), "ExpiresAt is set")
		}},
		{"spec14/a completed record without body keeps BodyOmitted", func(t *testing.T, s idem.Store, _ func(time.Duration)) {
			ctx := StoreCtx(t)
			token, _, err := s.Acquire(ctx, "k", TestClaim, lease)
			require.NoError(t, err)
			rec := &idem.Record{State: idem.Completed, Fingerprint: TestClaim.Fingerprint, Status: 200,
				Header: http.Header{"Location": {"/s"}}, BodyOmitted: true}
			require.NoError(t, s.Complete(ctx, "k", token, rec, ttl))
			_, held, err := s.Acquire(ctx, "k", TestClaim, lease)
			require.NoError(t, err)
			require.NotNil(t, held)
			assert.True(t, held.BodyOmitted)
			assert.Empty(t, held.Body)
			assert.Equal(t, "/s", held.Header.Get("Location"))
		}},
		{"spec12/release frees the key", func(t *testing.T, s idem.Store, _ func(time.Duration)) {
			ctx := StoreCtx(t)
			token, _, err := s.Acquire(ctx, "k", TestClaim, lease)
			require.NoError(t, err)
			require.NoError(t, s.Release(ctx, "k", token))
			again, held, err := s.Acquire(ctx, "k", TestClaim, lease)
			require.NoError(t, err)
			assert.Nil(t, held)
			assert.NotEmpty(t, again)
		}},
		{"spec23/wrong token cannot complete, release or extend", func(t *testing.T, s idem.Store, _ func(time.Duration)) {
			ctx := StoreCtx(t)
			token, _, err := s.Acquire(ctx, "k", TestClaim, lease)
			require.NoError(t, err)
			rec := &idem.Record{State: idem.Completed, Status: 200}
			assert.ErrorIs(t, s.Complete(ctx, "k", "not-"+token, rec, ttl), idem.ErrNotOwner)
			assert.ErrorIs(t, s.Release(ctx, "k", "not-"+token), idem.ErrNotOwner)
			assert.ErrorIs(t, s.Extend(ctx, "k", "not-"+token, lease), idem.ErrNotOwner)
			other := "00000000-0000-4000-8000-000000000000" // a well-formed token that was never issued
			assert.ErrorIs(t, s.Complete(ctx, "k", other, rec, ttl), idem.ErrNotOwner)
			assert.ErrorIs(t, s.Release(ctx, "k", other), idem.ErrNotOwner)
			assert.ErrorIs(t, s.Extend(ctx, "k", other, lease), idem.ErrNotOwner)
			_, held, err := s.Acquire(ctx, "k", TestClaim, lease)
			require.NoError(t, err)
			require.NotNil(t, held)
			assert.Equal(t, idem.InFlight, held.State)
		}},
		{"spec23/a completed record cannot be released or completed again", func(t *testing.T, s idem.Store, _ func(time.Duration)) {
			ctx := StoreCtx(t)
			token, _, err := s.Acquire(ctx, "k", TestClaim, lease)
			require.NoError(t, err)
			require.NoError(t, s.Complete(ctx, "k", token, &idem.Record{State: idem.Completed, Status: 201, Body: []byte("a")}, ttl))
			assert.ErrorIs(t, s.Release(ctx, "k", token), idem.ErrNotOwner)
			assert.ErrorIs(t, s.Extend(ctx, "k", token, lease), idem.ErrNotOwner)
			assert.ErrorIs(t, s.Complete(ctx, "k", token, &idem.Record{State: idem.Completed, Status: 200, Body: []byte("b")}, ttl), idem.ErrNotOwner)
			_, held, err := s.Acquire(ctx, "k", TestClaim, lease)
			require.NoError(t, err)
			require.NotNil(t, held)
			assert.Equal(t, []byte("a"), held.Body)
		}},
		{"spec23/an expired owner cannot overwrite the newer record", func(t *testing.T, s idem.Store, advance func(time.Duration)) {
			ctx := StoreCtx(t)
			old, _, err := s.Acquire(ctx, "k", TestClaim, lease)
			require.NoError(t, err)
			advance(lease + time.Second)
			fresh, held, err := s.Acquire(ctx, "k", TestClaim, lease)
			require.NoError(t, err)
			require.Nil(t, held)
			assert.ErrorIs(t, s.Complete(ctx, "k", old, &idem.Record{State: idem.Completed, Status: 200}, ttl), idem.ErrNotOwner)
			assert.ErrorIs(t, s.Release(ctx, "k", old), idem.ErrNotOwner)
			require.NoError(t, s.Complete(ctx, "k", fresh, &idem.Record{State: idem.Completed, Status: 201}, ttl))
			_, held, err = s.Acquire(ctx, "k", TestClaim, lease)
			require.NoError(t, err)
			require.NotNil(t, held)
			assert.Equal(t, 201, held.Status)
		}},
		{"spec23/an expired lease that nobody took is no longer renewed, but its completion lands", func(t *testing.T, s idem.Store, advance func(time.Duration)) {
			ctx := StoreCtx(t)
			token, _, err := s.Acquire(ctx, "k", TestClaim, lease)
			require.NoError(t, err)
			advance(lease + time.Second)
			assert.ErrorIs(t, s.Extend(ctx, "k", token, lease), idem.ErrNotOwner)
			require.NoError(t, s.Complete(ctx, "k", token, &idem.Record{State: idem.Completed, Fingerprint: TestClaim.Fingerprint,
				Method: TestClaim.Method, Path: TestClaim.Path, Status: 200}, ttl))
			_, held, err := s.Acquire(ctx, "k", TestClaim, lease)
			require.NoError(t, err)
			require.NotNil(t, held)
			assert.Equal(t, idem.Completed, held.State)
		}},
		{"spec23/an expired lease that another request took cannot be completed", func(t *testing.T, s idem.Store, advance func(time.Duration)) {
			ctx := StoreCtx(t)
			token, _, err := s.Acquire(ctx, "k", TestClaim, lease)
			require.NoError(t, err)
			advance(lease + time.Second)
			newer, held, err := s.Acquire(ctx, "k", TestClaim, lease)
			require.NoError(t, err)
			require.Nil(t, held, "taken over")
			assert.ErrorIs(t, s.Complete(ctx, "k", token, &idem.Record{State: idem.Completed, Status: 200}, ttl), idem.ErrNotOwner)
			assert.ErrorIs(t, s.Release(ctx, "k", token), idem.ErrNotOwner)
			require.NoError(t, s.Release(ctx, "k", newer))
		}},
		{"spec10/extend keeps the lease past its first end", func(t *testing.T, s idem.Store, advance func(time.Duration)) {
			ctx := StoreCtx(t)
			token, _, err := s.Acquire(ctx, "k", TestClaim, lease)
			require.NoError(t, err)
			advance(lease / 2)
			require.NoError(t, s.Extend(ctx, "k", token, lease))
			advance(lease/2 + time.Second)
			_, held, err := s.Acquire(ctx, "k", TestClaim, lease)
			require.NoError(t, err)
			require.NotNil(t, held, "the extended lease still holds the key")
			require.NoError(t, s.Complete(ctx, "k", token, &idem.Record{State: idem.Completed, Status: 200}, ttl))
		}},
		{"spec10/an expired lease frees the key", func(t *testing.T, s idem.Store, advance func(time.Duration)) {
			ctx := StoreCtx(t)
			_, _, err := s.Acquire(ctx, "k", TestClaim, lease)
			require.NoError(t, err)
			advance(lease + time.Second)
			token, held, err := s.Acquire(ctx, "k", TestClaim, lease)
			require.NoError(t, err)
			assert.Nil(t, held)
			assert.NotEmpty(t, token)
		}},
		{"spec19/a completed record expires after its ttl", func(t *testing.T, s idem.Store, advance func(time.Duration)) {
			ctx := StoreCtx(t)
			token, _, err := s.Acquire(ctx, "k", TestClaim, lease)
			require.NoError(t, err)
			require.NoError(t, s.Complete(ctx, "k", token, &idem.Record{State: idem.Completed, Status: 200}, ttl))
			advance(ttl - time.Minute)
			_, held, err := s.Acquire(ctx, "k", TestClaim, lease)
			require.NoError(t, err)
			require.NotNil(t, held, "still kept before the ttl")
			advance(2 * time.Minute)
			_, held, err = s.Acquire(ctx, "k", TestClaim, lease)
			require.NoError(t, err)
			assert.Nil(t, held, "new again after the ttl")
		}},
		{"spec6/keys are independent", func(t *testing.T, s idem.Store, _ func(time.Duration)) {
			ctx := StoreCtx(t)
			a, _, err := s.Acquire(ctx, "a", TestClaim, lease)
			require.NoError(t, err)
			b, held, err := s.Acquire(ctx, "b", TestClaim, lease)
			require.NoError(t, err)
			assert.Nil(t, held)
			assert.NotEqual(t, a, b)
		}},
		{"spec10/concurrent acquires: exactly one wins", func(t *testing.T, s idem.Store, _ func(time.Duration)) {
			ctx := StoreCtx(t)
			var wins atomic.Int32
			var wg sync.WaitGroup
			for range 50 {
				wg.Go(func() {
					token, held, err := s.Acquire(ctx, "k", TestClaim, lease)
					assert.NoError(t, err)
					if token != "" {
						wins.Add(1)
					} else {
						assert.NotNil(t, held, "a loser gets the held record")
					}
				})
			}
			wg.Wait()
			assert.Equal(t, int32(1), wins.Load())
		}},
		{"spec29/delete forgets a completed record", func(t *testing.T, s idem.Store, _ func(time.Duration)) {
			ctx := StoreCtx(t)
			token, _, err := s.Acquire(ctx, "k", TestClaim, lease)
			require.NoError(t, err)
			require.NoError(t, s.Complete(ctx, "k", token, &idem.Record{State: idem.Completed, Status: 201}, ttl))
			require.NoError(t, s.Delete(ctx, "k"))
			again, held, err := s.Acquire(ctx, "k", TestClaim, lease)
			require.NoError(t, err)
			assert.Nil(t, held, "the key runs as new")
			assert.NotEmpty(t, again)
		}},
		{"spec29/delete frees an in-flight key and the old token no longer owns it", func(t *testing.T, s idem.Store, _ func(time.Duration)) {
			ctx := StoreCtx(t)
			old, _, err := s.Acquire(ctx, "k", TestClaim, lease)
			require.NoError(t, err)
			require.NoError(t, s.Delete(ctx, "k"))
			assert.ErrorIs(t, s.Extend(ctx, "k", old, lease), idem.ErrNotOwner)
			assert.ErrorIs(t, s.Release(ctx, "k", old), idem.ErrNotOwner)
			assert.ErrorIs(t, s.Complete(ctx, "k", old, &idem.Record{State: idem.Completed, Status: 200}, ttl), idem.ErrNotOwner)
			fresh, held, err := s.Acquire(ctx, "k", TestClaim, lease)
			require.NoError(t, err)
			require.Nil(t, held)
			assert.NotEqual(t, old, fresh)
			assert.ErrorIs(t, s.Complete(ctx, "k", old, &idem.Record{State: idem.Completed, Status: 200}, ttl), idem.ErrNotOwner,
				"nor the new record")
			require.NoError(t, s.Complete(ctx, "k", fresh, &idem.Record{State: idem.Completed, Status: 201}, ttl))
		}},
		{"spec29/deleting or getting a missing key says there is none", func(t *testing.T, s idem.Store, _ func(time.Duration)) {
			ctx := StoreCtx(t)
			assert.ErrorIs(t, s.Delete(ctx, "never"), idem.ErrNoRecord)
			_, err := s.Get(ctx, "never")
			assert.ErrorIs(t, err, idem.ErrNoRecord)
			_, _, err = s.Acquire(ctx, "k", TestClaim, lease)
			require.NoError(t, err)
			require.NoError(t, s.Delete(ctx, "k"))
			assert.ErrorIs(t, s.Delete(ctx, "k"), idem.ErrNoRecord, "twice")
			_, err = s.Get(ctx, "k")
			assert.ErrorIs(t, err, idem.ErrNoRecord)
		}},
		{"spec29/get reads a record in flight and completed", func(t *testing.T, s idem.Store, advance func(time.Duration)) {
			ctx := StoreCtx(t)
			token, _, err := s.Acquire(ctx, "k", TestClaim, lease)
			require.NoError(t, err)
			rec, err := s.Get(ctx, "k")
			require.NoError(t, err)
			assert.Equal(t, idem.InFlight, rec.State)
			assert.Equal(t, TestClaim.Fingerprint, rec.Fingerprint)
			assert.Equal(t, TestClaim.Path, rec.Path)
			assert.False(t, rec.ExpiresAt.IsZero(), "the end of its lease")
			advance(time.Second)
			require.NoError(t, s.Complete(ctx, "k", token, &idem.Record{State: idem.Completed, Fingerprint: TestClaim.Fingerprint,
				Method: TestClaim.Method, Path: TestClaim.Path, Status: http.StatusCreated, Body: []byte("made")}, ttl))
			rec, err = s.Get(ctx, "k")
			require.NoError(t, err)
			assert.Equal(t, idem.Completed, rec.State)
			assert.Equal(t, http.StatusCreated, rec.Status)
			assert.Equal(t, "made", string(rec.Body))
			if !rec.CreatedAt.IsZero() { // every store but Redis keeps it
				assert.WithinDuration(t, rec.ExpiresAt.Add(-ttl-time.Second), rec.CreatedAt, 5*time.Second)
			}
		}},
		{"spec22/a cancelled context is an error", func(t *testing.T, s idem.Store, _ func(time.Duration)) {
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			_, _, err := s.Acquire(ctx, "k", TestClaim, lease)
			assert.Error(t, err)
			assert.Error(t, s.Complete(ctx, "k", "00000000-0000-4000-8000-000000000000", &idem.Record{State: idem.Completed, Status: 200}, ttl))
			assert.Error(t, s.Release(ctx, "k", "00000000-0000-4000-8000-000000000000"))
			assert.Error(t, s.Extend(ctx, "k", "00000000-0000-4000-8000-000000000000", lease))
			assert.Error(t, s.Delete(ctx, "k"))
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s, advance := h.New(t)
			tc.run(t, s, advance)
		})
	}
}
