package idempotency_test

import (
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	idem "github.com/ginidem/idempotency"
	"github.com/ginidem/idempotency/internal/suite"
)

// Redis stopped and restarted under a running service, with the outage
// outlasting the work in flight: a release or a completion that Redis
// could not confirm is retried until it answers (SPEC 22, 23).

// aofRedis is a redis-server that writes every command to its append-only
// file before answering (appendfsync always), so that a restart loses
// nothing: an in-flight record comes back with the expiry it had, as on a
// production Redis with AOF. It is stopped when the test ends.
type aofRedis struct {
	addr string
	port int
	dir  string

	mu    sync.Mutex
	cmd   *exec.Cmd
	guard *os.File // write end of the watchdog's stdin
}

func startAOFRedis(t *testing.T) *aofRedis {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Skip("redis-server is not on PATH: this test stops and restarts a real Redis")
	}
	port, err := freePort()
	require.NoError(t, err)
	s := &aofRedis{addr: "127.0.0.1:" + strconv.Itoa(port), port: port, dir: t.TempDir()}
	require.NoError(t, s.Start())
	t.Cleanup(s.Stop)
	return s
}

// Start starts the server, or starts it again after Stop on the same port
// and files, and waits until it answers PING.
func (s *aofRedis) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	logFile := filepath.Join(s.dir, "redis.log")
	cmd := exec.Command("sh", "-c", watchdog, "sh", "",
		"--port", strconv.Itoa(s.port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "yes", "--appendfsync", "always", "--daemonize", "no",
		"--dir", s.dir, "--logfile", logFile)
	cmd.Stdin = r
	if err := cmd.Start(); err != nil {
		r.Close()
		w.Close()
		return err
	}
	r.Close()
	s.cmd, s.guard = cmd, w
	if err := waitForPing(s.addr, 10*time.Second); err != nil {
		logged, _ := os.ReadFile(logFile)
		return fmt.Errorf("redis-server on %s: %w\n%s", s.addr, err, logged)
	}
	return nil
}

// Stop stops the server; it may be started again.
func (s *aofRedis) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return
	}
	_ = s.guard.Close()
	_ = s.cmd.Wait()
	s.cmd, s.guard = nil, nil
}

// outageService is one process of a service on a Redis store of its own:
// POST /orders counts its runs in runs (shared by the processes of a
// test), waits for gate when the test holds one open, and answers status.
type outageService struct {
	srv    *httptest.Server
	status atomic.Int32
}

func newOutageService(t *testing.T, store idem.Store, runs *atomic.Int32, gate <-chan struct{}, opts ...idem.Option) *outageService {
	t.Helper()
	s := &outageService{}
	s.status.Store(http.StatusCreated)
	r := gin.New()
	r.Use(idem.New(append([]idem.Option{idem.WithStore(store), idem.WithCircuitBreaker(0, 0),
		idem.WithLogger(slog.New(slog.DiscardHandler))}, opts...)...))
	r.POST("/orders", func(c *gin.Context) {
		n := runs.Add(1)
		if gate != nil {
			<-gate
		}
		c.Header("Location", fmt.Sprintf("/orders/%d", n))
		c.JSON(int(s.status.Load()), gin.H{"id": n})
	})
	s.srv = httptest.NewServer(r)
	t.Cleanup(s.srv.Close)
	return s
}

// outage is a test of an outage in the middle of a request: two processes
// a and b on one Redis with an AOF, a's handler waiting for the test.
type outage struct {
	srv  *aofRedis
	runs atomic.Int32
	gate chan struct{}
	ev   *suite.Events
	a, b *outageService
	hc   *http.Client
	down time.Time // when Redis stopped
}

// newOutage starts Redis and the two processes, with a store timeout of
// 200 ms and lease; b's store gets bOpts.
func newOutage(t *testing.T, lease time.Duration, bOpts ...idem.RedisStoreOption) *outage {
	t.Helper()
	o := &outage{srv: startAOFRedis(t), gate: make(chan struct{}), ev: suite.NewEvents(), hc: newHTTPClient(t)}
	opts := []idem.Option{idem.WithStoreTimeout(200 * time.Millisecond), idem.WithLease(lease)}
	o.a = newOutageService(t, idem.NewRedisStore(newRedisClient(t, o.srv.addr)), &o.runs, o.gate,
		append(opts, idem.WithEventHook(o.ev.Hook))...)
	o.b = newOutageService(t, idem.NewRedisStore(newRedisClient(t, o.srv.addr), bOpts...), &o.runs, nil, opts...)
	return o
}

