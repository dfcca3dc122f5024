package idempotency_test

import (
	"bufio"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	idem "github.com/ginidem/idempotency"
	"github.com/ginidem/idempotency/internal/suite"
)

// serve runs handler behind the middleware at POST /x on a real server.
func serve(t *testing.T, handler gin.HandlerFunc, opts ...idem.Option) *httptest.Server {
	t.Helper()
	r := gin.New()
	r.POST("/x", idem.New(opts...), handler)
	srv := httptest.NewServer(r)
	t.Cleanup(srv.Close)
	return srv
}

func postKey(t *testing.T, srv *httptest.Server, key string) *http.Response {
	t.Helper()
	hr, err := http.NewRequest(http.MethodPost, srv.URL+"/x", strings.NewReader("body"))
	require.NoError(t, err)
	hr.Header.Set("Idempotency-Key", key)
	hr.Header.Set("Authorization", suite.DefaultAuth)
	res, err := srv.Client().Do(hr)
	require.NoError(t, err)
	t.Cleanup(func() { res.Body.Close() })
	return res
}

func readAll(t *testing.T, res *http.Response) string {
	t.Helper()
	b, err := io.ReadAll(res.Body)
	require.NoError(t, err)
	return string(b)
}

// TestSpec11_WriterKeepsGinCapabilities: the recorder is a full
// gin.ResponseWriter; Status, Size, Written and WriteHeaderNow behave as
// without the middleware, and http.ResponseController reaches the
// connection through Unwrap.
func TestSpec11_WriterKeepsGinCapabilities(t *testing.T) {
	srv := serve(t, func(c *gin.Context) {
		w := c.Writer
		assert.False(t, w.Written())
		c.Status(http.StatusAccepted)
		assert.Equal(t, http.StatusAccepted, w.Status())
		w.WriteHeaderNow()
		assert.True(t, w.Written())
		n, err := w.WriteString("hello")
		assert.NoError(t, err)
		assert.Equal(t, 5, n)
		assert.Equal(t, 5, w.Size())
		assert.NotNil(t, w.CloseNotify())
		_, isHijacker := w.(http.Hijacker)
		_, isFlusher := w.(http.Flusher)
		assert.True(t, isHijacker && isFlusher)
		assert.NoError(t, http.NewResponseController(w).SetWriteDeadline(time.Now().Add(time.Minute)))
	})
	first := postKey(t, srv, suite.Key1)
	assert.Equal(t, http.StatusAccepted, first.StatusCode)
	assert.Equal(t, "hello", readAll(t, first))
	replay := postKey(t, srv, suite.Key1)
	assert.Equal(t, http.StatusAccepted, replay.StatusCode)
	assert.Equal(t, "hello", readAll(t, replay))
	assert.Equal(t, "true", replay.Header.Get("Idempotent-Replayed"))
}

// TestSpec14_StreamIsNotBuffered: the client reads the first event while the
// handler is still running, so nothing waits in a buffer.
func TestSpec14_StreamIsNotBuffered(t *testing.T) {
	gate := make(chan struct{})
	srv := serve(t, func(c *gin.Context) {
		c.Header("Content-Type", "text/event-stream")
		c.Header("Location", "/streams/7")
		io.WriteString(c.Writer, "data: first\n\n")
		http.NewResponseController(c.Writer).Flush()
		<-gate
		io.WriteString(c.Writer, "data: second\n\n")
	})
	res := postKey(t, srv, suite.Key1)
	body := bufio.NewReader(res.Body)
	line, err := body.ReadString('\n')
	require.NoError(t, err)
	assert.Equal(t, "data: first\n", line, "read before the handler finished")
	close(gate)
	_, err = io.Copy(io.Discard, body) // the end of the stream: the record is stored by now
	require.NoError(t, err)
	res.Body.Close()
	dup := postKey(t, srv, suite.Key1)
	assert.Equal(t, http.StatusConflict, dup.StatusCode)
	assert.Equal(t, "/streams/7", dup.Header.Get("Location"))
}

