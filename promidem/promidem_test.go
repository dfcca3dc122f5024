package promidem_test

import (
	"context"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ginidem/idempotency"
	"github.com/ginidem/idempotency/internal/idemtest"
	"github.com/ginidem/idempotency/promidem"
)

// compare checks the named metrics of m against the text exposition want.
func compare(t *testing.T, m prometheus.Collector, want string, names ...string) {
	t.Helper()
	assert.NoError(t, testutil.CollectAndCompare(m, strings.NewReader(want), names...))
}

// storeCalls returns the number of observations of the store-latency
// histogram for op, read through a registry as a scrape would.
func storeCalls(t *testing.T, m *promidem.Metrics, op string) uint64 {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	require.NoError(t, reg.Register(m))
	families, err := reg.Gather()
	require.NoError(t, err)
	for _, f := range families {
		if f.GetName() != "idempotency_store_duration_seconds" {
			continue
		}
		for _, s := range f.GetMetric() {
			if s.GetLabel()[0].GetValue() == op {
				return s.GetHistogram().GetSampleCount()
			}
		}
	}
	return 0
}

const (
	helpOutcomes = "# HELP idempotency_outcomes_total Outcomes of keyed requests, by event kind (acquired, completed, replayed, conflict, mismatch, released, store_error, lost_lease, unknown_caller), method and route pattern.\n# TYPE idempotency_outcomes_total counter\n"
	helpInFlight = "# HELP idempotency_requests_in_flight Keyed requests whose handler is running under a lease, or whose response is being stored.\n# TYPE idempotency_requests_in_flight gauge\n"
	helpBreaker  = "# HELP idempotency_breaker_state State of the circuit breaker around the idempotency store: 0 closed, 1 half-open, 2 open.\n# TYPE idempotency_breaker_state gauge\n"
)

// TestSpec26_PrometheusOutcomes: a new key, its replay and its reuse with
// another payload are counted by outcome, method and route pattern, never
// by the raw path; each store call is timed once, and nothing stays in
// flight.
func TestSpec26_PrometheusOutcomes(t *testing.T) {
	m := promidem.New()
	r := idemtest.Engine(idemtest.Created, idempotency.New(m.Option()))
	key := uuid.NewString()

	require.Equal(t, http.StatusCreated, idemtest.Post(r, "/orders/42", key, `{"n":1}`).Code)
	replay := idemtest.Post(r, "/orders/42", key, `{"n":1}`)
	require.Equal(t, "true", replay.Header().Get("Idempotent-Replayed"))
	require.Equal(t, http.StatusConflict, idemtest.Post(r, "/orders/42", key, `{"n":2}`).Code)
	require.Equal(t, http.StatusCreated, idemtest.Post(r, "/orders/43", uuid.NewString(), `{"n":1}`).Code)

	compare(t, m, helpOutcomes+`
idempotency_outcomes_total{method="POST",outcome="acquired",route="/orders/:id"} 2
idempotency_outcomes_total{method="POST",outcome="completed",route="/orders/:id"} 2
idempotency_outcomes_total{method="POST",outcome="replayed",route="/orders/:id"} 1
idempotency_outcomes_total{method="POST",outcome="mismatch",route="/orders/:id"} 1
`, "idempotency_outcomes_total")
	compare(t, m, helpInFlight+"idempotency_requests_in_flight 0\n", "idempotency_requests_in_flight")
	assert.Equal(t, uint64(4), storeCalls(t, m, "acquire"), "one acquisition per keyed request")
	assert.Equal(t, uint64(2), storeCalls(t, m, "complete"), "one completion per new key")
	assert.Equal(t, uint64(0), storeCalls(t, m, "release"))
	assert.Equal(t, 2, testutil.CollectAndCount(m, "idempotency_store_duration_seconds"), "one series per op used")
}

// TestSpec26_PrometheusUnmatchedRoute: a request no route matched is
// labelled "unmatched", whatever its path. (Gin writes its 404 after the
// handlers, so the middleware saw nothing written and released the key.)
func TestSpec26_PrometheusUnmatchedRoute(t *testing.T) {
	m := promidem.New()
	r := idemtest.Engine(idemtest.Created, idempotency.New(m.Option()))
	for _, path := range []string{"/nowhere/1", "/nowhere/2", "/elsewhere"} {
		require.Equal(t, http.StatusNotFound, idemtest.Post(r, path, uuid.NewString(), `{}`).Code)
	}
	compare(t, m, helpOutcomes+`
idempotency_outcomes_total{method="POST",outcome="acquired",route="unmatched"} 3
idempotency_outcomes_total{method="POST",outcome="released",route="unmatched"} 3
`, "idempotency_outcomes_total")
}

