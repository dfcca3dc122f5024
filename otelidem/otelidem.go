// Package otelidem reports the idempotency middleware's outcomes to
// OpenTelemetry: on the request's span, and as metrics. It listens on the
// middleware's event hook ([idempotency.WithEventHook]), so the idempotency
// package itself never imports OpenTelemetry.
//
//	tel := otelidem.New(otelidem.WithMeterProvider(mp))
//	r.Use(otelgin.Middleware("orders")) // or any middleware that starts the request's span
//	r.POST("/orders", idempotency.New(tel.Option()), createOrder)
//
// # Spans
//
// It starts no span of its own. The hook receives the request's context,
// so it annotates the span found there (trace.SpanFromContext), which a
// tracing middleware mounted before the idempotency middleware started:
//
//   - idempotency.outcome: the request's last outcome, such as "completed"
//     or "replayed" ([idempotency.EventKind.String]);
//   - idempotency.replayed: true when the answer is a stored response;
//   - idempotency.key: the client's idempotency key, in its canonical form
//     (absent with [idempotency.WithoutKeyInEvents]), so that the trace of
//     a support ticket's key can be found;
//   - an event "idempotency.store_error" for each failed store call, with
//     exception.type, exception.message and idempotency.store.operation;
//   - an event "idempotency.lost_lease" when the request's lease was no
//     longer held (expired or taken) and its response not stored.
//
// A completion the middleware retries in the background ends after the
// span; its outcome is then in the metrics only.
//
// # Metrics
//
// The same metrics as the promidem package, under the meter
// "github.com/ginidem/idempotency/otelidem":
//
//	idempotency.outcomes                 counter {event}: idempotency.outcome, http.request.method, http.route
//	idempotency.store.duration           histogram, s: idempotency.store.operation
//	idempotency.requests.in_flight       up-down counter {request}
//	idempotency.breaker.state            gauge: 0 closed, 1 half-open, 2 open
//	idempotency.breaker.refused          counter {request}
//
// The refused counter counts the keyed requests that the open breaker
// answered without calling the store (503, or run without idempotency with
// [idempotency.WithFailOpen]); each is a "store_error" outcome too. The
// middleware logs them only in a summary line. The idempotency key is on
// spans only, never on a metric: it would make one series per request.
//
// http.route is the Gin route pattern, such as "/orders/:id", or
// "unmatched" for a request no route matched: never the raw path. A
// request with a new key counts "acquired" and then one of "completed",
// "released" or "lost_lease". One [Telemetry] may serve several
// middlewares, but each has its own breaker and the gauge shows the last
// change of any of them.
package otelidem

import (
	"context"
	"errors"
	"fmt"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/ginidem/idempotency"
	"github.com/ginidem/idempotency/internal/hookstat"
)

// ScopeName is the instrumentation scope of the meter that records the
// metrics.
const ScopeName = "github.com/ginidem/idempotency/otelidem"

// Attribute keys set on spans and metrics.
const (
	// OutcomeKey is the event's name, such as "replayed", on the span
	// (the request's last outcome) and on the outcome counter.
	OutcomeKey = attribute.Key("idempotency.outcome")
	// ReplayedKey is true on the span of a request answered with a stored
	// response.
	ReplayedKey = attribute.Key("idempotency.replayed")
	// IdempotencyKeyKey is the client's idempotency key, in its canonical
	// form, on the request's span.
	IdempotencyKeyKey = attribute.Key("idempotency.key")
	// StoreOpKey is the store call, "acquire", "complete" or "release", on
	// the store-duration histogram and the span events.
	StoreOpKey = attribute.Key("idempotency.store.operation")

	methodKey = attribute.Key("http.request.method")
	routeKey  = attribute.Key("http.route")
)

// Telemetry turns the idempotency middleware's events into span
// attributes, span events and metrics. It is safe for concurrent use.
// Create it with [New].
type Telemetry struct {
	tracing  bool
	outcomes metric.Int64Counter
	store    metric.Float64Histogram
	inFlight metric.Int64UpDownCounter
	breaker  metric.Int64Gauge
	refused  metric.Int64Counter
}

