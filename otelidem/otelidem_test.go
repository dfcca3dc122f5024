package otelidem_test

import (
	"context"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/google/uuid"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"go.opentelemetry.io/otel/sdk/metric/metricdata/metricdatatest"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/ginidem/idempotency"
	"github.com/ginidem/idempotency/internal/idemtest"
	"github.com/ginidem/idempotency/otelidem"
)

// harness is a real Gin engine whose requests each get a span, before the
// idempotency middleware, exported to memory, and whose metrics are read
// by a manual reader.
type harness struct {
	engine *gin.Engine
	spans  *tracetest.InMemoryExporter
	reader *sdkmetric.ManualReader
	store  *idemtest.FaultStore
}

// newHarness serves POST /orders/:id with handler over a FaultStore.
func newHarness(t *testing.T, handler gin.HandlerFunc, opts ...idempotency.Option) *harness {
	t.Helper()
	h := &harness{spans: tracetest.NewInMemoryExporter(), reader: sdkmetric.NewManualReader(), store: idemtest.NewFaultStore()}
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(h.spans))
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(h.reader))
	t.Cleanup(func() {
		assert.NoError(t, tp.Shutdown(context.Background()))
		assert.NoError(t, mp.Shutdown(context.Background()))
	})
	tracer := tp.Tracer("test")
	withSpan := func(c *gin.Context) {
		ctx, span := tracer.Start(c.Request.Context(), c.Request.Method+" "+c.FullPath())
		defer span.End()
		c.Request = c.Request.WithContext(ctx)
		c.Next()
	}
	tel := otelidem.New(otelidem.WithMeterProvider(mp))
	opts = append([]idempotency.Option{idempotency.WithStore(h.store), tel.Option()}, opts...)
	h.engine = idemtest.Engine(handler, withSpan, idempotency.New(opts...))
	return h
}

// lastSpan returns the span of the last request.
func (h *harness) lastSpan(t *testing.T) tracetest.SpanStub {
	t.Helper()
	spans := h.spans.GetSpans()
	require.NotEmpty(t, spans)
	return spans[len(spans)-1]
}

// metric returns the collected metric called name.
func (h *harness) metric(t *testing.T, name string) metricdata.Metrics {
	t.Helper()
	var rm metricdata.ResourceMetrics
	require.NoError(t, h.reader.Collect(context.Background(), &rm))
	for _, sm := range rm.ScopeMetrics {
		require.Equal(t, otelidem.ScopeName, sm.Scope.Name)
		for _, m := range sm.Metrics {
			if m.Name == name {
				return m
			}
		}
	}
	t.Fatalf("no metric %q", name)
	return metricdata.Metrics{}
}

// outcomes is the expected outcome counter, with one data point per
// outcome on POST /orders/:id.
func outcomes(counts map[string]int64) metricdata.Metrics {
	var points []metricdata.DataPoint[int64]
	for outcome, n := range counts {
		points = append(points, metricdata.DataPoint[int64]{Value: n, Attributes: attribute.NewSet(
			otelidem.OutcomeKey.String(outcome), attribute.String("http.request.method", "POST"),
			attribute.String("http.route", "/orders/:id"))})
	}
	return metricdata.Metrics{
		Name: "idempotency.outcomes", Unit: "{event}",
		Description: "Outcomes of keyed requests, by event kind, method and route pattern.",
		Data:        metricdata.Sum[int64]{Temporality: metricdata.CumulativeTemporality, IsMonotonic: true, DataPoints: points},
	}
}

// inFlight returns the value of the in-flight up-down counter.
func (h *harness) inFlight(t *testing.T) int64 {
	t.Helper()
	sum, ok := h.metric(t, "idempotency.requests.in_flight").Data.(metricdata.Sum[int64])
	require.True(t, ok)
	require.False(t, sum.IsMonotonic)
	var total int64
	for _, p := range sum.DataPoints {
		total += p.Value
	}
	return total
}

