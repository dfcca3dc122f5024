// Package promidem exports the idempotency middleware's outcomes as
// Prometheus metrics. It listens on the middleware's event hook
// ([idempotency.WithEventHook]), so the idempotency package itself never
// imports Prometheus.
//
// A [Metrics] is a [prometheus.Collector]: register it on your registry and
// pass its option to [idempotency.New].
//
//	m := promidem.New()
//	reg := prometheus.NewRegistry()
//	reg.MustRegister(m)
//	r.POST("/orders", idempotency.New(m.Option()), createOrder)
//	r.GET("/metrics", gin.WrapH(promhttp.HandlerFor(reg, promhttp.HandlerOpts{})))
//
// It exports, under the namespace "idempotency" by default:
//
//	idempotency_outcomes_total{outcome,method,route}   counter
//	idempotency_store_duration_seconds{op}              histogram
//	idempotency_requests_in_flight                      gauge
//	idempotency_breaker_state                           gauge: 0 closed, 1 half-open, 2 open
//	idempotency_breaker_refused_total                   counter
//
// The refused counter counts the keyed requests that the open breaker
// answered without calling the store (503, or run without idempotency with
// [idempotency.WithFailOpen]); each is a "store_error" outcome too. The
// middleware logs them only in a summary line, so this is where an
// outage's refusals add up. The client's idempotency key is never a label:
// it would make one series per request.
//
// The outcome is the event's name ([idempotency.EventKind.String]), such as
// "replayed". A request with a new key counts "acquired" and then one of
// "completed", "released" or "lost_lease", so sum(rate(...{outcome=
// "acquired"}[5m])) is the rate of handler runs. The route is the Gin route
// pattern, such as "/orders/:id", or "unmatched" for a request no route
// matched: never the raw path, so the number of series stays bounded. The
// op is the store call: "acquire", "complete" or "release".
//
// One [Metrics] may serve several middlewares; its counters add up. Each
// middleware has its own circuit breaker, though, and one gauge shows the
// last change of any of them: give each middleware its own [Metrics] with
// [WithConstLabels] when their breakers matter apart.
package promidem

import (
	"context"
	"errors"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ginidem/idempotency"
	"github.com/ginidem/idempotency/internal/hookstat"
)

// Metrics collects the idempotency middleware's metrics from its events.
// It is safe for concurrent use. Create it with [New].
type Metrics struct {
	outcomes *prometheus.CounterVec
	store    *prometheus.HistogramVec
	inFlight prometheus.Gauge
	breaker  prometheus.Gauge
	refused  prometheus.Counter
}

// Compile-time check: a Metrics is registered like any collector.
var _ prometheus.Collector = (*Metrics)(nil)

// New returns a collector configured by opts over safe defaults. It
// registers nothing: pass it to your registry's MustRegister. It panics,
// with a "promidem:" prefix, on an invalid option.
func New(opts ...Option) *Metrics {
	cfg := defaultConfig()
	for _, opt := range opts {
		opt.apply(cfg)
	}
	ns, labels := cfg.namespace, cfg.constLabels
	return &Metrics{
		outcomes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "outcomes_total", ConstLabels: labels,
			Help: "Outcomes of keyed requests, by event kind (acquired, completed, replayed, conflict, mismatch, released, store_error, lost_lease, unknown_caller), method and route pattern.",
		}, []string{"outcome", "method", "route"}),
		store: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: ns, Name: "store_duration_seconds", ConstLabels: labels, Buckets: cfg.buckets,
			Help: "Duration of the idempotency store calls, by operation (acquire, complete, release), failed calls included.",
		}, []string{"op"}),
		inFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: ns, Name: "requests_in_flight", ConstLabels: labels,
			Help: "Keyed requests whose handler is running under a lease, or whose response is being stored.",
		}),
		breaker: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: ns, Name: "breaker_state", ConstLabels: labels,
			Help: "State of the circuit breaker around the idempotency store: 0 closed, 1 half-open, 2 open.",
		}),
		refused: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Name: "breaker_refused_total", ConstLabels: labels,
			Help: "Keyed requests the open circuit breaker answered without calling the idempotency store (503, or run without idempotency with fail-open); each is a store_error outcome too.",
		}),
	}
}

// Hook returns the event hook that feeds m, to pass to
// [idempotency.WithEventHook] directly or through [Chain].
func (m *Metrics) Hook() func(context.Context, idempotency.Event) { return m.observe }

// Option returns idempotency.WithEventHook(m.Hook()). The middleware keeps
// one hook: a later WithEventHook replaces this one, and this one replaces
// an earlier. Use [Chain] to feed m and hooks of your own.
//
//	idempotency.New(idempotency.WithStore(store), m.Option())
func (m *Metrics) Option() idempotency.Option { return idempotency.WithEventHook(m.observe) }

// observe counts one event.
func (m *Metrics) observe(_ context.Context, e idempotency.Event) {
	if state, ok := hookstat.BreakerState(e.Kind); ok {
		m.breaker.Set(float64(state))
		return
	}
	m.outcomes.WithLabelValues(e.Kind.String(), e.Method, hookstat.Route(e.Route)).Inc()
	if e.Kind == idempotency.EventStoreError && errors.Is(e.Err, idempotency.ErrCircuitOpen) {
		m.refused.Inc()
	}
	if e.StoreOp != 0 {
		m.store.WithLabelValues(e.StoreOp.String()).Observe(e.StoreLatency.Seconds())
	}
	if d := hookstat.InFlightDelta(e); d != 0 {
		m.inFlight.Add(float64(d))
	}
}

// Describe sends the descriptions of m's metrics to ch; it implements
// [prometheus.Collector].
func (m *Metrics) Describe(ch chan<- *prometheus.Desc) {
	m.outcomes.Describe(ch)
	m.store.Describe(ch)
	m.inFlight.Describe(ch)
	m.breaker.Describe(ch)
	m.refused.Describe(ch)
}

// Collect sends m's current metrics to ch; it implements
// [prometheus.Collector].
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	m.outcomes.Collect(ch)
	m.store.Collect(ch)
	m.inFlight.Collect(ch)
	m.breaker.Collect(ch)
	m.refused.Collect(ch)
}

// Chain returns one hook that calls each of hooks in turn, skipping nil
// ones. [idempotency.WithEventHook] keeps a single hook (a later option
// replaces an earlier one), so chain the hooks that must all see the
// events:
//
//	idempotency.WithEventHook(promidem.Chain(m.Hook(), audit))
func Chain(hooks ...func(context.Context, idempotency.Event)) func(context.Context, idempotency.Event) {
	return hookstat.Chain(hooks...)
}
