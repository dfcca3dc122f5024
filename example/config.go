package main

import (
	"errors"
	"flag"
	"fmt"
	"net/url"
	"time"
)

// config is the service's configuration, read once by parseConfig.
type config struct {
	Addr        string        // listen address
	TTL         time.Duration // lifetime of an idempotency record
	Lease       time.Duration // in-flight lease of a key
	Latency     time.Duration // delay inside every write handler (a slow backend)
	Idempotency bool          // false serves the routes without the middleware
	RedisURL    string        // the idempotency store (unless PostgresURL) and the consumed stream; empty: in-memory store
	PostgresURL string        // requisitions and idempotency records in Postgres; empty: in memory
	Breaker     bool          // false: no circuit breaker around the store
	Metrics     bool          // serve the middleware's Prometheus metrics on /metrics

	// ConsumeStream names a Redis stream (on RedisURL) whose requisition
	// events a consumer applies beside the HTTP API; empty: no consumer.
	// With PostgresURL too, Redis holds only the stream.
	ConsumeStream string

	// hold, when set, replaces the Latency delay in write handlers. Tests
	// use it to keep a request in flight for as long as they need.
	hold func()
}

// parseConfig reads the configuration from the command-line arguments
// (without the program name) and the environment: flags win over
// environment variables, which win over the defaults.
func parseConfig(args []string, getenv func(string) string) (config, error) {
	cfg := config{
		Addr:        "127.0.0.1:8080",
		TTL:         24 * time.Hour,
		Lease:       time.Minute,
		Idempotency: true,
		Breaker:     true,
	}
	if v := getenv("ADDR"); v != "" {
		cfg.Addr = v
	}
	if v := getenv("REDIS_URL"); v != "" {
		cfg.RedisURL = v
	}
	if v := getenv("POSTGRES_URL"); v != "" {
		cfg.PostgresURL = v
	}
	if v := getenv("CONSUME_STREAM"); v != "" {
		cfg.ConsumeStream = v
	}
	for _, d := range []struct {
		env string
		dst *time.Duration
	}{
		{"IDEMPOTENCY_TTL", &cfg.TTL},
		{"IDEMPOTENCY_LEASE", &cfg.Lease},
		{"LATENCY", &cfg.Latency},
	} {
		if v := getenv(d.env); v != "" {
			parsed, err := time.ParseDuration(v)
			if err != nil {
				return config{}, fmt.Errorf("%s: %w", d.env, err)
			}
			*d.dst = parsed
		}
	}

	// The environment's values are the flags' defaults, so a flag wins.
	fs := flag.NewFlagSet("example", flag.ContinueOnError)
	fs.StringVar(&cfg.Addr, "addr", cfg.Addr, "listen `address` (env ADDR)")
	fs.DurationVar(&cfg.TTL, "ttl", cfg.TTL, "lifetime of an idempotency record (env IDEMPOTENCY_TTL)")
	fs.DurationVar(&cfg.Lease, "lease", cfg.Lease, "in-flight lease of an idempotency key (env IDEMPOTENCY_LEASE)")
	fs.DurationVar(&cfg.Latency, "latency", cfg.Latency, "delay inside every write handler, a slow backend (env LATENCY)")
	fs.BoolVar(&cfg.Idempotency, "idempotency", cfg.Idempotency, "use the idempotency middleware on write routes")
	fs.BoolVar(&cfg.Breaker, "breaker", cfg.Breaker, "stop calling a failing store for a while (a circuit breaker)")
	fs.BoolVar(&cfg.Metrics, "metrics", cfg.Metrics, "serve the idempotency middleware's Prometheus metrics on /metrics")
	fs.StringVar(&cfg.RedisURL, "redis", cfg.RedisURL, "Redis `URL` for the idempotency store and the -consume stream, e.g. redis://127.0.0.1:6379/0 (env REDIS_URL); empty: in memory")
	fs.StringVar(&cfg.PostgresURL, "postgres", cfg.PostgresURL, "Postgres `URL` for the requisitions and the idempotency store (pgstore), e.g. postgres://user:password@127.0.0.1:5432/db (env POSTGRES_URL)")
	fs.StringVar(&cfg.ConsumeStream, "consume", cfg.ConsumeStream, "apply the requisition events of the Redis `stream` on -redis, exactly once (env CONSUME_STREAM); with -postgres too, Redis holds only the stream")
	if err := fs.Parse(args); err != nil {
		return config{}, err
	}
	switch {
	case fs.NArg() > 0:
		return config{}, fmt.Errorf("unexpected arguments: %q", fs.Args())
	case cfg.ConsumeStream != "" && cfg.RedisURL == "":
		return config{}, errors.New("consume needs -redis: the stream is in Redis")
	case cfg.ConsumeStream != "" && !cfg.Idempotency:
		return config{}, errors.New("consume needs the idempotency records: drop -idempotency=false")
	case cfg.RedisURL != "" && cfg.PostgresURL != "" && cfg.ConsumeStream == "":
		return config{}, errors.New("redis and postgres: choose one store for the idempotency records (both only with -consume, where Redis holds the stream)")
	case cfg.TTL <= 0:
		return config{}, fmt.Errorf("ttl must be positive, got %v", cfg.TTL)
	case cfg.Lease <= 0:
		return config{}, fmt.Errorf("lease must be positive, got %v", cfg.Lease)
	case cfg.Latency < 0:
		return config{}, fmt.Errorf("latency must not be negative, got %v", cfg.Latency)
	}
	return cfg, nil
}

// storeName names the idempotency store for logs: "memory", or the Redis
// or Postgres URL with its password redacted.
func (cfg config) storeName() string {
	switch {
	case !cfg.Idempotency:
		return "none"
	case cfg.PostgresURL != "":
		return redactPostgresURL(cfg.PostgresURL)
	case cfg.RedisURL == "":
		return "memory"
	}
	return cfg.redisName()
}

// redisName is the Redis URL with its password redacted, for logs.
func (cfg config) redisName() string {
	u, err := url.Parse(cfg.RedisURL)
	if err != nil {
		return "redis (unparsable URL)"
	}
	return u.Redacted()
}
