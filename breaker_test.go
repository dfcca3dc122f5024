package idempotency_test

import (
	"net/http"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	idem "github.com/ginidem/idempotency"
)

// TestSpec32_CircuitBreaker: after consecutive store failures the middleware
// stops calling the store and answers at once, then probes it and recovers
// by itself; each change is an event.
func TestSpec32_CircuitBreaker(t *testing.T) {
	for _, failOpen := range []bool{false, true} {
		name := "spec32/fail closed: 503 at once"
		opts := []idem.Option{}
		if failOpen {
			name = "spec32/fail open: the handler runs at once"
			opts = append(opts, idem.WithFailOpen())
		}
		t.Run(name, func(t *testing.T) {
			var cs *countingStore
			ev := newEvents()
			a := newApp(t, counted(memoryHarness(), &cs), append(opts,
				idem.WithCircuitBreaker(3, 100*time.Millisecond), idem.WithEventHook(ev.hook))...)
			cs.fail.Store(true)
			for range 3 {
				a.do(post("/things", uuid.NewString(), "x"))
			}
			ev.waitFor(t, idem.EventBreakerOpen)
			acquires, _, _, _ := cs.counts()
			require.Equal(t, 3, acquires)

			for range 20 {
				r := a.do(post("/things", uuid.NewString(), "x"))
				if failOpen {
					assert.Equal(t, http.StatusCreated, r.status)
				} else {
					assert.Equal(t, http.StatusServiceUnavailable, r.status)
					assert.Equal(t, "1", r.header.Get("Retry-After"))
					assert.Equal(t, idem.ProblemStoreUnavailable, r.problem(t).Type)
				}
			}
			after, _, _, _ := cs.counts()
			assert.LessOrEqual(t, after-acquires, 1, "the open circuit calls the store at most for a probe")

			cs.fail.Store(false)
			require.EventuallyWithT(t, func(c *assert.CollectT) {
				assert.Equal(c, http.StatusCreated, a.do(post("/things", uuid.NewString(), "x")).status)
				assert.Contains(c, ev.kinds(), idem.EventBreakerClosed)
			}, 5*time.Second, 20*time.Millisecond, "a request probes the store, and the circuit closes")
			key := uuid.NewString()
			a.do(post("/things", key, "x"))
			assert.True(t, a.do(post("/things", key, "x")).replayed(), "idempotency is back")
			kinds := ev.kinds()
			assert.Contains(t, kinds, idem.EventBreakerHalfOpen)
		})
	}
}

func TestSpec32_BreakerOptions(t *testing.T) {
	assert.Panics(t, func() { idem.WithCircuitBreaker(-1, time.Second) })
	assert.Panics(t, func() { idem.WithCircuitBreaker(3, 0) })
	assert.NotPanics(t, func() { idem.WithCircuitBreaker(0, 0) }, "0 turns it off")
}
