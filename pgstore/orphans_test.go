package pgstore_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	idem "github.com/ginidem/idempotency"
	"github.com/ginidem/idempotency/internal/pgtest"
	"github.com/ginidem/idempotency/pgstore"
)

// stallProxy forwards TCP connections to a Postgres server and can stall
// the server's replies: a network, or a synchronous commit, that answers
// after the client's deadline.
type stallProxy struct {
	ln      net.Listener
	target  string
	mu      sync.Mutex
	stalled bool
	resume  chan struct{} // closed when the replies flow again
	open    []net.Conn
	conns   sync.WaitGroup
}

func newStallProxy(t *testing.T, target string) *stallProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	p := &stallProxy{ln: ln, target: target, resume: make(chan struct{})}
	close(p.resume)
	t.Cleanup(p.close)
	p.conns.Add(1)
	go func() {
		defer p.conns.Done()
		for {
			client, err := ln.Accept()
			if err != nil {
				return
			}
			p.mu.Lock()
			p.open = append(p.open, client)
			p.mu.Unlock()
			p.conns.Add(1)
			go func() {
				defer p.conns.Done()
				p.serve(client)
			}()
		}
	}()
	return p
}

// close stops the proxy and every connection through it, and waits for
// its goroutines.
func (p *stallProxy) close() {
	p.ln.Close()
	p.flow()
	p.mu.Lock()
	for _, c := range p.open {
		c.Close()
	}
	p.mu.Unlock()
	p.conns.Wait()
}

// serve forwards one connection until either side closes it.
func (p *stallProxy) serve(client net.Conn) {
	defer client.Close()
	server, err := net.Dial("tcp", p.target)
	if err != nil {
		return
	}
	defer server.Close()
	go func() {
		_, _ = io.Copy(server, client)
		server.Close()
	}()
	buf := make([]byte, 32<<10)
	for {
		n, err := server.Read(buf)
		if n > 0 {
			<-p.gate()
			if _, werr := client.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// gate is closed while replies flow.
func (p *stallProxy) gate() chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.resume
}

// stall holds every reply from now on, until flow.
func (p *stallProxy) stall() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.stalled {
		p.stalled, p.resume = true, make(chan struct{})
	}
}

// flow lets the replies through again.
func (p *stallProxy) flow() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stalled {
		p.stalled = false
		close(p.resume)
	}
}

// dsn is db's connection string through the proxy.
func (p *stallProxy) dsn(t *testing.T, db *pgtest.DB) string {
	u, err := url.Parse(db.DSN)
	require.NoError(t, err, "pgtest DSNs are URLs")
	u.Host = p.ln.Addr().String()
	return u.String()
}

// TestSpec22_AnAcquisitionCommittedAfterItsDeadlineIsReleased: Postgres
// commits an acquisition whose reply arrives after the store timeout. The
// client gets 503, and the in-flight row it left is released as soon as
// Postgres answers again, instead of locking the key for a whole lease:
// the retry runs within a second of the database's return.
func TestSpec22_AnAcquisitionCommittedAfterItsDeadlineIsReleased(t *testing.T) {
	db := pgtest.NewDB(t)
	db.Exec(t, ordersSchema)
	proxy := newStallProxy(t, pgHost(t, db))
	cfg, err := pgxpool.ParseConfig(proxy.dsn(t, db))
	require.NoError(t, err)
	cfg.MaxConns = 1 // one connection, on which the statements are already prepared when the replies stall
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	store := newStore(t, &pgtest.DB{Pool: pool, DSN: db.DSN, Schema: db.Schema})
	var runs atomic.Int32
	r := gin.New()
	r.POST("/orders", idem.New(idem.WithStore(store), idem.WithStoreTimeout(300*time.Millisecond),
		idem.WithCircuitBreaker(0, 0)), orderHandler(pool, &runs, nil))
	url := serve(t, r).URL + "/orders"

	require.Equal(t, http.StatusCreated, send(url, key2, "{}").status, "a first request prepares the statements")
	proxy.stall()
	res := send(url, key1, "{}")
	problem(t, res, http.StatusServiceUnavailable)
	assert.Equal(t, 1, db.Count(t, "idempotency_records WHERE state = 1"), "the acquisition committed all the same")
	proxy.flow()
	require.Eventually(t, func() bool { return db.Count(t, "idempotency_records WHERE state = 1") == 0 }, 5*time.Second, 10*time.Millisecond,
		"the orphaned acquisition is released once Postgres answers")
	res = send(url, key1, "{}")
	require.Equal(t, http.StatusCreated, res.status, res.body)
	assert.Equal(t, int32(2), runs.Load())
}

