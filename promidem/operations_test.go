package promidem_test

import (
	"net/http"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/ginidem/idempotency"
	"github.com/ginidem/idempotency/internal/idemtest"
	"github.com/ginidem/idempotency/promidem"
)

// TestSpec32_PrometheusCountsRefusals: every request the open breaker
// answered without calling the store is counted, as the log lines only
// summarize them; the failures that opened it are not refusals.
func TestSpec32_PrometheusCountsRefusals(t *testing.T) {
	m := promidem.New()
	store := idemtest.NewFaultStore()
	store.FailAcquire.Store(true)
	r := idemtest.Engine(idemtest.Created, idempotency.New(idempotency.WithStore(store),
		idempotency.WithCircuitBreaker(2, time.Hour), m.Option()))
	for range 12 { // 2 failures open the breaker, then 10 refusals
		require.Equal(t, http.StatusServiceUnavailable, idemtest.Post(r, "/orders/1", uuid.NewString(), `{}`).Code)
	}
	compare(t, m, `# HELP idempotency_breaker_refused_total Keyed requests the open circuit breaker answered without calling the idempotency store (503, or run without idempotency with fail-open); each is a store_error outcome too.
# TYPE idempotency_breaker_refused_total counter
idempotency_breaker_refused_total 10
`, "idempotency_breaker_refused_total")
}
