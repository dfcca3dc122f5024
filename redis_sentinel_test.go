package idempotency_test

import (
	"fmt"
	"io"
	"net"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/google/uuid"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	idem "github.com/ginidem/idempotency"
)

// sentinelSetup is a real master, two replicas and three Sentinels on free
// loopback ports, each a redis-server process killed with the test (or with
// the test binary, by Pdeathsig). Two replicas, so that after a failover the
// new master still has one to WAIT for.
type sentinelSetup struct {
	link         *replicationLink // between the master and its replicas
	master       *exec.Cmd
	replicas     []*exec.Cmd
	masterPort   int
	replicaPorts []string
	sentinels    []string // addresses
}

const sentinelMasterName = "idem-master"

// startProcess starts redis-server with args, logging to dir, and waits
// until addr answers PING.
func startProcess(t *testing.T, dir, name string, port int, args ...string) *exec.Cmd {
	t.Helper()
	args = append(args, "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--daemonize", "no",
		"--dir", dir, "--logfile", filepath.Join(dir, name+".log"))
	cmd := exec.Command("redis-server", args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGCONT)
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	addr := "127.0.0.1:" + strconv.Itoa(port)
	if err := waitForPing(addr, 10*time.Second); err != nil {
		log, _ := os.ReadFile(filepath.Join(dir, name+".log"))
		t.Fatalf("%s on %s: %v\n%s", name, addr, err, log)
	}
	return cmd
}

// startSentinelSetup starts the set-up, or skips when redis-server is
// missing (CI installs it, so there it always runs).
func startSentinelSetup(t *testing.T) *sentinelSetup {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Skip("redis-server is not on PATH: the Sentinel set-up needs real servers")
	}
	dir := t.TempDir()
	port := func() int {
		p, err := freePort()
		require.NoError(t, err)
		return p
	}
	s := &sentinelSetup{masterPort: port()}
	common := []string{"--save", "", "--appendonly", "no", "--repl-diskless-sync-delay", "0"}
	s.master = startProcess(t, dir, "master", s.masterPort, common...)
	s.link = newReplicationLink(t, "127.0.0.1:"+strconv.Itoa(s.masterPort))
	ctx := storeCtx(t)
	for i := range 2 {
		p := port()
		s.replicas = append(s.replicas, startProcess(t, dir, fmt.Sprintf("replica-%d", i), p,
			append(common, "--replicaof", "127.0.0.1", strconv.Itoa(s.link.port),
				"--replica-announce-ip", "127.0.0.1", "--replica-announce-port", strconv.Itoa(p))...))
		s.replicaPorts = append(s.replicaPorts, strconv.Itoa(p))
		replica := newRedisClient(t, "127.0.0.1:"+strconv.Itoa(p))
		require.Eventually(t, func() bool {
			info, _ := replica.Info(ctx, "replication").Result()
			return containsLine(info, "master_link_status:up")
		}, 10*time.Second, 20*time.Millisecond, "the replica syncs")
	}
	for i := range 3 {
		p := port()
		conf := filepath.Join(dir, fmt.Sprintf("sentinel-%d.conf", i))
		require.NoError(t, os.WriteFile(conf, []byte(fmt.Sprintf(
			"sentinel monitor %[1]s 127.0.0.1 %[2]d 2\n"+
				"sentinel down-after-milliseconds %[1]s 1000\n"+
				"sentinel failover-timeout %[1]s 5000\n"+
				"sentinel parallel-syncs %[1]s 1\n", sentinelMasterName, s.masterPort)), 0o644))
		startProcess(t, dir, fmt.Sprintf("sentinel-%d", i), p, conf, "--sentinel")
		s.sentinels = append(s.sentinels, "127.0.0.1:"+strconv.Itoa(p))
	}
	return s
}

func containsLine(text, line string) bool {
	for _, l := range splitLines(text) {
		if l == line {
			return true
		}
	}
	return false
}

func splitLines(s string) []string {
	var out []string
	start := 0
	for i := 0; i < len(s); i++ {
		if s[i] == '\n' {
			out = append(out, trimCR(s[start:i]))
			start = i + 1
		}
	}
	return append(out, trimCR(s[start:]))
}

func trimCR(s string) string {
	if len(s) > 0 && s[len(s)-1] == '\r' {
		return s[:len(s)-1]
	}
	return s
}

// failoverClient is the go-redis client a replica of the service uses.
func (s *sentinelSetup) failoverClient(t *testing.T) *redis.Client {
	c := redis.NewFailoverClient(&redis.FailoverOptions{
		MasterName: sentinelMasterName, SentinelAddrs: s.sentinels, ContextTimeoutEnabled: true,
		DialTimeout: 200 * time.Millisecond, ReadTimeout: time.Second, WriteTimeout: time.Second,
	})
	t.Cleanup(func() { c.Close() })
	return c
}

// failOver loses the writes the replicas have not received: the
// replication link drops the master's stream while load goes on, then the
// master is killed, and the Sentinels promote a replica.
func (s *sentinelSetup) failOver(t *testing.T, whileReplicasLag func()) {
	t.Helper()
	s.link.drop.Store(true)
	whileReplicasLag()
	require.NoError(t, s.master.Process.Kill())
	s.link.close()
	sentinel := redis.NewSentinelClient(&redis.Options{Addr: s.sentinels[0]})
	defer sentinel.Close()
	ctx := storeCtx(t)
	require.Eventually(t, func() bool {
		addr, err := sentinel.GetMasterAddrByName(ctx, sentinelMasterName).Result()
		return err == nil && len(addr) == 2 && slices.Contains(s.replicaPorts, addr[1])
	}, 30*time.Second, 50*time.Millisecond, "the Sentinels promote a replica")
}

