package idempotency_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"runtime/metrics"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/google/uuid"
	"github.com/redis/go-redis/v9"

	idem "github.com/ginidem/idempotency"
	"github.com/ginidem/idempotency/internal/idemtest"
)

// The benchmarks compare the middleware with a bare Gin handler in the same
// run: read `ns/op` and `allocs/op` as ratios to BenchmarkBareHandler.
//
//	go test -run '^$' -bench . -benchmem

// order is the ~200-byte JSON payload of the benchmark handler.
type order struct {
	Customer string   `json:"customer"`
	Items    []string `json:"items"`
	Amount   int      `json:"amount"`
	Currency string   `json:"currency"`
	Note     string   `json:"note"`
}

var orderBody = []byte(`{"customer":"cus_8f3a9c2d1e","items":["sku-1001","sku-2002","sku-3003"],"amount":12999,"currency":"EUR","note":"leave at the door, ring twice; gift wrap the second item please, thank you"}`)

// benchEngine serves a small JSON handler, behind mw when it is not nil.
func benchEngine(mw gin.HandlerFunc) *gin.Engine {
	r := gin.New()
	if mw != nil {
		r.Use(mw)
	}
	var n atomic.Int64
	r.POST("/orders", func(c *gin.Context) {
		var o order
		if err := c.ShouldBindJSON(&o); err != nil {
			c.AbortWithStatus(http.StatusBadRequest)
			return
		}
		id := n.Add(1)
		c.Header("Location", "/orders/"+strconv.FormatInt(id, 10))
		c.JSON(http.StatusCreated, gin.H{"id": id, "customer": o.Customer, "items": o.Items, "amount": o.Amount, "currency": o.Currency, "status": "accepted"})
	})
	return r
}

// serveBench sends b.N requests; key returns the Idempotency-Key header
// value of request i (nil for none), allocated before the timer starts.
func serveBench(b *testing.B, r http.Handler, key func(i int) []string) {
	b.Helper()
	w := newBenchWriter()
	req := httptest.NewRequest(http.MethodPost, "/orders", nil)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer alice")
	body := bytes.NewReader(orderBody)
	b.ReportAllocs()
	b.SetBytes(int64(len(orderBody)))
	gc := gcSeconds()
	b.ResetTimer()
	cpu := idemtest.CPUTime()
	defer func() {
		b.ReportMetric((gcSeconds()-gc)*1e9/float64(b.N), "gc-ns/op")
		b.ReportMetric(float64(idemtest.CPUTime()-cpu)/float64(b.N), "cpu-ns/op")
	}()
	for i := 0; i < b.N; i++ {
		body.Reset(orderBody)
		req.Body = readCloser{body}
		req.ContentLength = int64(len(orderBody))
		if k := key(i); k != nil {
			req.Header["Idempotency-Key"] = k
		}
		w.reset()
		r.ServeHTTP(w, req)
		if w.Code >= 400 && w.Code != http.StatusConflict {
			b.Fatalf("status %d: %s", w.Code, w.Body.String())
		}
	}
}

// gcSeconds is the CPU time the garbage collector has taken so far, as
// the runtime estimates it: what gc-ns/op reports per request.
func gcSeconds() float64 {
	sample := []metrics.Sample{{Name: "/cpu/classes/gc/total:cpu-seconds"}}
	metrics.Read(sample)
	return sample[0].Value.Float64()
}

// benchWriter is a reusable http.ResponseWriter: unlike an
// httptest.ResponseRecorder it records the status of every request it is
// reset for, so a benchmark can check each answer without allocating.
type benchWriter struct {
	header http.Header
	Code   int
	Body   bytes.Buffer
}

func newBenchWriter() *benchWriter { return &benchWriter{header: http.Header{}} }

func (w *benchWriter) Header() http.Header { return w.header }
func (w *benchWriter) WriteHeader(code int) {
	if w.Code == 0 {
		w.Code = code
	}
}
func (w *benchWriter) Write(b []byte) (int, error) {
	w.WriteHeader(http.StatusOK)
	return w.Body.Write(b)
}
func (w *benchWriter) reset() {
	clear(w.header)
	w.Code = 0
	w.Body.Reset()
}

type readCloser struct{ *bytes.Reader }

func (readCloser) Close() error { return nil }

func noKey(int) []string { return nil }

// sameKey returns a key function that sends one key every time.
func sameKey() func(int) []string {
	key := []string{uuid.NewString()}
	return func(int) []string { return key }
}

