package idempotency

import (
	"bufio"
	"net"
	"net/http"
	"slices"

	"github.com/gin-gonic/gin"
)

// recorder wraps the handler's gin.ResponseWriter and records the response
// while it is written to the client: the status and the replayable headers
// when the header is sent, and the body up to a cap. It never buffers
// before writing, so streaming works as without it. A flushed, hijacked or
// over-cap response is marked as having no replayable body.
//
// Only what is written inside the middleware counts: a header an outer
// middleware set before the handler ran (an outer gzip's Content-Encoding)
// is set again by that middleware on a replay, so it is not recorded.
type recorder struct {
	gin.ResponseWriter
	replayable map[string]bool // canonical header names to snapshot
	maxBody    int
	preset     []presetHeader // replayable headers set before the handler ran
	presetBuf  [2]presetHeader

	statusSet bool        // the handler called WriteHeader
	sent      bool        // the header was snapshotted when it was sent
	status    int         // status when the header was sent
	header    http.Header // replayable subset, snapshotted when sent
	body      []byte
	omitted   bool // flushed, hijacked or over the cap
	broken    bool // a 5xx was written over a sent status: a recovery caught a panic
}

// presetHeader is a header's values as they were before the handler ran.
type presetHeader struct {
	name   string
	values []string
}

var (
	_ gin.ResponseWriter                        = (*recorder)(nil)
	_ http.Flusher                              = (*recorder)(nil)
	_ http.Hijacker                             = (*recorder)(nil)
	_ http.CloseNotifier                        = (*recorder)(nil)
	_ interface{ Unwrap() http.ResponseWriter } = (*recorder)(nil)
)

// start wraps w for one request and notes the replayable headers that are
// already set, so that they are left out of the record.
func (r *recorder) start(w gin.ResponseWriter, replayable map[string]bool, maxBody int) {
	r.ResponseWriter, r.replayable, r.maxBody = w, replayable, maxBody
	r.preset = r.presetBuf[:0]
	for name, values := range w.Header() {
		if replayable[name] {
			r.preset = append(r.preset, presetHeader{name, values})
		}
	}
}

// WriteHeader records that the handler chose a status. Gin sends it with
// the first write, or after the handlers when nothing is written. A 5xx
// over a status already sent is how a recovery middleware mounted inside
// this one answers a panic: the response is broken and is not kept.
func (r *recorder) WriteHeader(code int) {
	if code >= 500 && r.ResponseWriter.Written() && code != r.ResponseWriter.Status() {
		r.broken = true
	}
	r.statusSet = true
	r.ResponseWriter.WriteHeader(code)
}

// WriteHeaderNow sends the header, recording it first.
func (r *recorder) WriteHeaderNow() {
	r.snapshot()
	r.ResponseWriter.WriteHeaderNow()
}

// Write records b (up to the cap) and writes it to the client.
func (r *recorder) Write(b []byte) (int, error) {
	r.snapshot()
	if r.fits(len(b)) {
		r.body = append(r.body, b...)
	}
	return r.ResponseWriter.Write(b)
}

// WriteString records s (up to the cap) and writes it to the client.
func (r *recorder) WriteString(s string) (int, error) {
	r.snapshot()
	if r.fits(len(s)) {
		r.body = append(r.body, s...)
	}
	return r.ResponseWriter.WriteString(s)
}

// Flush marks the response as streamed (kept without a body) and flushes,
// unless the response is held for its transaction's commit.
func (r *recorder) Flush() {
	r.snapshot()
	if _, held := r.ResponseWriter.(*holdWriter); !held {
		r.omit() // a held response is sent whole after the commit: nothing streamed
	}
	r.ResponseWriter.Flush()
}

// Hijack hands the connection to the caller and marks the response as
// taken over (kept without a body). A refused hijack (a response held for
// its transaction's commit) changes nothing: the handler answers as usual,
// and that answer is recorded and replayed.
func (r *recorder) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	took := !r.sent && !r.ResponseWriter.Written()
	r.snapshot() // before: a hijacked writer counts as written
	conn, rw, err := r.ResponseWriter.Hijack()
	if err != nil {
		if took && !r.ResponseWriter.Written() { // the header is still to be sent: snapshot it then
			r.sent, r.status, r.header = false, 0, nil
		}
		return conn, rw, err
	}
	r.omit()
	return conn, rw, nil
}

// Unwrap returns the wrapped writer, for http.ResponseController.
func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

// snapshot records the status and the replayable headers the first time the
// header is about to be sent; later edits to the header map do not count.
func (r *recorder) snapshot() {
	if r.sent || r.ResponseWriter.Written() {
		return
	}
	r.sent = true
	r.status = r.ResponseWriter.Status()
	for name, values := range r.ResponseWriter.Header() {
		if r.replayable[name] && !r.isPreset(name, values) {
			if r.header == nil {
				r.header = make(http.Header) // no hint: a few headers fit its first group
			}
			r.header[name] = values[:len(values):len(values)] // shared: Set and Add never change these elements
		}
	}
}

// isPreset reports whether name still has the values it had before the
// handler ran.
func (r *recorder) isPreset(name string, values []string) bool {
	for _, p := range r.preset {
		if p.name == name {
			return slices.Equal(p.values, values)
		}
	}
	return false
}

// fits reports whether n more body bytes are to be recorded; past the cap
// it gives up the body for good.
func (r *recorder) fits(n int) bool {
	if !r.omitted && len(r.body)+n > r.maxBody {
		r.omit()
	}
	return !r.omitted
}

func (r *recorder) omit() {
	r.omitted = true
	r.body = nil
}

// wroteNothing reports whether the handler neither wrote nor chose a status.
func (r *recorder) wroteNothing() bool {
	return !r.sent && !r.statusSet && !r.ResponseWriter.Written()
}

// finish sends a header the handler chose but did not write, as Gin would
// after the handlers, so that it is recorded too.
func (r *recorder) finish() {
	if !r.sent && r.statusSet {
		r.WriteHeaderNow()
	}
}

// result turns claim into the completed record of the response.
func (r *recorder) result(claim *Record) *Record {
	claim.State = Completed
	claim.Status = r.status
	claim.Header = r.header
	claim.Body = r.body
	claim.BodyOmitted = r.omitted
	return claim
}
