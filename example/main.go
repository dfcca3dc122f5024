// Command example is a small requisition service that shows the idempotency
// middleware in front of real write routes, behind authentication and a
// per-route rights check.
//
//	go run ./example                       # memory store on 127.0.0.1:8080
//	go run ./example -latency 5s           # slow writes, to see in-flight conflicts
//	go run ./example -idempotency=false    # the same routes without the middleware
//	go run ./example -metrics              # also serve Prometheus metrics on /metrics
//	go run ./example -redis redis://127.0.0.1:6379/0
//	go run ./example -postgres postgres://user:password@127.0.0.1:5432/db
//	go run ./example -redis redis://127.0.0.1:6379/0 -consume requisition-events
//
// With -postgres, the requisitions live in Postgres and so do the
// idempotency records (pgstore): a requisition and the record of its answer
// commit in one transaction, and replicas on one database are one service.
//
// With -consume, a consumer of a Redis stream applies requisition events
// beside the API, exactly once per event id (consumer.go); with -postgres
// too, the stream is in Redis and the records and requisitions in Postgres.
//
// Every flag has an environment variable (ADDR, IDEMPOTENCY_TTL,
// IDEMPOTENCY_LEASE, LATENCY, REDIS_URL, POSTGRES_URL, CONSUME_STREAM); a
// flag wins over its variable, and the variable over the default.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/ginidem/idempotency"
)

// openStore returns the idempotency store that cfg names and a function
// that releases it.
func openStore(cfg config) (idempotency.Store, func() error, error) {
	if cfg.RedisURL == "" {
		return idempotency.NewMemoryStore(), func() error { return nil }, nil
	}
	return newRedisStore(cfg.RedisURL)
}

func main() {
	cfg, err := parseConfig(os.Args[1:], os.Getenv)
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "example:", err)
		os.Exit(2)
	}
	if os.Getenv(gin.EnvGinMode) == "" {
		gin.SetMode(gin.ReleaseMode)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg); err != nil {
		slog.Error("example stopped", "err", err)
		os.Exit(1)
	}
}

// run opens the store and the requisitions (in memory, or in Postgres with
// -postgres), serves the API on cfg.Addr and, with -consume, consumes the
// stream, until ctx is done, and then shuts both down gracefully.
func run(ctx context.Context, cfg config) error {
	var store idempotency.Store
	var reqs repository = newRequisitions()
	switch {
	case cfg.PostgresURL != "":
		pg, err := openPostgres(ctx, cfg.PostgresURL, cfg.Idempotency)
		if err != nil {
			return err
		}
		defer pg.close()
		store, reqs = pg.store, pg.reqs
	case cfg.Idempotency:
		s, closeStore, err := openStore(cfg)
		if err != nil {
			return err
		}
		defer closeStore()
		store = s
	}
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return err
	}
	stopConsumer, err := startConsumer(ctx, cfg, store, reqs)
	if err != nil {
		ln.Close()
		return err
	}
	defer stopConsumer()
	slog.Info("example listening", "addr", ln.Addr().String(), "store", cfg.storeName(),
		"ttl", cfg.TTL, "lease", cfg.Lease, "latency", cfg.Latency)
	// Handlers may sleep for the latency: give them that long, and more, to finish.
	return serve(ctx, ln, newRouterOn(cfg, store, reqs), 10*time.Second+cfg.Latency)
}

// serve serves h on ln until ctx is done, then stops accepting connections
// and waits up to grace for the requests in flight (http.Server.Shutdown).
func serve(ctx context.Context, ln net.Listener, h http.Handler, grace time.Duration) error {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	slog.Info("example shutting down")
	shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), grace)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	if err := <-served; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// newRouter builds the service's Gin engine with its requisitions in
// memory: see newRouterOn.
func newRouter(cfg config, store idempotency.Store) *gin.Engine {
	return newRouterOn(cfg, store, newRequisitions())
}