// New returns the instrumentation configured by opts over safe defaults:
// the global MeterProvider, and spans annotated. It panics, with an
// "otelidem:" prefix, on an invalid option or when the provider refuses an
// instrument.
func New(opts ...Option) *Telemetry {
	cfg := defaultConfig()
	for _, opt := range opts {
		opt.apply(cfg)
	}
	if cfg.meterProvider == nil {
		cfg.meterProvider = otel.GetMeterProvider()
	}
	meter := cfg.meterProvider.Meter(ScopeName)
	t := &Telemetry{tracing: cfg.tracing}
	var errs [5]error
	t.outcomes, errs[0] = meter.Int64Counter("idempotency.outcomes", metric.WithUnit("{event}"),
		metric.WithDescription("Outcomes of keyed requests, by event kind, method and route pattern."))
	t.store, errs[1] = meter.Float64Histogram("idempotency.store.duration", metric.WithUnit("s"),
		metric.WithDescription("Duration of the idempotency store calls, by operation, failed calls included."),
		metric.WithExplicitBucketBoundaries(cfg.buckets...))
	t.inFlight, errs[2] = meter.Int64UpDownCounter("idempotency.requests.in_flight", metric.WithUnit("{request}"),
		metric.WithDescription("Keyed requests whose handler is running under a lease, or whose response is being stored."))
	t.breaker, errs[3] = meter.Int64Gauge("idempotency.breaker.state",
		metric.WithDescription("State of the circuit breaker around the idempotency store: 0 closed, 1 half-open, 2 open."))
	t.refused, errs[4] = meter.Int64Counter("idempotency.breaker.refused", metric.WithUnit("{request}"),
		metric.WithDescription("Keyed requests the open circuit breaker answered without calling the idempotency store; each is a store_error outcome too."))
	for _, err := range errs {
		if err != nil {
			panic(fmt.Sprintf("otelidem: %v", err))
		}
	}
	t.breaker.Record(context.Background(), hookstat.BreakerClosed)
	return t
}

// Hook returns the event hook that feeds t, to pass to
// [idempotency.WithEventHook] directly or through [Chain].
func (t *Telemetry) Hook() func(context.Context, idempotency.Event) { return t.observe }

// Option returns idempotency.WithEventHook(t.Hook()). The middleware keeps
// one hook: a later WithEventHook replaces this one, and this one replaces
// an earlier. Use [Chain] to feed t and hooks of your own.
//
//	idempotency.New(idempotency.WithStore(store), tel.Option())
func (t *Telemetry) Option() idempotency.Option { return idempotency.WithEventHook(t.observe) }

// observe reports one event.
func (t *Telemetry) observe(ctx context.Context, e idempotency.Event) {
	if state, ok := hookstat.BreakerState(e.Kind); ok {
		t.breaker.Record(ctx, state)
		return
	}
	outcome := OutcomeKey.String(e.Kind.String())
	if t.tracing {
		annotate(trace.SpanFromContext(ctx), e, outcome)
	}
	t.outcomes.Add(ctx, 1, metric.WithAttributes(outcome,
		methodKey.String(e.Method), routeKey.String(hookstat.Route(e.Route))))
	if e.Kind == idempotency.EventStoreError && errors.Is(e.Err, idempotency.ErrCircuitOpen) {
		t.refused.Add(ctx, 1)
	}
	if e.StoreOp != 0 {
		t.store.Record(ctx, e.StoreLatency.Seconds(), metric.WithAttributes(StoreOpKey.String(e.StoreOp.String())))
	}
	if d := hookstat.InFlightDelta(e); d != 0 {
		t.inFlight.Add(ctx, d)
	}
}

// annotate sets the outcome on the request's span, and adds an event for
// a store error or a lost lease.
func annotate(span trace.Span, e idempotency.Event, outcome attribute.KeyValue) {
	if !span.IsRecording() {
		return
	}
	span.SetAttributes(outcome, ReplayedKey.Bool(e.Kind == idempotency.EventReplayed))
	if e.IdempotencyKey != "" {
		span.SetAttributes(IdempotencyKeyKey.String(e.IdempotencyKey))
	}
	var attrs []attribute.KeyValue
	if e.StoreOp != 0 {
		attrs = append(attrs, StoreOpKey.String(e.StoreOp.String()))
	}
	switch e.Kind {
	case idempotency.EventStoreError:
		if e.Err != nil {
			attrs = append(attrs, attribute.String("exception.type", fmt.Sprintf("%T", e.Err)),
				attribute.String("exception.message", e.Err.Error()))
		}
		span.AddEvent("idempotency.store_error", trace.WithAttributes(attrs...))
	case idempotency.EventLostLease:
		span.AddEvent("idempotency.lost_lease", trace.WithAttributes(attrs...))
	}
}

// Chain returns one hook that calls each of hooks in turn, skipping nil
// ones. [idempotency.WithEventHook] keeps a single hook (a later option
// replaces an earlier one), so chain the hooks that must all see the
// events:
//
//	idempotency.WithEventHook(otelidem.Chain(tel.Hook(), metrics.Hook(), audit))
func Chain(hooks ...func(context.Context, idempotency.Event)) func(context.Context, idempotency.Event) {
	return hookstat.Chain(hooks...)
}
