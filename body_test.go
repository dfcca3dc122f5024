package idempotency_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"

	"github.com/gin-gonic/gin"
	"github.com/google/uuid"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	idem "github.com/ginidem/idempotency"
)

// signalSecondRead wraps a body and reports when it is read a second time:
// the middleware has taken the first bytes and waits for more.
type signalSecondRead struct {
	io.ReadCloser
	reads   int
	waiting chan<- struct{}
}

func (r *signalSecondRead) Read(p []byte) (int, error) {
	if r.reads++; r.reads == 2 {
		r.waiting <- struct{}{}
	}
	return r.ReadCloser.Read(p)
}

// TestSpec9_MemoryFollowsBytesReceived: connections that declare a 1 MiB
// body and send one byte cost kilobytes each, not the declared megabyte.
func TestSpec9_MemoryFollowsBytesReceived(t *testing.T) {
	const conns = 100
	waiting := make(chan struct{}, conns)
	r := gin.New()
	r.Use(func(c *gin.Context) {
		c.Request.Body = &signalSecondRead{ReadCloser: c.Request.Body, waiting: waiting}
	})
	r.POST("/things", idem.New(), func(c *gin.Context) { c.Status(http.StatusCreated) })
	srv := httptest.NewServer(r)
	defer srv.Close()

	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	open := make([]net.Conn, 0, conns)
	defer func() {
		for _, c := range open {
			c.Close()
		}
	}()
	for range conns {
		c, err := net.Dial("tcp", srv.Listener.Addr().String())
		require.NoError(t, err)
		open = append(open, c)
		fmt.Fprintf(c, "POST /things HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer u\r\nIdempotency-Key: %s\r\n"+
			"Content-Length: %d\r\n\r\nx", uuid.NewString(), 1<<20)
	}
	for range conns {
		<-waiting
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	perConn := (int64(after.HeapAlloc) - int64(before.HeapAlloc)) / conns
	t.Logf("heap per connection: %d bytes", perConn)
	assert.Less(t, perConn, int64(64<<10), "memory follows the bytes received, not Content-Length")
}

// TestSpec9_OverTheCapGets413NotAReset: a client that sends a keyed body
// just over the cap reads its 413 instead of a reset connection: the server
// reads the excess before it answers. A client that writes its whole
// request before it reads the answer shows it: were the 413 sent first, the
// server would stop reading, the write would stall, and the close would
// reset the connection with the answer unread.
func TestSpec9_OverTheCapGets413NotAReset(t *testing.T) {
	r := gin.New()
	r.POST("/things", idem.New(), func(c *gin.Context) { c.Status(http.StatusCreated) })
	srv := httptest.NewServer(r)
	defer srv.Close()
	body := strings.Repeat("x", 1<<20+1)

	conn, err := net.Dial("tcp", srv.Listener.Addr().String())
	require.NoError(t, err)
	defer conn.Close()
	_, err = fmt.Fprintf(conn, "POST /things HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer u\r\nIdempotency-Key: %s\r\n"+
		"Content-Length: %d\r\n\r\n%s", uuid.NewString(), len(body), body)
	require.NoError(t, err, "the server reads the whole request")
	res, err := http.ReadResponse(bufio.NewReader(conn), nil)
	require.NoError(t, err, "the answer is read, not reset")
	res.Body.Close()
	assert.Equal(t, http.StatusRequestEntityTooLarge, res.StatusCode)

	// Go's own client, with a declared length and chunked.
	for i := range 30 {
		for _, chunked := range []bool{false, true} {
			var rd io.Reader = strings.NewReader(body)
			if chunked {
				rd = bufio.NewReader(strings.NewReader(body)) // unknown length: sent chunked
			}
			hr, err := http.NewRequest(http.MethodPost, srv.URL+"/things", rd)
			require.NoError(t, err)
			hr.Header.Set("Authorization", "Bearer u")
			hr.Header.Set("Idempotency-Key", uuid.NewString())
			res, err := srv.Client().Do(hr)
			require.NoError(t, err, "attempt %d, chunked %v: the client reads its answer", i, chunked)
			problem, _ := io.ReadAll(res.Body)
			res.Body.Close()
			assert.Equal(t, http.StatusRequestEntityTooLarge, res.StatusCode)
			assert.Contains(t, string(problem), idem.ProblemBodyTooLarge)
		}
	}
}

// TestSpec8_HandlerReadsTheBodyByteForByte: whatever its size and framing,
// the handler reads exactly the body that was sent, and a body of exactly
// the cap is accepted.
func TestSpec8_HandlerReadsTheBodyByteForByte(t *testing.T) {
	r := gin.New()
	r.POST("/echo", idem.New(), func(c *gin.Context) {
		b, _ := io.ReadAll(c.Request.Body)
		c.Data(http.StatusOK, "application/octet-stream", b)
	})
	srv := httptest.NewServer(r)
	defer srv.Close()
	for _, size := range []int{1, 16<<10 - 1, 16 << 10, 16<<10 + 1, 128<<10 + 5, 1 << 20} {
		for _, chunked := range []bool{false, true} {
			body := strings.Repeat("0123456789abcdef", size/16+1)[:size]
			var rd io.Reader = strings.NewReader(body)
			if chunked {
				rd = io.MultiReader(strings.NewReader(body[:size/2]), strings.NewReader(body[size/2:]))
			}
			hr, err := http.NewRequest(http.MethodPost, srv.URL+"/echo", rd)
			require.NoError(t, err)
			hr.Header.Set("Authorization", "Bearer u")
			hr.Header.Set("Idempotency-Key", uuid.NewString())
			res, err := srv.Client().Do(hr)
			require.NoError(t, err)
			got, _ := io.ReadAll(res.Body)
			res.Body.Close()
			assert.Equal(t, http.StatusOK, res.StatusCode, "size %d chunked %v", size, chunked)
			assert.True(t, string(got) == body, "size %d chunked %v: the body arrives intact", size, chunked)
		}
	}
}