// stopDuringFirst sends the first request to a, stops Redis once it holds
// the key, lets its handler answer, and returns the answer it got.
func (o *outage) stopDuringFirst(t *testing.T) redisResp {
	t.Helper()
	first := make(chan redisResp, 1)
	go func() { first <- postOrder(o.hc, o.a.srv, redisHTTPKey) }()
	o.ev.WaitFor(t, idem.EventAcquired)
	o.srv.Stop()
	o.down = time.Now()
	close(o.gate)
	return recvRedis(t, first)
}

// outlast waits until the outage that began at down has lasted longer
// than lease: the in-flight record, renewed at the latest when Redis
// stopped, has then expired. This sets the outage's length, the condition
// under test; it synchronises nothing.
func outlast(down time.Time, lease time.Duration) {
	<-time.After(time.Until(down.Add(lease + lease/2)))
}

// TestSpec22_ReleaseFailedDuringAnOutageIsRetried: the handler answers
// 500 while Redis is stopped, so its release fails. Redis restarts with
// its AOF, the in-flight record (a 30 s lease) with it; the release is
// retried as soon as Redis answers, so the key is free within seconds for
// every process, instead of 409 for the rest of the lease.
func TestSpec22_ReleaseFailedDuringAnOutageIsRetried(t *testing.T) {
	o := newOutage(t, 30*time.Second)
	o.a.status.Store(http.StatusInternalServerError)
	assert.Equal(t, http.StatusInternalServerError, o.stopDuringFirst(t).status)
	o.ev.WaitFor(t, idem.EventStoreError) // the release failed
	require.NoError(t, o.srv.Start())

	admin := newRedisClient(t, o.srv.addr)
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		n, err := admin.Exists(storeCtx(t), "idem:{"+eventKey(t, redisHTTPKey)+"}").Result()
		assert.NoError(c, err)
		assert.Zero(c, n, "the in-flight record is released")
	}, 5*time.Second, 20*time.Millisecond, "the failed release is retried once Redis answers, not left for the 30 s lease")
	retry := postOrder(o.hc, o.b.srv, redisHTTPKey)
	assert.Equal(t, http.StatusCreated, retry.status, "another process's retry runs")
	assert.Equal(t, int32(2), o.runs.Load())
}

// TestSpec22_RetryTakesOverAPendingRelease: a retry on the process whose
// release failed, sent as soon as Redis is back, runs at once: its
// acquisition takes the orphaned in-flight record over.
func TestSpec22_RetryTakesOverAPendingRelease(t *testing.T) {
	srv := startAOFRedis(t)
	var runs atomic.Int32
	gate := make(chan struct{}, 1)
	ev := suite.NewEvents()
	a := newOutageService(t, idem.NewRedisStore(newRedisClient(t, srv.addr)), &runs, gate,
		idem.WithStoreTimeout(200*time.Millisecond), idem.WithLease(30*time.Second), idem.WithEventHook(ev.Hook))
	a.status.Store(http.StatusServiceUnavailable)
	hc := newHTTPClient(t)

	first := make(chan redisResp, 1)
	go func() { first <- postOrder(hc, a.srv, redisHTTPKey) }()
	ev.WaitFor(t, idem.EventAcquired)
	srv.Stop()
	gate <- struct{}{}
	assert.Equal(t, http.StatusServiceUnavailable, recvRedis(t, first).status)
	ev.WaitFor(t, idem.EventStoreError)
	require.NoError(t, srv.Start())

	a.status.Store(http.StatusCreated)
	gate <- struct{}{}
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.Equal(c, http.StatusCreated, postOrder(hc, a.srv, redisHTTPKey).status)
	}, 5*time.Second, 20*time.Millisecond, "the retry runs, not 409 for the 30 s lease")
	assert.Equal(t, int32(2), runs.Load())
}

