package otelidem

import (
	"fmt"

	"go.opentelemetry.io/otel/metric"

	"github.com/ginidem/idempotency/internal/hookstat"
)

// Option configures the instrumentation returned by [New].
type Option interface{ apply(*config) }

type optionFunc func(*config)

func (f optionFunc) apply(c *config) { f(c) }

// config is the private configuration of one [Telemetry].
type config struct {
	meterProvider metric.MeterProvider
	buckets       []float64
	tracing       bool
}

func defaultConfig() *config {
	return &config{buckets: hookstat.LatencyBuckets(), tracing: true}
}

// WithMeterProvider sets where the metrics go (default the global
// provider, otel.GetMeterProvider(), read once in [New]). It panics on nil.
//
//	otelidem.New(otelidem.WithMeterProvider(sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))))
func WithMeterProvider(mp metric.MeterProvider) Option {
	if mp == nil {
		panic("otelidem: WithMeterProvider(nil)")
	}
	return optionFunc(func(c *config) { c.meterProvider = mp })
}

// WithBuckets sets the explicit bucket boundaries, in seconds, of the
// store-duration histogram. The default runs from half a millisecond, a
// Redis round trip on a local network, to 2.5 s, beyond the default store
// timeout of 1 s: .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1,
// 2.5. A view on the MeterProvider overrides it. It panics unless there is
// at least one boundary and the boundaries increase.
//
//	otelidem.New(otelidem.WithBuckets(.001, .01, .1, 1))
func WithBuckets(bounds ...float64) Option {
	if len(bounds) == 0 {
		panic("otelidem: WithBuckets needs at least one boundary")
	}
	for i := 1; i < len(bounds); i++ {
		if bounds[i] <= bounds[i-1] {
			panic(fmt.Sprintf("otelidem: bucket boundaries must increase, got %v", bounds))
		}
	}
	copied := append([]float64(nil), bounds...)
	return optionFunc(func(c *config) { c.buckets = copied })
}

// WithoutSpans leaves the request's span alone: no attributes, no events.
// Use it when only the metrics are wanted.
func WithoutSpans() Option {
	return optionFunc(func(c *config) { c.tracing = false })
}