// newKeys returns a key function with a fresh UUID v4 per request. The keys
// are slices of one string and share one header slot, so that the
// benchmark itself retains no per-request objects for the garbage collector
// to scan: what the collector does is the middleware's.
func newKeys(b *testing.B) func(int) []string {
	key, slot := uuidKeys(b.N), make([]string, 1)
	return func(i int) []string {
		slot[0] = key(i)
		return slot
	}
}

// uuidKeys returns n UUID v4 keys, slices of one string, by index; safe
// for concurrent use.
func uuidKeys(n int) func(int) string {
	var all strings.Builder
	all.Grow(n * 36)
	for range n {
		all.WriteString(uuid.NewString())
	}
	keys := all.String()
	return func(i int) string { return keys[i*36 : (i+1)*36] }
}

func BenchmarkBareHandler(b *testing.B) {
	serveBench(b, benchEngine(nil), noKey)
}

func BenchmarkNoKey(b *testing.B) {
	serveBench(b, benchEngine(idem.New()), noKey)
}

func BenchmarkNewKeyMemory(b *testing.B) {
	r := benchEngine(idem.New(idem.WithStore(idem.NewMemoryStore(idem.WithMaxEntries(1 << 22)))))
	serveBench(b, r, newKeys(b))
}

func BenchmarkReplayMemory(b *testing.B) {
	serveBench(b, benchEngine(idem.New()), sameKey())
}

// redisBenchStore is a Redis store on a redis-server of the benchmark's
// own; the benchmark is skipped without redis-server.
func redisBenchStore(b *testing.B, opts ...idem.RedisStoreOption) idem.Store {
	store, _ := redisBench(b, opts...)
	return store
}

// redisBench is redisBenchStore, with a function that reports the CPU time
// per request the redis-server used while fn ran, as redis-cpu-ns/op.
func redisBench(b *testing.B, opts ...idem.RedisStoreOption) (idem.Store, func(fn func())) {
	return redisBenchWith(b, nil, nil, opts...)
}

// redisBenchWith is redisBench with client options of the benchmark's own,
// set by configure over the defaults.
func redisBenchWith(b *testing.B, configure func(*redis.Options), wrap func(*redis.Client) (redis.UniversalClient, error), opts ...idem.RedisStoreOption) (idem.Store, func(fn func())) {
	srv := startRedisServer(b)
	clientOpts := &redis.Options{Addr: srv.addr, ContextTimeoutEnabled: true}
	if configure != nil {
		configure(clientOpts)
	}
	client := redis.NewClient(clientOpts)
	b.Cleanup(func() { client.Close() })
	var storeClient redis.UniversalClient = client
	if wrap != nil {
		var err error
		if storeClient, err = wrap(client); err != nil {
			b.Fatal(err)
		}
	}
	info, err := client.Info(context.Background(), "server").Result()
	if err != nil {
		b.Fatal(err)
	}
	var pid int
	for line := range strings.Lines(info) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "process_id:"); ok {
			pid, _ = strconv.Atoi(v)
		}
	}
	measure := func(fn func()) {
		before := processCPU(b, pid)
		fn()
		b.ReportMetric(float64(processCPU(b, pid)-before)/float64(b.N), "redis-cpu-ns/op")
	}
	return idem.NewRedisStore(storeClient, opts...), measure
}

// processCPU is the CPU time, user and system, that process pid has used
// so far, from /proc (at the kernel's clock tick: run long enough).
func processCPU(b *testing.B, pid int) time.Duration {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Skipf("no CPU time for redis-server: %v", err)
	}
	// The fields after the command name, which is in parentheses.
	fields := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
	utime, _ := strconv.ParseInt(fields[11], 10, 64)
	stime, _ := strconv.ParseInt(fields[12], 10, 64)
	const tick = 10 * time.Millisecond // USER_HZ is 100 on Linux
	return time.Duration(utime+stime) * tick
}

func BenchmarkNewKeyRedis(b *testing.B) {
	store, measure := redisBench(b)
	r := benchEngine(idem.New(idem.WithStore(store)))
	keys := newKeys(b)
	measure(func() { serveBench(b, r, keys) })
}

