package suite

import (
	"context"
	"crypto/sha256"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/gin-gonic/gin"
	"github.com/google/uuid"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	idem "github.com/ginidem/idempotency"
)

// functionKeyCases are the function reliability cases of the key, its scope and its route: SPEC 3, 4, 6 and 7.
var functionKeyCases = []behaviour{
	{"spec3/an empty key is refused; the function does not run and no store call is made", func(t *testing.T, h Harness) {
		var cs *CountingStore
		store, _ := Counted(h, &cs).New(t)
		runner := newRunner(idem.WithStore(store))
		var runs atomic.Int32
		for range 2 {
			_, err := runner.Do(context.Background(), idem.Call{Scope: "jobs", Payload: []byte("x")}, returning(&runs, "ran"))
			assert.ErrorIs(t, err, idem.ErrNoKey)
		}
		assert.Zero(t, runs.Load())
		acq, comp, rel, ext := cs.Counts()
		assert.Zero(t, acq+comp+rel+ext)
	}},
	{"spec4/a UUID in upper, lower and mixed case is one key; other keys are compared as given", func(t *testing.T, h Harness) {
		store, _ := h.New(t)
		runner := newRunner(idem.WithStore(store))
		var runs atomic.Int32
		do := func(key string) idem.Result {
			t.Helper()
			res, err := runner.Do(context.Background(), idem.Call{Key: key, Payload: []byte("x")}, returning(&runs, key))
			require.NoError(t, err, key)
			return res
		}
		first := do(strings.ToUpper(Key1))
		for _, k := range []string{Key1, strings.ToUpper(Key1[:18]) + Key1[18:]} {
			r := do(k)
			assert.True(t, r.Replayed, k)
			assert.Equal(t, first.Value, r.Value, k)
		}
		assert.False(t, do("Order-7").Replayed)
		assert.False(t, do("order-7").Replayed, "a key that is not a UUID is case-sensitive")
		assert.False(t, do("{"+Key2+"}").Replayed)
		assert.False(t, do(Key2).Replayed, "only the canonical UUID form is folded")
		assert.Equal(t, int32(5), runs.Load())
	}},
	{"spec6/a key in one scope never returns another scope's result", func(t *testing.T, h Harness) {
		store, _ := h.New(t)
		runner := newRunner(idem.WithStore(store))
		var runs atomic.Int32
		for i := range 20 {
			key := uuid.NewString()
			alice := idem.Call{Scope: "alice", Key: key, Payload: []byte("same payload")}
			bob := alice
			bob.Scope = fmt.Sprintf("bob-%d", i)
			ra, err := runner.Do(context.Background(), alice, returning(&runs, "for alice"))
			require.NoError(t, err)
			rb, err := runner.Do(context.Background(), bob, returning(&runs, "for "+bob.Scope))
			require.NoError(t, err)
			assert.False(t, rb.Replayed)
			assert.NotEqual(t, ra.Value, rb.Value)
			again, err := runner.Do(context.Background(), alice, returning(&runs, "again"))
			require.NoError(t, err)
			assert.Equal(t, "for alice", string(again.Value))
		}
		unscoped, err := runner.Do(context.Background(), idem.Call{Key: Key1, Payload: []byte("x")}, returning(&runs, "no scope"))
		require.NoError(t, err)
		assert.False(t, unscoped.Replayed)
		assert.Equal(t, int32(41), runs.Load())
	}},
	{"spec7/one key used by a handler and by a function is refused both ways, never replayed across", func(t *testing.T, h Harness) {
		const tenant = "tenant-1"
		a := NewApp(t, h, idem.WithScope(func(*gin.Context) string { return tenant }))
		runner := newRunner(idem.WithStore(a.Store))
		var runs atomic.Int32
		// A payload whose SHA-256 is the request's fingerprint: only the
		// record's method ("CALL" for a function) tells them apart.
		payload := requestFingerprint(http.MethodPost, "/things", "x")

		require.Equal(t, http.StatusCreated, a.Do(Post("/things", Key1, "x")).Status)
		rec, err := idem.Lookup(context.Background(), a.Store, tenant, Key1)
		require.NoError(t, err)
		sum := sha256.Sum256(payload)
		require.Equal(t, sum[:], rec.Fingerprint, "the payload collides with the request's fingerprint (fingerprint.go's framing changed?)")
		_, err = runner.Do(context.Background(), idem.Call{Scope: tenant, Key: Key1, Payload: payload}, returning(&runs, "function"))
		assert.ErrorIs(t, err, idem.ErrMismatch, "a function never gets a handler's response")

		_, err = runner.Do(context.Background(), idem.Call{Scope: tenant, Key: Key2, Payload: payload}, returning(&runs, "function"))
		require.NoError(t, err)
		r := a.Do(Post("/things", Key2, "x"))
		assert.Equal(t, http.StatusConflict, r.Status, "a request never gets a function's result: %s", r.Body)
		if r.Status == http.StatusConflict {
			assert.Equal(t, idem.ProblemKeyMismatch, r.Problem(t).Type)
		}
		assert.Equal(t, int32(1), a.Calls.Load())
		assert.Equal(t, int32(1), runs.Load())
	}},
}