// TestSpec26_PrometheusInFlight: the gauge counts a handler while it runs,
// and a duplicate meanwhile is a conflict.
func TestSpec26_PrometheusInFlight(t *testing.T) {
	m := promidem.New()
	entered, proceed := make(chan struct{}), make(chan struct{})
	slow := func(c *gin.Context) {
		close(entered)
		<-proceed
		idemtest.Created(c)
	}
	r := idemtest.Engine(slow, idempotency.New(m.Option()))
	key := uuid.NewString()
	var wg sync.WaitGroup
	wg.Go(func() { assert.Equal(t, http.StatusCreated, idemtest.Post(r, "/orders/1", key, `{}`).Code) })
	<-entered
	compare(t, m, helpInFlight+"idempotency_requests_in_flight 1\n", "idempotency_requests_in_flight")
	assert.Equal(t, http.StatusConflict, idemtest.Post(r, "/orders/1", key, `{}`).Code)
	close(proceed)
	wg.Wait()
	compare(t, m, helpInFlight+"idempotency_requests_in_flight 0\n", "idempotency_requests_in_flight")
	compare(t, m, helpOutcomes+`
idempotency_outcomes_total{method="POST",outcome="acquired",route="/orders/:id"} 1
idempotency_outcomes_total{method="POST",outcome="completed",route="/orders/:id"} 1
idempotency_outcomes_total{method="POST",outcome="conflict",route="/orders/:id"} 1
`, "idempotency_outcomes_total")
}

// TestSpec26_PrometheusStoreFailures: a failed acquisition and a failed
// release are store errors with their latency; the failed release ends the
// run, so nothing stays in flight.
func TestSpec26_PrometheusStoreFailures(t *testing.T) {
	m := promidem.New()
	store := idemtest.NewFaultStore()
	r := idemtest.Engine(idemtest.Created, idempotency.New(idempotency.WithStore(store), m.Option()))

	store.FailAcquire.Store(true)
	require.Equal(t, http.StatusServiceUnavailable, idemtest.Post(r, "/orders/1", uuid.NewString(), `{}`).Code)
	store.FailAcquire.Store(false)
	store.FailRelease.Store(true)
	require.Equal(t, http.StatusInternalServerError, idemtest.Post(r, "/orders/1?status=500", uuid.NewString(), `{}`).Code)

	compare(t, m, helpOutcomes+`
idempotency_outcomes_total{method="POST",outcome="acquired",route="/orders/:id"} 1
idempotency_outcomes_total{method="POST",outcome="store_error",route="/orders/:id"} 2
`, "idempotency_outcomes_total")
	compare(t, m, helpInFlight+"idempotency_requests_in_flight 0\n", "idempotency_requests_in_flight")
	assert.Equal(t, uint64(2), storeCalls(t, m, "acquire"), "the failed acquisition is timed too")
	assert.Equal(t, uint64(1), storeCalls(t, m, "release"))
}

// TestSpec26_PrometheusLostLease: a completion refused because another
// request owns the key is a lost lease, and ends the run.
func TestSpec26_PrometheusLostLease(t *testing.T) {
	m := promidem.New()
	store := idemtest.NewFaultStore()
	store.LoseComplete.Store(true)
	r := idemtest.Engine(idemtest.Created, idempotency.New(idempotency.WithStore(store), m.Option()))
	require.Equal(t, http.StatusCreated, idemtest.Post(r, "/orders/1", uuid.NewString(), `{}`).Code)
	compare(t, m, helpOutcomes+`
idempotency_outcomes_total{method="POST",outcome="acquired",route="/orders/:id"} 1
idempotency_outcomes_total{method="POST",outcome="lost_lease",route="/orders/:id"} 1
`, "idempotency_outcomes_total")
	compare(t, m, helpInFlight+"idempotency_requests_in_flight 0\n", "idempotency_requests_in_flight")
}