// BenchmarkNewKeyRedisParallel sends new keys from 16 goroutines at once,
// as bench.sh's wrk -c16 does: cpu-ns/op and redis-cpu-ns/op are the
// figures to compare.
func BenchmarkNewKeyRedisParallel(b *testing.B) {
	store, measure := redisBench(b)
	newKeysParallel(b, store, measure)
}

// BenchmarkNewKeyRedisClient is BenchmarkNewKeyRedisParallel with go-redis
// options that a service may set on the client it gives the store.
func BenchmarkNewKeyRedisClient(b *testing.B) {
	for _, c := range []struct {
		name      string
		configure func(*redis.Options)
		wrap      func(*redis.Client) (redis.UniversalClient, error)
	}{
		{"default", nil, nil},
		{"resp2", func(o *redis.Options) { o.Protocol = 2 }, nil},
		{"buffers-4KiB", func(o *redis.Options) { o.ReadBufferSize, o.WriteBufferSize = 4096, 4096 }, nil},
		{"pool-16", func(o *redis.Options) { o.PoolSize = 16 }, nil},
		{"no-health-check", func(o *redis.Options) { o.Dialer = dialWithoutHealthCheck }, nil},
		// go-redis' autopipelining (experimental in v9.23): concurrent
		// commands share one write and one read.
		{"autopipeline", nil, func(c *redis.Client) (redis.UniversalClient, error) { return c.AutoPipeline() }},
	} {
		b.Run(c.name, func(b *testing.B) {
			store, measure := redisBenchWith(b, c.configure, c.wrap)
			newKeysParallel(b, store, measure)
		})
	}
}

// dialWithoutHealthCheck dials TCP like go-redis and hides the connection's
// SyscallConn, so that go-redis skips the health check it makes each time
// it takes a connection from its pool (a MSG_PEEK recvfrom and two deadline
// resets).
func dialWithoutHealthCheck(ctx context.Context, network, addr string) (net.Conn, error) {
	d := net.Dialer{Timeout: 5 * time.Second, KeepAlive: 5 * time.Minute}
	conn, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	return struct{ net.Conn }{conn}, nil
}

// newKeysParallel sends b.N new keys through store from 16 goroutines.
func newKeysParallel(b *testing.B, store idem.Store, measure func(func())) {
	r := benchEngine(idem.New(idem.WithStore(store)))
	key := uuidKeys(b.N)
	var next atomic.Int64
	b.SetParallelism(max(16/runtime.GOMAXPROCS(0), 1))
	b.ReportAllocs()
	b.ResetTimer()
	cpu := idemtest.CPUTime()
	measure(func() {
		b.RunParallel(func(pb *testing.PB) {
			w := newBenchWriter()
			req := httptest.NewRequest(http.MethodPost, "/orders", nil)
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("Authorization", "Bearer alice")
			body := bytes.NewReader(orderBody)
			slot := make([]string, 1)
			for pb.Next() {
				slot[0] = key(int(next.Add(1) - 1))
				body.Reset(orderBody)
				req.Body = readCloser{body}
				req.ContentLength = int64(len(orderBody))
				req.Header["Idempotency-Key"] = slot
				w.reset()
				r.ServeHTTP(w, req)
				if w.Code != http.StatusCreated {
					b.Errorf("status %d: %s", w.Code, w.Body.String())
					return
				}
			}
		})
	})
	b.ReportMetric(float64(idemtest.CPUTime()-cpu)/float64(b.N), "cpu-ns/op")
}

func BenchmarkReplayRedis(b *testing.B) {
	b.Run("local-cache", func(b *testing.B) {
		serveBench(b, benchEngine(idem.New(idem.WithStore(redisBenchStore(b)))), sameKey())
	})
	b.Run("no-cache", func(b *testing.B) {
		store := redisBenchStore(b, idem.WithRedisLocalCache(0, 0))
		serveBench(b, benchEngine(idem.New(idem.WithStore(store))), sameKey())
	})
}

func BenchmarkInFlightConflictMemory(b *testing.B) {
	store := idem.NewMemoryStore()
	r := benchEngine(idem.New(idem.WithStore(store)))
	key := sameKey()
	// Hold the key: a first request whose handler never finishes is modelled
	// by acquiring the key in the store directly with the middleware's key.
	blocked := gin.New()
	entered, gate := make(chan struct{}), make(chan struct{})
	blocked.POST("/orders", idem.New(idem.WithStore(store)), func(c *gin.Context) {
		close(entered)
		<-gate
		c.Status(http.StatusCreated)
	})
	go func() {
		req := httptest.NewRequest(http.MethodPost, "/orders", bytes.NewReader(orderBody))
		req.Header.Set("Authorization", "Bearer alice")
		req.Header.Set("Content-Type", "application/json")
		req.Header["Idempotency-Key"] = key(0)
		blocked.ServeHTTP(httptest.NewRecorder(), req)
	}()
	<-entered
	defer close(gate)
	serveBench(b, r, key)
}

