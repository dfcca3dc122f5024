package promidem

import (
	"fmt"
	"regexp"
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ginidem/idempotency/internal/hookstat"
)

// Option configures the collector returned by [New].
type Option interface{ apply(*config) }

type optionFunc func(*config)

func (f optionFunc) apply(c *config) { f(c) }

// config is the private configuration of one [Metrics].
type config struct {
	namespace   string
	constLabels prometheus.Labels
	buckets     []float64
}

func defaultConfig() *config {
	return &config{namespace: "idempotency", buckets: hookstat.LatencyBuckets()}
}

// validName is a Prometheus metric or label name in the legacy character
// set, which every scraper and query language accepts.
var validName = regexp.MustCompile(`^[a-zA-Z_][a-zA-Z0-9_]*$`)

// variableLabels are the label names the collector sets itself.
var variableLabels = []string{"outcome", "method", "route", "op"}

// WithNamespace sets the prefix of every metric name (default
// "idempotency", as in idempotency_outcomes_total). It panics on an empty
// or invalid name.
//
//	promidem.New(promidem.WithNamespace("billing_idempotency"))
func WithNamespace(ns string) Option {
	if !validName.MatchString(ns) {
		panic(fmt.Sprintf("promidem: invalid namespace %q", ns))
	}
	return optionFunc(func(c *config) { c.namespace = ns })
}

// WithConstLabels adds labels with fixed values to every metric. Use them
// to tell apart several middlewares that register their collectors on one
// registry, each with its own breaker. It panics on an invalid label name
// or one the collector sets itself (outcome, method, route, op).
//
//	promidem.New(promidem.WithConstLabels(prometheus.Labels{"api": "public"}))
func WithConstLabels(labels prometheus.Labels) Option {
	copied := make(prometheus.Labels, len(labels))
	for name, value := range labels {
		if !validName.MatchString(name) || strings.HasPrefix(name, "__") {
			panic(fmt.Sprintf("promidem: invalid label name %q", name))
		}
		for _, own := range variableLabels {
			if name == own {
				panic(fmt.Sprintf("promidem: label %q is set by the collector", name))
			}
		}
		copied[name] = value
	}
	return optionFunc(func(c *config) { c.constLabels = copied })
}

// WithBuckets sets the upper bounds, in seconds, of the store-latency
// histogram's buckets. The default runs from half a millisecond, a Redis
// round trip on a local network, to 2.5 s, beyond the default store timeout
// of 1 s: .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5. It
// panics unless there is at least one bound and the bounds increase.
//
//	promidem.New(promidem.WithBuckets(.001, .01, .1, 1))
func WithBuckets(bounds ...float64) Option {
	if len(bounds) == 0 {
		panic("promidem: WithBuckets needs at least one bound")
	}
	for i := 1; i < len(bounds); i++ {
		if bounds[i] <= bounds[i-1] {
			panic(fmt.Sprintf("promidem: bucket bounds must increase, got %v", bounds))
		}
	}
	copied := append([]float64(nil), bounds...)
	return optionFunc(func(c *config) { c.buckets = copied })
}
