package promidem_test

import (
	"bufio"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"

	"github.com/gin-gonic/gin"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/ginidem/idempotency"
	"github.com/ginidem/idempotency/promidem"
)

// Register the collector, pass its option to the middleware, serve the
// registry on /metrics, and scrape it after one keyed request.
func Example() {
	gin.SetMode(gin.ReleaseMode)
	m := promidem.New()
	reg := prometheus.NewRegistry()
	reg.MustRegister(m)

	r := gin.New()
	r.GET("/metrics", gin.WrapH(promhttp.HandlerFor(reg, promhttp.HandlerOpts{})))
	r.POST("/orders/:id", idempotency.New(m.Option()), func(c *gin.Context) {
		c.JSON(http.StatusCreated, gin.H{"id": c.Param("id")})
	})

	req := httptest.NewRequest(http.MethodPost, "/orders/42", strings.NewReader(`{"qty":1}`))
	req.Header.Set("Authorization", "Bearer alice")
	req.Header.Set("Idempotency-Key", "8e03978e-40d5-43e8-bc93-6894a57f9324")
	r.ServeHTTP(httptest.NewRecorder(), req)

	scrape := httptest.NewRecorder()
	r.ServeHTTP(scrape, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	lines := bufio.NewScanner(scrape.Body)
	for lines.Scan() {
		if line := lines.Text(); strings.HasPrefix(line, "idempotency_outcomes_total") ||
			strings.HasPrefix(line, "idempotency_requests_in_flight") {
			fmt.Println(line)
		}
	}
	// Output:
	// idempotency_outcomes_total{method="POST",outcome="acquired",route="/orders/:id"} 1
	// idempotency_outcomes_total{method="POST",outcome="completed",route="/orders/:id"} 1
	// idempotency_requests_in_flight 0
}