// TestSpec23_CompletionLandsAfterAnOutageLongerThanTheLease: Redis stops
// before the handler finishes and stays down past the end of the 1 s
// lease, so the in-flight record is gone when it restarts. Nobody took
// the key meanwhile, so the completion still lands: another process's
// retry gets the replay, and the handler ran once.
func TestSpec23_CompletionLandsAfterAnOutageLongerThanTheLease(t *testing.T) {
	const lease = time.Second
	o := newOutage(t, lease)
	answer := o.stopDuringFirst(t)
	require.Equal(t, http.StatusCreated, answer.status, "the first client gets its answer")
	o.ev.WaitFor(t, idem.EventStoreError) // the first completion attempt failed
	outlast(o.down, lease)
	require.NoError(t, o.srv.Start())

	o.ev.WaitFor(t, idem.EventCompleted)
	assert.NotContains(t, o.ev.Kinds(), idem.EventLostLease)
	retry := postOrder(o.hc, o.b.srv, redisHTTPKey)
	assert.Equal(t, http.StatusCreated, retry.status)
	assert.True(t, retry.replayed(), "the retry gets the replay, marked Idempotent-Replayed")
	assert.Equal(t, answer.body, retry.body)
	assert.Equal(t, int32(1), o.runs.Load(), "the handler ran once")
}

// TestSpec23_RetryWhileTheCompletionIsPendingGetsItsAnswer: while Redis is
// down, before and after the lease ends, a retry on the process whose
// completion is pending gets that answer as a replay, not 503 or a second
// run; once Redis is back, the completion lands.
func TestSpec23_RetryWhileTheCompletionIsPendingGetsItsAnswer(t *testing.T) {
	const lease = time.Second
	o := newOutage(t, lease, idem.WithRedisLocalCache(0, 0))
	answer := o.stopDuringFirst(t)
	require.Equal(t, http.StatusCreated, answer.status)
	o.ev.WaitFor(t, idem.EventStoreError)

	pending := postOrder(o.hc, o.a.srv, redisHTTPKey)
	assert.Equal(t, http.StatusCreated, pending.status, "the pending answer, not 503: %s", pending.body)
	assert.True(t, pending.replayed())
	assert.Equal(t, answer.body, pending.body)
	outlast(o.down, lease)
	late := postOrder(o.hc, o.a.srv, redisHTTPKey)
	assert.True(t, late.replayed(), "still the pending answer after the lease: %d %s", late.status, late.body)
	assert.Equal(t, answer.body, late.body)

	require.NoError(t, o.srv.Start())
	o.ev.WaitFor(t, idem.EventCompleted)
	elsewhere := postOrder(o.hc, o.b.srv, redisHTTPKey)
	assert.True(t, elsewhere.replayed(), "the completion landed in Redis")
	assert.Equal(t, answer.body, elsewhere.body)
	assert.Equal(t, int32(1), o.runs.Load(), "the handler ran once")
}

// TestSpec23_RedisCompletionLandsWhenTheKeyHoldsNothing: the complete
// script stores a token's record over its in-flight record or under a key
// that holds nothing (its lease expired and nobody took the key), and
// refuses it when another token's record holds the key.
func TestSpec23_RedisCompletionLandsWhenTheKeyHoldsNothing(t *testing.T) {
	forEachRedis(t, func(t *testing.T, client redis.UniversalClient, prefix string, advance func(time.Duration)) {
		ctx := storeCtx(t)
		s := idem.NewRedisStore(client, idem.WithRedisKeyPrefix(prefix), idem.WithRedisLocalCache(0, 0))
		const lease = time.Minute
		expired, _, err := s.Acquire(ctx, "expired", testClaim, lease)
		require.NoError(t, err)
		taken, _, err := s.Acquire(ctx, "taken", testClaim, lease)
		require.NoError(t, err)
		advance(lease + time.Second)
		require.ErrorIs(t, s.Extend(ctx, "expired", expired, lease), idem.ErrNotOwner, "the lease is over")

		require.NoError(t, s.Complete(ctx, "expired", expired, completed(201, `{"id":1}`), time.Hour), "nobody took the key")
		_, held, err := s.Acquire(ctx, "expired", testClaim, lease)
		require.NoError(t, err)
		require.NotNil(t, held)
		assert.Equal(t, idem.Completed, held.State)
		assert.Equal(t, `{"id":1}`, string(held.Body))

		other, held, err := s.Acquire(ctx, "taken", testClaim, lease)
		require.NoError(t, err)
		require.Nil(t, held)
		assert.ErrorIs(t, s.Complete(ctx, "taken", taken, completed(201, `{"id":2}`), time.Hour), idem.ErrNotOwner,
			"another request holds the key")
		require.NoError(t, s.Complete(ctx, "taken", other, completed(201, `{"id":3}`), time.Hour))
		assert.ErrorIs(t, s.Complete(ctx, "taken", taken, completed(201, `{"id":2}`), time.Hour), idem.ErrNotOwner,
			"another request's record holds the key")
	})
}
