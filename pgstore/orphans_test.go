package pgstore_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	idem "github.com/ginidem/idempotency"
	"github.com/ginidem/idempotency/internal/pgtest"
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
}

func newStallProxy(t *testing.T, target string) *stallProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	p := &stallProxy{ln: ln, target: target, resume: make(chan struct{})}
	close(p.resume)
	var conns sync.WaitGroup
	t.Cleanup(func() {
		ln.Close()
		p.flow()
		conns.Wait()
	})
	go func() {
		for {
			client, err := ln.Accept()
			if err != nil {
				return
			}
			conns.Add(1)
			go func() {
				defer conns.Done()
				p.serve(client)
			}()
		}
	}()
	return p
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
