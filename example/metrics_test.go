package main

import (
	"net/http"
	"testing"

	"github.com/google/uuid"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestSpec26_MetricsEndpoint: with -metrics, /metrics shows a keyed
// request's outcomes by route pattern, in the Prometheus text format;
// without it there is no /metrics.
func TestSpec26_MetricsEndpoint(t *testing.T) {
	cfg, err := parseConfig([]string{"-metrics"}, noEnv)
	require.NoError(t, err)
	require.True(t, cfg.Metrics)
	api := newTestAPI(t, cfg)
	key := uuid.NewString()
	created := api.create("alice", key)
	api.do(http.MethodPost, "/api/requisitions/"+created.ID+"/submit", "alice", uuid.NewString(), "")

	res := api.do(http.MethodGet, "/metrics", "", "", "")
	require.Equal(t, http.StatusOK, res.status)
	assert.Contains(t, res.header.Get("Content-Type"), "text/plain")
	body := string(res.body)
	for _, line := range []string{
		"# TYPE idempotency_outcomes_total counter",
		`idempotency_outcomes_total{method="POST",outcome="acquired",route="/api/requisitions"} 1`,
		`idempotency_outcomes_total{method="POST",outcome="completed",route="/api/requisitions"} 1`,
		`idempotency_outcomes_total{method="POST",outcome="completed",route="/api/requisitions/:id/submit"} 1`,
		`idempotency_store_duration_seconds_count{op="acquire"} 2`,
		"idempotency_requests_in_flight 0",
		"idempotency_breaker_state 0",
	} {
		assert.Contains(t, body, line+"\n")
	}
	assert.NotContains(t, body, created.ID, "the raw path is never a label")

	off := newTestAPI(t, defaultConfig(t))
	assert.Equal(t, http.StatusNotFound, off.do(http.MethodGet, "/metrics", "", "", "").status)
}