// TestSpec14_HijackedIsKeptWithoutBody: a hijacked connection is the
// handler's; a duplicate gets 409 with the Location set before hijacking.
// The client can read the hijacked answer before the middleware stores the
// record, so the duplicate waits for the completion event.
func TestSpec14_HijackedIsKeptWithoutBody(t *testing.T) {
	var calls int
	ev := suite.NewEvents()
	srv := serve(t, func(c *gin.Context) {
		calls++
		c.Header("Location", "/ws/1")
		conn, buf, err := c.Writer.Hijack()
		require.NoError(t, err)
		defer conn.Close()
		buf.WriteString("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
		buf.Flush()
	}, idem.WithEventHook(ev.Hook))
	first := postKey(t, srv, suite.Key1)
	assert.Equal(t, "ok", readAll(t, first))
	ev.WaitFor(t, idem.EventCompleted)
	dup := postKey(t, srv, suite.Key1)
	assert.Equal(t, http.StatusConflict, dup.StatusCode)
	assert.Equal(t, "/ws/1", dup.Header.Get("Location"))
	assert.Equal(t, 1, calls)
}

// TestSpec11_PusherOverHTTP2: the recorder passes Gin's Pusher through.
func TestSpec11_PusherOverHTTP2(t *testing.T) {
	r := gin.New()
	var pusher http.Pusher
	r.POST("/x", idem.New(), func(c *gin.Context) {
		pusher = c.Writer.Pusher()
		c.String(http.StatusOK, c.Request.Proto)
	})
	srv := httptest.NewUnstartedServer(r)
	srv.EnableHTTP2 = true
	srv.StartTLS()
	t.Cleanup(srv.Close)
	res := postKey(t, srv, suite.Key1)
	assert.Equal(t, "HTTP/2.0", readAll(t, res))
	assert.NotNil(t, pusher)
}

// TestSpec11_HeadersSnapshotWhenWritten: header edits after the status was
// sent are not recorded, as in net/http/httptest.
func TestSpec11_HeadersSnapshotWhenWritten(t *testing.T) {
	srv := serve(t, func(c *gin.Context) {
		c.Header("ETag", `"v1"`)
		c.String(http.StatusOK, "a")
		c.Header("ETag", `"v2"`)
		c.Header("Link", "</late>")
	})
	assert.Equal(t, `"v1"`, postKey(t, srv, suite.Key1).Header.Get("ETag"))
	replay := postKey(t, srv, suite.Key1)
	assert.Equal(t, `"v1"`, replay.Header.Get("ETag"))
	assert.Empty(t, replay.Header.Get("Link"))
}

// TestSpec31_RefusedHijackIsReplayed: on a TxStore the response is held for
// the commit, so a hijack is refused. A handler that then answers as usual
// (a WebSocket endpoint's plain HTTP fallback) has that answer kept and
// replayed, like any other: the refused hijack took nothing over.
func TestSpec31_RefusedHijackIsReplayed(t *testing.T) {
	store := &memoryTxStore{MemoryStore: idem.NewMemoryStore()}
	s := suite.Mount(t, func(r *gin.Engine, s *suite.Served) {
		r.Use(idem.New(idem.WithStore(store)))
		r.POST("/ws", func(c *gin.Context) {
			s.Calls.Add(1)
			conn, _, err := c.Writer.Hijack()
			if !assert.Error(t, err, "a held response cannot be hijacked") {
				conn.Close()
				return
			}
			c.Header("Location", "/orders/1")
			c.String(http.StatusCreated, "created without a WebSocket")
		})
	})
	auth := "Authorization: Bearer u"
	first := s.Send(s.Client, "/ws", suite.Key1, "x", auth)
	assert.Equal(t, http.StatusCreated, first.Status)
	assert.Equal(t, "created without a WebSocket", first.Body)
	dup := s.Send(s.Client, "/ws", suite.Key1, "x", auth)
	assert.True(t, dup.Replayed(), "the fallback answer is replayed, not refused as a stream: %d %s", dup.Status, dup.Body)
	assert.Equal(t, http.StatusCreated, dup.Status)
	assert.Equal(t, first.Body, dup.Body)
	assert.Equal(t, "/orders/1", dup.Header.Get("Location"))
	assert.Equal(t, int32(1), s.Calls.Load())
}
