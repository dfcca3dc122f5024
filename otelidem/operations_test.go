package otelidem_test

import (
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/ginidem/idempotency"
	"github.com/ginidem/idempotency/internal/idemtest"
	"github.com/ginidem/idempotency/otelidem"
)

// TestSpec33_OTelSpanCarriesTheKey: the request's span carries the
// client's key in its canonical form, so that a support ticket's key finds
// its trace; WithoutKeyInEvents leaves it out. No metric carries it.
func TestSpec33_OTelSpanCarriesTheKey(t *testing.T) {
	sent := strings.ToUpper(uuid.NewString())
	h := newHarness(t, idemtest.Created)
	idemtest.Post(h.engine, "/orders/42", sent, `{}`)
	assert.Contains(t, h.lastSpan(t).Attributes, otelidem.IdempotencyKeyKey.String(strings.ToLower(sent)))
	sum, ok := h.metric(t, "idempotency.outcomes").Data.(metricdata.Sum[int64])
	require.True(t, ok)
	for _, p := range sum.DataPoints {
		_, found := p.Attributes.Value(otelidem.IdempotencyKeyKey)
		assert.False(t, found, "never a metric attribute")
	}

	h = newHarness(t, idemtest.Created, idempotency.WithoutKeyInEvents())
	idemtest.Post(h.engine, "/orders/42", sent, `{}`)
	for _, a := range h.lastSpan(t).Attributes {
		assert.NotEqual(t, otelidem.IdempotencyKeyKey, a.Key)
	}
}

// TestSpec32_OTelCountsRefusals: every request the open breaker answered
// without calling the store is counted, as the log lines only summarize
// them.
func TestSpec32_OTelCountsRefusals(t *testing.T) {
	h := newHarness(t, idemtest.Created, idempotency.WithCircuitBreaker(2, time.Hour))
	h.store.FailAcquire.Store(true)
	for range 12 { // 2 failures open the breaker, then 10 refusals
		idemtest.Post(h.engine, "/orders/1", uuid.NewString(), `{}`)
	}
	m := h.metric(t, "idempotency.breaker.refused")
	assert.Equal(t, "{request}", m.Unit)
	sum, ok := m.Data.(metricdata.Sum[int64])
	require.True(t, ok)
	require.Len(t, sum.DataPoints, 1)
	assert.Equal(t, int64(10), sum.DataPoints[0].Value)
	assert.True(t, sum.IsMonotonic)
}
