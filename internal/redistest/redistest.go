// Package redistest starts the Redis servers the tests run on: a
// throwaway redis-server per test binary (or per test, for the tests that
// stop or restart it), miniredis where no redis-server is installed, and
// the Redis Cluster that IDEM_REDIS_CLUSTER names. Each test gets a key
// prefix of its own, and no database is ever flushed. Only tests import
// it; it is shared by the root module's tests and those in tests/.
package redistest

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
)

// Target is one kind of Redis the Redis tests run against. Open
// returns a client for one test (closed when the test ends), a key prefix
// no other test uses (its keys are deleted when the test ends), and a
// function that moves time forward for the keys under that prefix.
type Target struct {
	Name string
	Open func(t *testing.T) (client redis.UniversalClient, prefix string, advance func(time.Duration))
}

// Targets lists the Redis kinds available here: a real redis-server
// when the binary is on PATH, miniredis when it is not or when
// withMiniredis asks for it too, and a Redis Cluster when IDEM_REDIS_CLUSTER
// names its nodes (comma-separated host:port).
func Targets(withMiniredis bool) []Target {
	var targets []Target
	_, lookErr := exec.LookPath("redis-server")
	if lookErr == nil {
		targets = append(targets, Target{Name: "redis", Open: openSharedRedis})
	}
	if lookErr != nil || withMiniredis {
		targets = append(targets, Target{Name: "miniredis", Open: openMiniredis})
	}
	if addrs := os.Getenv("IDEM_REDIS_CLUSTER"); addrs != "" {
		targets = append(targets, Target{Name: "cluster", Open: func(t *testing.T) (redis.UniversalClient, string, func(time.Duration)) {
			client := redis.NewClusterClient(&redis.ClusterOptions{
				Addrs:                 strings.Split(addrs, ","),
				ContextTimeoutEnabled: true,
			})
			t.Cleanup(func() { _ = client.Close() })
			prefix := testKeyPrefix(t, client)
			return client, prefix, ttlAdvancer(t, client, prefix)
		}})
	}
	return targets
}

func openMiniredis(t *testing.T) (redis.UniversalClient, string, func(time.Duration)) {
	mr := miniredis.RunT(t)
	client := NewClient(t, mr.Addr())
	return client, "idem:", mr.FastForward
}

func openSharedRedis(t *testing.T) (redis.UniversalClient, string, func(time.Duration)) {
	client := NewClient(t, sharedServer(t).Addr)
	prefix := testKeyPrefix(t, client)
	return client, prefix, ttlAdvancer(t, client, prefix)
}

// NewClient returns a client for addr that honours context deadlines,
// closed when the test ends.
func NewClient(t *testing.T, addr string) *redis.Client {
	client := redis.NewClient(&redis.Options{Addr: addr, ContextTimeoutEnabled: true})
	t.Cleanup(func() { _ = client.Close() })
	return client
}

// SecondClient returns another client, with its own connections, to the
// server or cluster that client talks to: a second process, for tests.
func SecondClient(t *testing.T, client redis.UniversalClient) redis.UniversalClient {
	switch c := client.(type) {
	case *redis.Client:
		return NewClient(t, c.Options().Addr)
	case *redis.ClusterClient:
		other := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Options().Addrs, ContextTimeoutEnabled: true})
		t.Cleanup(func() { _ = other.Close() })
		return other
	}
	t.Fatalf("SecondClient: unexpected client type %T", client)
	return nil
}

// testRunID tells this test binary's keys from any other run's on a
// long-lived server (a developer's cluster).
var testRunID = func() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}()

var testPrefixSeq atomic.Int64

// testKeyPrefix returns a key prefix that no other test uses, and deletes
// the keys under it when the test ends. It never flushes a database.
func testKeyPrefix(t *testing.T, client redis.UniversalClient) string {
	prefix := fmt.Sprintf("idemtest:%s:%d:", testRunID, testPrefixSeq.Add(1))
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = ForEachKey(ctx, client, prefix, func(ctx context.Context, c redis.Cmdable, key string) error {
			return c.Del(ctx, key).Err()
		})
	})
	return prefix
}

// ttlAdvancer moves time forward by d for the keys under prefix: it takes d
// off each key's remaining PTTL and deletes the keys whose time runs out.
// For keys that expire through PX, as every record does, that is the same
// as d passing. Each key is moved by one script, so a store call that
// renews the key at the same moment is never undone.
func ttlAdvancer(t *testing.T, client redis.UniversalClient, prefix string) func(time.Duration) {
	return func(d time.Duration) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		err := ForEachKey(ctx, client, prefix, func(ctx context.Context, c redis.Cmdable, key string) error {
			return advanceScript.Run(ctx, c, []string{key}, d.Milliseconds()).Err()
		})
		require.NoError(t, err, "advancing time on Redis")
	}
}

// advanceScript takes ARGV[1] ms off the PTTL of KEYS[1], deleting the key
// when it runs out; a key without expiry is left alone.
var advanceScript = redis.NewScript(`
local left = redis.call('PTTL', KEYS[1])
if left < 0 then
  return 0
end
left = left - tonumber(ARGV[1])
if left > 0 then
  redis.call('PEXPIRE', KEYS[1], left)
else
  redis.call('DEL', KEYS[1])
end
return 1
`)

