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
//
// At most limit body bytes are held. A response that outgrows them calls
// overflow, which settles the transaction; when it committed, the held
// bytes are sent and the rest streams through (streaming), else the
// response is dropped (failed) and further writes fail.
type holdWriter struct {
	gin.ResponseWriter // the real writer
	status             int
	written            bool // the handler wrote or sent its header
	body               []byte
	before             http.Header // the header map before the handler ran
	limit              int
	overflow           func() bool
	streaming          bool // settled early: writes go to the client
	failed             bool // settled early without a commit: writes fail
}

var _ gin.ResponseWriter = (*holdWriter)(nil)

// errNotCommitted fails the writes of a response whose transaction did not
// commit when the response outgrew the cap.
var errNotCommitted = errors.New("idempotency: the request's transaction did not commit; the response is dropped")

func newHoldWriter(w gin.ResponseWriter, limit int, overflow func() bool) *holdWriter {
	return &holdWriter{ResponseWriter: w, status: http.StatusOK, before: w.Header().Clone(),
		limit: limit, overflow: overflow}
}

// grow reports whether n more bytes are to be held, settling the
// transaction first when they would pass the limit.
func (w *holdWriter) grow(n int) (hold bool, err error) {
	switch {
	case w.streaming:
		return false, nil
	case w.failed:
		return false, errNotCommitted
	case len(w.body)+n <= w.limit:
		return true, nil
	}
	if !w.overflow() {
		w.failed = true
		w.body = nil
		return false, errNotCommitted
	}
	w.streaming = true
	w.send()
	w.body = nil
	return false, nil
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

// Write holds b, or writes it once the response streams.
func (w *holdWriter) Write(b []byte) (int, error) {
	w.written = true
	if hold, err := w.grow(len(b)); !hold {
		if err != nil {
			return 0, err
		}
		return w.ResponseWriter.Write(b)
	}
	w.body = append(w.body, b...)
	return len(b), nil
}

// WriteString holds s, or writes it once the response streams.
func (w *holdWriter) WriteString(s string) (int, error) {
	w.written = true
	if hold, err := w.grow(len(s)); !hold {
		if err != nil {
			return 0, err
		}
		return w.ResponseWriter.WriteString(s)
	}
	w.body = append(w.body, s...)
	return len(s), nil
}

// Status is the status the response will be sent with.
func (w *holdWriter) Status() int { return w.status }

// Written reports whether the handler wrote or sent its header.
func (w *holdWriter) Written() bool { return w.written }

// Size is the number of body bytes held, or -1 before any write; once the
// response streams, the bytes written.
func (w *holdWriter) Size() int {
	switch {
	case w.streaming:
		return w.ResponseWriter.Size()
	case !w.written:
		return -1
	}
	return len(w.body)
}

// Flush does nothing while the response is held: it is sent after the
// commit. Once the response streams, it flushes.
func (w *holdWriter) Flush() {
	if w.streaming {
		w.ResponseWriter.Flush()
	}
}

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