// newRouterOn builds the service's Gin engine on reqs. Each write route runs, in
// order: authentication (401), the route's rights check (403), the
// idempotency middleware on store (unless cfg.Idempotency is false), and the
// handler. Authorization therefore wins over the key (SPEC 20), and keys are
// scoped per authenticated user (SPEC 6).
func newRouterOn(cfg config, store idempotency.Store, reqs repository) *gin.Engine {
	r := gin.New()
	r.HandleMethodNotAllowed = true
	r.Use(gin.CustomRecovery(func(c *gin.Context, _ any) {
		abortProblem(c, http.StatusInternalServerError, "internal", "the request failed unexpectedly")
	}))
	r.NoRoute(func(c *gin.Context) {
		abortProblem(c, http.StatusNotFound, "not-found", "no such route")
	})
	r.NoMethod(func(c *gin.Context) {
		abortProblem(c, http.StatusMethodNotAllowed, "method-not-allowed", "the route does not allow this method")
	})

	var idem gin.HandlerFunc // nil with -idempotency=false
	if cfg.Idempotency {
		opts := []idempotency.Option{
			idempotency.WithStore(store),
			idempotency.WithTTL(cfg.TTL),
			idempotency.WithLease(cfg.Lease),
			idempotency.WithScope(idempotency.ScopeFromContext(userKey)),
		}
		if !cfg.Breaker {
			opts = append(opts, idempotency.WithCircuitBreaker(0, 0))
		}
		if cfg.Metrics {
			opts = append(opts, serveMetrics(r))
		}
		idem = idempotency.New(opts...)
	}
	// write returns the handler chain of a write route.
	write := func(need right, h gin.HandlerFunc) []gin.HandlerFunc {
		if idem == nil {
			return []gin.HandlerFunc{allow(need), h}
		}
		return []gin.HandlerFunc{allow(need), idem, h}
	}

	svc := newService(cfg, reqs)
	api := r.Group("/api", authenticate)
	api.GET("/requisitions", allow(rightRead), svc.list)
	api.GET("/requisitions/:id", allow(rightRead), svc.get)
	api.POST("/requisitions", write(rightInitiate, svc.create)...)
	for _, t := range []transition{
		{"submit", rightSubmit, []status{statusInitiated}, statusSubmitted},
		{"authorize", rightAuthorize, []status{statusSubmitted}, statusAuthorized},
		{"approve", rightApprove, []status{statusAuthorized}, statusApproved},
		{"reject", rightReject, []status{statusSubmitted, statusAuthorized}, statusRejected},
	} {
		api.POST("/requisitions/:id/"+t.action, write(t.need, svc.transition(t))...)
	}
	if idem != nil {
		adminRoutes(api, store)
	}
	return r
}

// userKey is the gin.Context key under which authenticate stores the user.
const userKey = "user"

// right is a set of things a user may do.
type right uint8

const (
	rightRead right = 1 << iota
	rightInitiate
	rightSubmit
	rightAuthorize
	rightApprove
	rightReject
	rightAdmin // support staff: look up and forget idempotency keys
)

// rightsOf returns the rights of a known user, and false for an unknown one.
func rightsOf(user string) (right, bool) {
	switch user {
	case "alice", "bob":
		return rightRead | rightInitiate | rightSubmit, true
	case "carol":
		return rightRead | rightAuthorize | rightApprove | rightReject, true
	case "dave":
		return rightRead, true
	case "erin":
		return rightAdmin, true
	}
	return 0, false
}

// authenticate reads "Authorization: Bearer <user>" and stores the user
// under userKey; a missing header or an unknown user gets 401.
func authenticate(c *gin.Context) {
	scheme, user, _ := strings.Cut(c.GetHeader("Authorization"), " ")
	user = strings.TrimSpace(user)
	if _, known := rightsOf(user); !strings.EqualFold(scheme, "Bearer") || !known {
		c.Header("WWW-Authenticate", `Bearer realm="ginidem-example"`)
		abortProblem(c, http.StatusUnauthorized, "unauthorized", "send Authorization: Bearer <user> with a known user")
		return
	}
	c.Set(userKey, user)
}

// allow lets the request through when the authenticated user has the right
// need, and answers 403 otherwise.
func allow(need right) gin.HandlerFunc {
	return func(c *gin.Context) {
		if has, _ := rightsOf(c.GetString(userKey)); has&need == 0 {
			abortProblem(c, http.StatusForbidden, "forbidden", "the user may not do this")
		}
	}
}

// problemBase prefixes the example's own problem types; the middleware's
// problems have types of their own.
const problemBase = "https://ginidem.dev/example/problems/"

// abortProblem stops the handler chain and answers status with an
// application/problem+json body (RFC 9457) of type problemBase+kind, written
// like the middleware's own problems.
func abortProblem(c *gin.Context, status int, kind, detail string) {
	c.Abort()
	idempotency.WriteProblem(c, idempotency.Problem{
		Type:   problemBase + kind,
		Title:  http.StatusText(status),
		Status: status,
		Detail: detail,
	})
}