// pgHost is the host:port of db's server.
func pgHost(t *testing.T, db *pgtest.DB) string {
	u, err := url.Parse(db.DSN)
	require.NoError(t, err, "pgtest DSNs are URLs")
	return u.Host
}

// TestSpec22_AReleaseDuringAnOutageIsRetried: the handler answers 500
// while Postgres does not answer, so the release of its key fails. It is
// retried in the background, and once Postgres answers again the key is
// free within seconds: the retry runs, instead of 409 for a whole lease.
func TestSpec22_AReleaseDuringAnOutageIsRetried(t *testing.T) {
	db := pgtest.NewDB(t)
	db.Exec(t, ordersSchema)
	proxy := newStallProxy(t, pgHost(t, db))
	pool, err := pgxpool.New(context.Background(), proxy.dsn(t, db))
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	store := newStore(t, &pgtest.DB{Pool: pool, DSN: db.DSN, Schema: db.Schema})
	var fail atomic.Bool
	fail.Store(true)
	var runs atomic.Int32
	inner := orderHandler(pool, &runs, nil)
	r := gin.New()
	r.POST("/orders", idem.New(idem.WithStore(store), idem.WithStoreTimeout(300*time.Millisecond),
		idem.WithCircuitBreaker(0, 0)), func(c *gin.Context) {
		if fail.Load() {
			runs.Add(1)
			proxy.stall() // the database stops answering while the handler fails
			c.String(http.StatusBadGateway, "downstream failed")
			return
		}
		inner(c)
	})
	url := serve(t, r).URL + "/orders"

	res := send(url, key1, "{}")
	require.Equal(t, http.StatusBadGateway, res.status, res.body)
	assert.Equal(t, 1, db.Count(t, "idempotency_records WHERE state = 1"), "the release did not reach Postgres")
	fail.Store(false)
	proxy.flow()
	require.Eventually(t, func() bool { return db.Count(t, "idempotency_records") == 0 }, 5*time.Second, 10*time.Millisecond,
		"the release is retried once Postgres answers")
	res = send(url, key1, "{}")
	require.Equal(t, http.StatusCreated, res.status, res.body)
	assert.Equal(t, int32(2), runs.Load())
}

// TestSpec22_NoGoroutineOutlivesThePostgresWork: keyed requests that
// commit, release, stream past the cap, and leave an orphaned acquisition
// and a failed release behind during an outage; once Postgres answers, the
// pool is closed and the server stopped, no goroutine of the middleware or
// the store is left.
func TestSpec22_NoGoroutineOutlivesThePostgresWork(t *testing.T) {
	db := pgtest.NewDB(t)
	db.Exec(t, ordersSchema)
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	proxy := newStallProxy(t, pgHost(t, db))
	cfg, err := pgxpool.ParseConfig(proxy.dsn(t, db))
	require.NoError(t, err)
	cfg.MaxConns = 1
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	require.NoError(t, err)
	defer pool.Close()
	store := newStore(t, &pgtest.DB{Pool: pool, DSN: db.DSN, Schema: db.Schema})
	var runs atomic.Int32
	inner := orderHandler(pool, &runs, nil)
	r := gin.New()
	r.POST("/orders", idem.New(idem.WithStore(store), idem.WithStoreTimeout(300*time.Millisecond), idem.WithLease(time.Second),
		idem.WithCircuitBreaker(0, 0), idem.WithMaxResponseBytes(1024)), func(c *gin.Context) {
		switch c.Query("do") {
		case "fail":
			proxy.stall()
			c.String(http.StatusBadGateway, "failed")
		case "stream":
			_, _ = pgstore.Tx(c).Exec(c.Request.Context(), "INSERT INTO orders (item) VALUES ('x')")
			c.String(http.StatusCreated, strings.Repeat("x", 4096))
		default:
			inner(c)
		}
	})
	srv := httptest.NewServer(r)
	defer srv.Close()
	url := srv.URL + "/orders"

	require.Equal(t, http.StatusCreated, send(url, keyN(1), "{}").status)
	require.Equal(t, http.StatusCreated, send(url+"?do=stream", keyN(2), "{}").status)
	require.Equal(t, http.StatusBadGateway, send(url+"?do=fail", keyN(3), "{}").status) // a release left to retry
	problem(t, send(url, keyN(4), "{}"), http.StatusServiceUnavailable)                 // no connection to be had
	proxy.flow()
	require.Eventually(t, func() bool { return db.Count(t, "idempotency_records WHERE state = 1") == 0 }, 5*time.Second, 10*time.Millisecond)
	srv.Close()
	pool.Close()
	proxy.close()
	http.DefaultClient.CloseIdleConnections()
}
