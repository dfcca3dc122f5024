package otelidem_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"

	"github.com/gin-gonic/gin"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/ginidem/idempotency"
	"github.com/ginidem/idempotency/otelidem"
)

// Annotate the request's span and record the metrics of a request sent
// twice with one key: the second answer is a replay.
func Example() {
	gin.SetMode(gin.ReleaseMode)
	spans := tracetest.NewInMemoryExporter()
	tracer := sdktrace.NewTracerProvider(sdktrace.WithSyncer(spans)).Tracer("example")
	reader := sdkmetric.NewManualReader()
	tel := otelidem.New(otelidem.WithMeterProvider(sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))))

	r := gin.New()
	r.Use(func(c *gin.Context) { // the request's span, before the idempotency middleware
		ctx, span := tracer.Start(c.Request.Context(), c.Request.Method+" "+c.FullPath())
		defer span.End()
		c.Request = c.Request.WithContext(ctx)
		c.Next()
	})
	r.POST("/orders/:id", idempotency.New(tel.Option()), func(c *gin.Context) {
		c.JSON(http.StatusCreated, gin.H{"id": c.Param("id")})
	})
	for range 2 {
		req := httptest.NewRequest(http.MethodPost, "/orders/42", strings.NewReader(`{"qty":1}`))
		req.Header.Set("Authorization", "Bearer alice")
		req.Header.Set("Idempotency-Key", "8e03978e-40d5-43e8-bc93-6894a57f9324")
		r.ServeHTTP(httptest.NewRecorder(), req)
	}

	for _, s := range spans.GetSpans() {
		outcome, replayed := "", false
		for _, a := range s.Attributes {
			switch a.Key {
			case otelidem.OutcomeKey:
				outcome = a.Value.AsString()
			case otelidem.ReplayedKey:
				replayed = a.Value.AsBool()
			}
		}
		fmt.Printf("span %q: outcome=%s replayed=%t\n", s.Name, outcome, replayed)
	}
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		panic(err)
	}
	for _, m := range rm.ScopeMetrics[0].Metrics {
		if sum, ok := m.Data.(metricdata.Sum[int64]); ok && m.Name == "idempotency.outcomes" {
			var total int64
			for _, p := range sum.DataPoints {
				total += p.Value
			}
			fmt.Printf("%s: %d events\n", m.Name, total)
		}
	}
	// Output:
	// span "POST /orders/:id": outcome=completed replayed=false
	// span "POST /orders/:id": outcome=replayed replayed=true
	// idempotency.outcomes: 3 events
}
