package main

import (
	"github.com/gin-gonic/gin"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/ginidem/idempotency"
	"github.com/ginidem/idempotency/promidem"
)

// serveMetrics serves the idempotency middleware's Prometheus metrics on
// GET /metrics of r (with -metrics) and returns the option that feeds
// them. The registry is the service's own, not the global one; a real
// service would also register the Go and process collectors
// (prometheus/collectors). /metrics sits outside /api, so it needs no
// authentication: expose it only where the scraper can reach it.
//
//	curl -s 127.0.0.1:8080/metrics | grep ^idempotency_
func serveMetrics(r *gin.Engine) idempotency.Option {
	m := promidem.New()
	reg := prometheus.NewRegistry()
	reg.MustRegister(m)
	r.GET("/metrics", gin.WrapH(promhttp.HandlerFor(reg, promhttp.HandlerOpts{})))
	return m.Option()
}