// TestSpec26_PrometheusBreaker: after two failed acquisitions the breaker
// opens and the gauge says 2; a refused request is a store error without a
// store call. The half-open and closed events set 1 and 0.
func TestSpec26_PrometheusBreaker(t *testing.T) {
	m := promidem.New()
	store := idemtest.NewFaultStore()
	store.FailAcquire.Store(true)
	r := idemtest.Engine(idemtest.Created, idempotency.New(idempotency.WithStore(store),
		idempotency.WithCircuitBreaker(2, time.Hour), m.Option()))

	compare(t, m, helpBreaker+"idempotency_breaker_state 0\n", "idempotency_breaker_state")
	for range 3 {
		require.Equal(t, http.StatusServiceUnavailable, idemtest.Post(r, "/orders/1", uuid.NewString(), `{}`).Code)
	}
	compare(t, m, helpBreaker+"idempotency_breaker_state 2\n", "idempotency_breaker_state")
	compare(t, m, helpOutcomes+`
idempotency_outcomes_total{method="POST",outcome="store_error",route="/orders/:id"} 3
`, "idempotency_outcomes_total")
	assert.Equal(t, uint64(2), storeCalls(t, m, "acquire"), "the open breaker did not call the store")

	hook := m.Hook()
	hook(context.Background(), idempotency.Event{Kind: idempotency.EventBreakerHalfOpen})
	compare(t, m, helpBreaker+"idempotency_breaker_state 1\n", "idempotency_breaker_state")
	hook(context.Background(), idempotency.Event{Kind: idempotency.EventBreakerClosed})
	compare(t, m, helpBreaker+"idempotency_breaker_state 0\n", "idempotency_breaker_state")
}

// TestSpec26_PrometheusChainAndRegistry: Chain feeds the metrics and a hook
// of one's own; two collectors told apart by a constant label register on
// one registry, under their namespace.
func TestSpec26_PrometheusChainAndRegistry(t *testing.T) {
	public := promidem.New(promidem.WithConstLabels(prometheus.Labels{"api": "public"}), promidem.WithNamespace("shop"))
	admin := promidem.New(promidem.WithConstLabels(prometheus.Labels{"api": "admin"}), promidem.WithNamespace("shop"))
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(public, admin)

	var mine []idempotency.EventKind
	own := func(_ context.Context, e idempotency.Event) { mine = append(mine, e.Kind) }
	r := idemtest.Engine(idemtest.Created, idempotency.New(idempotency.WithEventHook(promidem.Chain(public.Hook(), nil, own))))
	require.Equal(t, http.StatusCreated, idemtest.Post(r, "/orders/1", uuid.NewString(), `{}`).Code)

	assert.Equal(t, []idempotency.EventKind{idempotency.EventAcquired, idempotency.EventCompleted}, mine)
	assert.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(strings.ReplaceAll(helpOutcomes, "idempotency_", "shop_")+`
shop_outcomes_total{api="public",method="POST",outcome="acquired",route="/orders/:id"} 1
shop_outcomes_total{api="public",method="POST",outcome="completed",route="/orders/:id"} 1
`), "shop_outcomes_total"))
	n, err := testutil.GatherAndCount(reg, "shop_breaker_state", "shop_requests_in_flight")
	require.NoError(t, err)
	assert.Equal(t, 4, n, "a breaker gauge and an in-flight gauge per collector")
}

// TestSpec26_PrometheusBadOptions: a bad option panics at construction,
// with the package's prefix.
func TestSpec26_PrometheusBadOptions(t *testing.T) {
	for name, build := range map[string]func(){
		"empty namespace":   func() { promidem.WithNamespace("") },
		"invalid namespace": func() { promidem.WithNamespace("my-app") },
		"no buckets":        func() { promidem.WithBuckets() },
		"falling buckets":   func() { promidem.WithBuckets(.1, .01) },
		"label of ours":     func() { promidem.WithConstLabels(prometheus.Labels{"route": "x"}) },
		"reserved label":    func() { promidem.WithConstLabels(prometheus.Labels{"__name__": "x"}) },
	} {
		t.Run(name, func(t *testing.T) {
			defer func() {
				msg, _ := recover().(string)
				assert.True(t, strings.HasPrefix(msg, "promidem: "), "panic %q", msg)
			}()
			build()
			t.Fatal("no panic")
		})
	}
}