// Fingerprint policies over growing bodies, beside crypto/sha256 alone on
// the same bytes: MB/s is the figure to compare.
func BenchmarkFingerprint(b *testing.B) {
	for _, size := range []int{1 << 10, 64 << 10, 1 << 20} {
		body := jsonBody(size)
		b.Run(fmt.Sprintf("sha256-only/%s", sizeName(size)), func(b *testing.B) {
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				sha256.Sum256(body)
			}
		})
		for _, p := range []struct {
			name string
			part idem.FingerprintPart
		}{
			{"raw-body", idem.RawBody()},
			{"canonical-json", idem.CanonicalJSON()},
			{"json-fields", idem.JSONFields("customer", "amount")},
		} {
			b.Run(fmt.Sprintf("%s/%s", p.name, sizeName(size)), func(b *testing.B) {
				r := gin.New()
				r.POST("/orders", idem.New(idem.WithFingerprint(p.part), idem.WithMaxBodyBytes(2<<20)), func(c *gin.Context) {
					c.Status(http.StatusNoContent)
				})
				keys := newKeys(b)
				w := newBenchWriter()
				req := httptest.NewRequest(http.MethodPost, "/orders", nil)
				req.Header.Set("Authorization", "Bearer alice")
				reader := bytes.NewReader(body)
				b.SetBytes(int64(len(body)))
				b.ReportAllocs()
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					reader.Reset(body)
					req.Body = readCloser{reader}
					req.ContentLength = int64(len(body))
					req.Header["Idempotency-Key"] = keys(i)
					w.reset()
					r.ServeHTTP(w, req)
					if w.Code != http.StatusNoContent {
						b.Fatalf("status %d: %s", w.Code, w.Body.String())
					}
				}
			})
		}
	}
}

// jsonBody is a JSON object of about size bytes.
func jsonBody(size int) []byte {
	filler := strings.Repeat("x", max(size-80, 1))
	b, _ := json.Marshal(map[string]any{"customer": "cus_1", "amount": 10, "filler": filler})
	return b
}

func sizeName(n int) string {
	if n >= 1<<20 {
		return fmt.Sprintf("%dMiB", n>>20)
	}
	return fmt.Sprintf("%dKiB", n>>10)
}

// BenchmarkMemoryStoreRetained keeps b.N completed records, each made as
// the middleware makes one (a fingerprint from a hasher, a header map
// shared with the response, a body buffer with spare capacity), and
// reports the heap objects and bytes each retained record costs: what the
// garbage collector marks on every cycle while the records live.
func BenchmarkMemoryStoreRetained(b *testing.B) {
	store := idem.NewMemoryStore(idem.WithMaxEntries(1<<22), idem.WithMaxBytes(1<<40))
	ctx := context.Background()
	keys := make([]string, b.N)
	for i := range keys {
		keys[i] = fmt.Sprintf("%064x", i)
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		claim := &idem.Record{Fingerprint: sha256.New().Sum(nil), Method: http.MethodPost, Path: "/orders/" + strconv.Itoa(i)}
		token, _, err := store.Acquire(ctx, keys[i], claim, time.Minute)
		if err != nil {
			b.Fatal(err)
		}
		body := append(make([]byte, 0, 512), `{"id":42,"customer":"cus_1","status":"accepted"}`...)
		rec := *claim
		rec.Status = http.StatusCreated
		rec.Header = http.Header{"Content-Type": {"application/json; charset=utf-8"}, "Location": {"/orders/" + strconv.Itoa(i)}}
		rec.Body = body
		if err := store.Complete(ctx, keys[i], token, &rec, time.Hour); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	runtime.GC()
	runtime.ReadMemStats(&after)
	b.ReportMetric(float64(int64(after.HeapObjects)-int64(before.HeapObjects))/float64(b.N), "objects/record")
	b.ReportMetric(float64(int64(after.HeapAlloc)-int64(before.HeapAlloc))/float64(b.N), "heap-B/record")
	runtime.KeepAlive(store)
}
