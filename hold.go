package idempotency

import (
	"bufio"
	"errors"
	"net"
	"net/http"

	"github.com/gin-gonic/gin"
)

// holdWriter holds a response back until the request's transaction has
// committed (see [TxStore]): the status and body wait in memory, and reach
// the client with send, or never, with discard. Headers are set on the real
// writer's map as usual; discard puts the map back as it was.
type holdWriter struct {
	gin.ResponseWriter // the real writer
	status             int
	written            bool // the handler wrote or sent its header
	body               []byte
	before             http.Header // the header map before the handler ran
}

var _ gin.ResponseWriter = (*holdWriter)(nil)

func newHoldWriter(w gin.ResponseWriter) *holdWriter {
	return &holdWriter{ResponseWriter: w, status: http.StatusOK, before: w.Header().Clone()}
}

// WriteHeader sets the status to send, as Gin's writer does: not after the
// header was written.
func (w *holdWriter) WriteHeader(code int) {
	if code > 0 && !w.written {
		w.status = code
	}
}

// WriteHeaderNow marks the header as written; it is sent with the rest.
func (w *holdWriter) WriteHeaderNow() { w.written = true }

// Write holds b.
func (w *holdWriter) Write(b []byte) (int, error) {
	w.written = true
	w.body = append(w.body, b...)
	return len(b), nil
}

// WriteString holds s.
func (w *holdWriter) WriteString(s string) (int, error) {
	w.written = true
	w.body = append(w.body, s...)
	return len(s), nil
}

// Status is the status the response will be sent with.
func (w *holdWriter) Status() int { return w.status }

// Written reports whether the handler wrote or sent its header.
func (w *holdWriter) Written() bool { return w.written }

// Size is the number of body bytes held, or -1 before any write.
func (w *holdWriter) Size() int {
	if !w.written {
		return -1
	}
	return len(w.body)
}

// Flush does nothing: a held response is sent whole, after the commit.
func (w *holdWriter) Flush() {}

// errHeld refuses to hand over a connection whose response is held.
var errHeld = errors.New("idempotency: the response of a transactional request is held until its commit and cannot be hijacked")

// Hijack is refused: the response must wait for the commit.
func (w *holdWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) { return nil, nil, errHeld }

// Unwrap returns the real writer, for http.ResponseController.
func (w *holdWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// send writes the held response to the client.
func (w *holdWriter) send() {
	w.ResponseWriter.WriteHeader(w.status)
	if !w.written {
		return // Gin sends the header after the handlers
	}
	w.ResponseWriter.WriteHeaderNow()
	if len(w.body) > 0 {
		w.ResponseWriter.Write(w.body)
	}
}

// discard drops the held response and the headers the handler set.
func (w *holdWriter) discard() {
	h := w.ResponseWriter.Header()
	clear(h)
	for name, values := range w.before {
		h[name] = values
	}
	w.body, w.written, w.status = nil, false, http.StatusOK
}
