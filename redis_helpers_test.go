package idempotency_test

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/ginidem/idempotency/internal/redistest"
)

// The Redis servers of the tests are started by internal/redistest, which
// the tests in tests/ share; these are the names this package's tests know
// them by.

// redisTarget is one kind of Redis the Redis tests run against: see
// redistest.Target.
type redisTarget struct {
	name string
	open func(t *testing.T) (client redis.UniversalClient, prefix string, advance func(time.Duration))
}

// redisTargets lists the Redis kinds available here: a real redis-server
// when the binary is on PATH, miniredis when it is not or when
// withMiniredis asks for it too, and a Redis Cluster when IDEM_REDIS_CLUSTER
// names its nodes.
func redisTargets(withMiniredis bool) []redisTarget {
	var targets []redisTarget
	for _, target := range redistest.Targets(withMiniredis) {
		targets = append(targets, redisTarget{name: target.Name, open: target.Open})
	}
	return targets
}

// newRedisClient returns a client for addr that honours context deadlines,
// closed when the test ends.
func newRedisClient(t *testing.T, addr string) *redis.Client { return redistest.NewClient(t, addr) }

// secondClient returns another client, with its own connections, to the
// server or cluster that client talks to: a second process, for tests.
func secondClient(t *testing.T, client redis.UniversalClient) redis.UniversalClient {
	return redistest.SecondClient(t, client)
}

// forEachKey calls fn for every key under prefix, on every master of a
// cluster.
func forEachKey(ctx context.Context, client redis.UniversalClient, prefix string, fn func(context.Context, redis.Cmdable, string) error) error {
	return redistest.ForEachKey(ctx, client, prefix, fn)
}

// redisServer is a throwaway redis-server on a free loopback port
// (redistest.Server); addr is its host:port.
type redisServer struct {
	*redistest.Server
	addr string
}

// startRedisServer starts a redis-server for this test alone, stopped when
// the test ends. It skips the test when redis-server is not on PATH.
func startRedisServer(t testing.TB) *redisServer {
	t.Helper()
	srv := redistest.StartServer(t)
	return &redisServer{Server: srv, addr: srv.Addr}
}

func freePort() (int, error) { return redistest.FreePort() }

// watchdog runs redis-server with the arguments after $1 and kills it once
// its stdin reaches end of file (redistest.Watchdog).
const watchdog = redistest.Watchdog

// waitForPing polls addr with a raw PING until it answers +PONG.
func waitForPing(addr string, limit time.Duration) error { return redistest.WaitForPing(addr, limit) }

// evalCalls reports how many EVALSHA and EVAL commands the server has run,
// from INFO commandstats.
func evalCalls(t *testing.T, client redis.UniversalClient) int {
	t.Helper()
	info, err := client.Info(context.Background(), "commandstats").Result()
	require.NoError(t, err)
	total := 0
	for line := range strings.Lines(info) {
		name, stats, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok || (name != "cmdstat_evalsha" && name != "cmdstat_eval") {
			continue
		}
		for field := range strings.SplitSeq(stats, ",") {
			if v, ok := strings.CutPrefix(field, "calls="); ok {
				n, err := strconv.Atoi(v)
				require.NoError(t, err, "commandstats line %q", line)
				total += n
			}
		}
	}
	return total
}

// evalDelta runs step and returns how many script calls (EVALSHA and EVAL)
// the server behind client counted meanwhile: its round trips.
func evalDelta(t *testing.T, client redis.UniversalClient, step func()) int {
	t.Helper()
	before := evalCalls(t, client)
	step()
	return evalCalls(t, client) - before
}