// storeCalls returns the histogram's count of store calls, by operation.
func (h *harness) storeCalls(t *testing.T) map[string]uint64 {
	t.Helper()
	m := h.metric(t, "idempotency.store.duration")
	require.Equal(t, "s", m.Unit)
	hist, ok := m.Data.(metricdata.Histogram[float64])
	require.True(t, ok)
	calls := map[string]uint64{}
	for _, p := range hist.DataPoints {
		op, _ := p.Attributes.Value(otelidem.StoreOpKey)
		calls[op.AsString()] = p.Count
	}
	return calls
}

// events returns the names of the span's events.
func events(s tracetest.SpanStub) []string {
	var names []string
	for _, e := range s.Events {
		names = append(names, e.Name)
	}
	return names
}

// TestSpec26_OTelSpanAttributes: the request's span carries its outcome
// and whether it was replayed.
func TestSpec26_OTelSpanAttributes(t *testing.T) {
	h := newHarness(t, idemtest.Created)
	key := uuid.NewString()
	for _, step := range []struct {
		body, outcome string
		replayed      bool
	}{
		{`{"n":1}`, "completed", false},
		{`{"n":1}`, "replayed", true},
		{`{"n":2}`, "mismatch", false},
	} {
		idemtest.Post(h.engine, "/orders/42", key, step.body)
		span := h.lastSpan(t)
		assert.Equal(t, "POST /orders/:id", span.Name)
		assert.Contains(t, span.Attributes, otelidem.OutcomeKey.String(step.outcome))
		assert.Contains(t, span.Attributes, otelidem.ReplayedKey.Bool(step.replayed))
		assert.Empty(t, span.Events)
	}
}

// TestSpec26_OTelSpanEvents: a failed store call and a lost lease are
// events on the request's span, with the error and the store call.
func TestSpec26_OTelSpanEvents(t *testing.T) {
	h := newHarness(t, idemtest.Created)

	h.store.FailAcquire.Store(true)
	require.Equal(t, http.StatusServiceUnavailable, idemtest.Post(h.engine, "/orders/1", uuid.NewString(), `{}`).Code)
	h.store.FailAcquire.Store(false)
	span := h.lastSpan(t)
	require.Equal(t, []string{"idempotency.store_error"}, events(span))
	assert.ElementsMatch(t, []attribute.KeyValue{
		otelidem.StoreOpKey.String("acquire"),
		attribute.String("exception.type", "*errors.errorString"),
		attribute.String("exception.message", idemtest.ErrDown.Error()),
	}, span.Events[0].Attributes)
	assert.Contains(t, span.Attributes, otelidem.OutcomeKey.String("store_error"))

	h.store.LoseComplete.Store(true)
	require.Equal(t, http.StatusCreated, idemtest.Post(h.engine, "/orders/1", uuid.NewString(), `{}`).Code)
	span = h.lastSpan(t)
	require.Equal(t, []string{"idempotency.lost_lease"}, events(span))
	assert.Equal(t, []attribute.KeyValue{otelidem.StoreOpKey.String("complete")}, span.Events[0].Attributes)
	assert.Contains(t, span.Attributes, otelidem.OutcomeKey.String("lost_lease"))
}

// TestSpec26_OTelMetrics: outcomes by outcome, method and route pattern,
// one store timing per store call, and nothing left in flight.
func TestSpec26_OTelMetrics(t *testing.T) {
	h := newHarness(t, idemtest.Created)
	key := uuid.NewString()
	idemtest.Post(h.engine, "/orders/42", key, `{"n":1}`)
	idemtest.Post(h.engine, "/orders/42", key, `{"n":1}`)
	idemtest.Post(h.engine, "/orders/42", key, `{"n":2}`)
	idemtest.Post(h.engine, "/orders/43", uuid.NewString(), `{"n":1}`)
	h.store.FailRelease.Store(true)
	idemtest.Post(h.engine, "/orders/44?status=500", uuid.NewString(), `{}`)

	metricdatatest.AssertEqual(t, outcomes(map[string]int64{
		"acquired": 3, "completed": 2, "replayed": 1, "mismatch": 1, "store_error": 1,
	}), h.metric(t, "idempotency.outcomes"), metricdatatest.IgnoreTimestamp(), metricdatatest.IgnoreExemplars())
	assert.Equal(t, map[string]uint64{"acquire": 5, "complete": 2, "release": 1}, h.storeCalls(t))
	assert.Equal(t, int64(0), h.inFlight(t), "a failed release ends the run too")
}