// replicationLink is a TCP proxy the replicas reach their master through.
// While drop is set it swallows the master's replication stream, as a
// network partition would: the master has sent writes its replicas never
// get, and their acknowledgements stop there.
type replicationLink struct {
	port  int
	drop  atomic.Bool
	ln    net.Listener
	mu    sync.Mutex
	conns []net.Conn
}

func newReplicationLink(t *testing.T, master string) *replicationLink {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	l := &replicationLink{port: ln.Addr().(*net.TCPAddr).Port, ln: ln}
	t.Cleanup(l.close)
	go func() {
		for {
			down, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", master)
			if err != nil {
				down.Close()
				continue
			}
			l.mu.Lock()
			l.conns = append(l.conns, down, up)
			l.mu.Unlock()
			go io.Copy(up, down) // replica to master: commands and acknowledgements
			go func() {          // master to replica: the stream, unless dropped
				buf := make([]byte, 32<<10)
				for {
					n, err := up.Read(buf)
					if n > 0 && !l.drop.Load() {
						if _, werr := down.Write(buf[:n]); werr != nil {
							return
						}
					}
					if err != nil {
						down.Close()
						return
					}
				}
			}()
		}
	}()
	return l
}

func (l *replicationLink) close() {
	l.ln.Close()
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, c := range l.conns {
		c.Close()
	}
}

// failoverLoad runs workers that each create orders with fresh keys and
// retry every key until it succeeds, and counts the handler's runs per key.
type failoverLoad struct {
	mu       sync.Mutex
	runs     map[string]int
	answered atomic.Int64 // answers of any kind
	done     atomic.Int64 // keys that succeeded
	stop     chan struct{}
	wg       sync.WaitGroup
}

func (l *failoverLoad) start(t *testing.T, srv *httptest.Server, workers int) {
	hc := newHTTPClient(t)
	l.runs, l.stop = map[string]int{}, make(chan struct{})
	for range workers {
		l.wg.Go(func() {
			for {
				select {
				case <-l.stop:
					return
				default:
				}
				key := uuid.NewString()
				for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); {
					r := postOrder(hc, srv, key)
					l.answered.Add(1)
					if r.err == nil && r.status == 201 {
						l.done.Add(1)
						break
					}
					select { // pace the retries of a key that is in flight or unavailable
					case <-time.After(20 * time.Millisecond):
					case <-l.stop:
						if time.Now().After(deadline.Add(-20 * time.Second)) {
							return
						}
					}
				}
			}
		})
	}
}

// waitFor waits until n more answers of kind counter arrive.
func waitCount(t *testing.T, c *atomic.Int64, more int64, what string) {
	t.Helper()
	target := c.Load() + more
	require.Eventually(t, func() bool { return c.Load() >= target }, 60*time.Second, 10*time.Millisecond, what)
}

// retryAll sends every key once more, as a client whose answer was lost
// would, until it gets an answer that is not a 503 or an in-flight 409.
func (l *failoverLoad) retryAll(t *testing.T, srv *httptest.Server) {
	l.mu.Lock()
	keys := make(chan string, len(l.runs))
	for k := range l.runs {
		keys <- k
	}
	l.mu.Unlock()
	close(keys)
	hc := newHTTPClient(t)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for key := range keys {
				for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); {
					if r := postOrder(hc, srv, key); r.err == nil && r.status == 201 {
						break
					}
					<-time.After(20 * time.Millisecond) // pace the retries
				}
			}
		})
	}
	wg.Wait()
}

func (l *failoverLoad) duplicates() (keys, dup int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, n := range l.runs {
		if n > 1 {
			dup++
		}
	}
	return len(l.runs), dup
}

// TestSpec30_FailoverUnderLoad fails a master over to its replica under
// load, after the replica missed some writes, and counts the keys whose
// handler ran twice: with WithRedisWaitReplicas(1) none may, because no
// lease or record is acknowledged before the replica has it.
func TestSpec30_FailoverUnderLoad(t *testing.T) {
	for _, wait := range []bool{false, true} {
		name := "spec30/without WAIT"
		if wait {
			name = "spec30/with WAIT 1"
		}
		t.Run(name, func(t *testing.T) {
			setup := startSentinelSetup(t)
			var storeOpts []idem.RedisStoreOption
			if wait {
				storeOpts = append(storeOpts, idem.WithRedisWaitReplicas(1, 100*time.Millisecond))
			}
			load := &failoverLoad{}
			// Two instances of the service, each with its own client, store and
			// local cache: the load goes to one, the retries to the other.
			instance := func() *httptest.Server {
				r := gin.New()
				r.POST("/orders", idem.New(idem.WithStore(idem.NewRedisStore(setup.failoverClient(t), storeOpts...)),
					idem.WithCircuitBreaker(0, 0)), func(c *gin.Context) {
					key, _, _ := idem.Key(c)
					load.mu.Lock()
					load.runs[key]++
					load.mu.Unlock()
					c.JSON(201, gin.H{"key": key})
				})
				srv := httptest.NewServer(r)
				t.Cleanup(srv.Close)
				return srv
			}
			srv, other := instance(), instance()

			load.start(t, srv, 8)
			waitCount(t, &load.done, 100, "orders complete before the fault")
			setup.failOver(t, func() { waitCount(t, &load.answered, 200, "answers while the replicas lag") })
			waitCount(t, &load.done, 100, "orders complete after the failover")
			close(load.stop)
			load.wg.Wait()
			load.retryAll(t, other) // each answer may have been lost: every key is retried once more, elsewhere

			keys, dup := load.duplicates()
			t.Logf("%s: %d keys, %d ran twice", name, keys, dup)
			if wait {
				assert.Zero(t, dup, "no key runs twice when writes wait for the replica")
			}
		})
	}
}