// ForEachKey calls fn for every key under prefix, on every master of a
// cluster. prefix must hold no glob characters.
func ForEachKey(ctx context.Context, client redis.UniversalClient, prefix string, fn func(context.Context, redis.Cmdable, string) error) error {
	scan := func(ctx context.Context, c redis.Cmdable) error {
		var keys []string
		iter := c.Scan(ctx, 0, prefix+"*", 1000).Iterator()
		for iter.Next(ctx) {
			keys = append(keys, iter.Val())
		}
		if err := iter.Err(); err != nil {
			return err
		}
		for _, k := range keys {
			if err := fn(ctx, c, k); err != nil {
				return err
			}
		}
		return nil
	}
	if cc, ok := client.(*redis.ClusterClient); ok {
		return cc.ForEachMaster(ctx, func(ctx context.Context, node *redis.Client) error { return scan(ctx, node) })
	}
	return scan(ctx, client)
}

// Server is a throwaway redis-server on a free loopback port, with
// nothing saved to disk. A watchdog shell ([Watchdog]) runs it and kills it as soon as
// the pipe on its stdin closes, which happens when Stop is called or when
// the test binary exits for any reason, so no server outlives its tests.
type Server struct {
	Addr  string // host:port
	Port  int
	Dir   string
	rmDir bool // the watchdog removes Dir when the server stops

	mu    sync.Mutex
	cmd   *exec.Cmd
	guard *os.File // write end of the watchdog's stdin
}

// StartServer starts a redis-server for this test alone, stopped when
// the test ends. It skips the test when redis-server is not on PATH.
func StartServer(t testing.TB) *Server {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Skip("redis-server is not on PATH: this test needs a real Redis (miniredis lacks it)")
	}
	srv, err := newServer(t.TempDir(), false)
	require.NoError(t, err)
	t.Cleanup(srv.Stop)
	return srv
}

var sharedRedis struct {
	once sync.Once
	srv  *Server
	err  error
}

// sharedServer returns the redis-server that this test binary's
// shared suites use, started on first use and stopped when the binary
// exits. Tests on it keep to their own key prefix.
func sharedServer(t *testing.T) *Server {
	t.Helper()
	sharedRedis.once.Do(func() {
		dir, err := os.MkdirTemp("", "idem-redis-")
		if err != nil {
			sharedRedis.err = err
			return
		}
		sharedRedis.srv, sharedRedis.err = newServer(dir, true)
	})
	require.NoError(t, sharedRedis.err, "starting the shared redis-server")
	return sharedRedis.srv
}

// newServer starts a redis-server with its files in dir, on a free
// port (trying a few, in case another process takes the port first).
func newServer(dir string, rmDir bool) (*Server, error) {
	var err error
	for range 3 {
		var port int
		if port, err = FreePort(); err != nil {
			continue
		}
		srv := &Server{Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), Port: port, Dir: dir, rmDir: rmDir}
		if err = srv.Start(); err == nil {
			return srv, nil
		}
	}
	return nil, err
}

// FreePort returns a loopback TCP port that nothing listened on a moment
// ago.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// Watchdog runs redis-server with the arguments after $1 and kills it once
// its stdin reaches end of file; then removes the directory $1, if any.
const Watchdog = `dir=$1; shift
redis-server "$@" &
pid=$!
read -r _
kill "$pid" 2>/dev/null
wait "$pid"
if [ -n "$dir" ]; then rm -rf "$dir"; fi
`

// Start starts the server on its port and waits until it answers PING. It
// is used again after Stop to restart the server on the same port.
func (s *Server) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		return errors.New("redis-server already running")
	}
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	rmDir := ""
	if s.rmDir {
		rmDir = s.Dir
	}
	logFile := filepath.Join(s.Dir, fmt.Sprintf("redis-%d.log", s.Port))
	cmd := exec.Command("sh", "-c", Watchdog, "sh", rmDir,
		"--port", strconv.Itoa(s.Port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--daemonize", "no",
		"--dir", s.Dir, "--logfile", logFile)
	cmd.Stdin = r
	if err := cmd.Start(); err != nil {
		r.Close()
		w.Close()
		return err
	}
	r.Close() // the Watchdog has its copy
	s.cmd, s.guard = cmd, w
	if err := WaitForPing(s.Addr, 10*time.Second); err != nil {
		s.stopLocked()
		logged, _ := os.ReadFile(logFile)
		return fmt.Errorf("redis-server on %s: %w\n%s", s.Addr, err, logged)
	}
	return nil
}

// Stop stops the server (it may be started again). It is safe to call
// more than once.
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stopLocked()
}

func (s *Server) stopLocked() {
	if s.cmd == nil {
		return
	}
	_ = s.guard.Close() // the Watchdog kills redis-server and exits
	_ = s.cmd.Wait()
	s.cmd, s.guard = nil, nil
}

// WaitForPing polls addr with a raw PING until it answers +PONG.
func WaitForPing(addr string, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	var err error
	for time.Now().Before(deadline) {
		if err = ping(addr); err == nil {
			return nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	return fmt.Errorf("no PONG within %v: %w", limit, err)
}

func ping(addr string) error {
	conn, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(time.Second))
	if _, err := conn.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return err
	}
	if line != "+PONG\r\n" {
		return fmt.Errorf("PING answered %q", line)
	}
	return nil
}