// TestSpec26_OTelInFlight: the up-down counter counts a handler while it
// runs.
func TestSpec26_OTelInFlight(t *testing.T) {
	entered, proceed := make(chan struct{}), make(chan struct{})
	h := newHarness(t, func(c *gin.Context) {
		close(entered)
		<-proceed
		idemtest.Created(c)
	})
	var wg sync.WaitGroup
	wg.Go(func() { idemtest.Post(h.engine, "/orders/1", uuid.NewString(), `{}`) })
	<-entered
	assert.Equal(t, int64(1), h.inFlight(t))
	close(proceed)
	wg.Wait()
	assert.Equal(t, int64(0), h.inFlight(t))
}

// TestSpec26_OTelBreaker: the gauge starts closed and reads 2 once two
// failed acquisitions opened the breaker.
func TestSpec26_OTelBreaker(t *testing.T) {
	h := newHarness(t, idemtest.Created, idempotency.WithCircuitBreaker(2, time.Hour))
	gauge := func(v int64) metricdata.Metrics {
		return metricdata.Metrics{
			Name:        "idempotency.breaker.state",
			Description: "State of the circuit breaker around the idempotency store: 0 closed, 1 half-open, 2 open.",
			Data:        metricdata.Gauge[int64]{DataPoints: []metricdata.DataPoint[int64]{{Value: v}}},
		}
	}
	metricdatatest.AssertEqual(t, gauge(0), h.metric(t, "idempotency.breaker.state"), metricdatatest.IgnoreTimestamp(), metricdatatest.IgnoreExemplars())
	h.store.FailAcquire.Store(true)
	for range 3 {
		idemtest.Post(h.engine, "/orders/1", uuid.NewString(), `{}`)
	}
	metricdatatest.AssertEqual(t, gauge(2), h.metric(t, "idempotency.breaker.state"), metricdatatest.IgnoreTimestamp(), metricdatatest.IgnoreExemplars())
	assert.Equal(t, map[string]uint64{"acquire": 2}, h.storeCalls(t), "the open breaker did not call the store")
	span := h.lastSpan(t)
	require.Len(t, span.Events, 1)
	assert.Contains(t, span.Events[0].Attributes, attribute.String("exception.message", idempotency.ErrCircuitOpen.Error()))
}

// TestSpec26_OTelOptions: WithoutSpans leaves the span alone, and a bad
// option panics with the package's prefix.
func TestSpec26_OTelOptions(t *testing.T) {
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	ctx, span := tp.Tracer("test").Start(context.Background(), "request")
	otelidem.New(otelidem.WithoutSpans()).Hook()(ctx, idempotency.Event{Kind: idempotency.EventReplayed})
	span.End()
	assert.Empty(t, exp.GetSpans()[0].Attributes)

	for name, build := range map[string]func(){
		"nil provider":     func() { otelidem.WithMeterProvider(nil) },
		"no boundaries":    func() { otelidem.WithBuckets() },
		"equal boundaries": func() { otelidem.WithBuckets(.1, .1) },
	} {
		t.Run(name, func(t *testing.T) {
			defer func() {
				msg, _ := recover().(string)
				assert.True(t, strings.HasPrefix(msg, "otelidem: "), "panic %q", msg)
			}()
			build()
			t.Fatal("no panic")
		})
	}
}
