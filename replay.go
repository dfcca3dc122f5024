package idempotency

import (
	"bytes"
	"compress/gzip"
	"io"
	"net/http"
	"strconv"
	"strings"

	"github.com/gin-gonic/gin"
)

// replay sends the stored response again, marked as a replay. A body
// recorded with a Content-Encoding goes only to a retry that accepts that
// coding; for any other retry a gzip body is decoded, and a body in a
// coding the middleware cannot decode is answered 409, like a stream.
func (m *middleware) replay(c *gin.Context, f *flight, rec *Record) {
	body, coding := rec.Body, rec.Header.Get("Content-Encoding")
	decoded := coding != "" && !acceptsCoding(c.Request.Header.Values("Accept-Encoding"), coding)
	if decoded {
		var ok bool
		if body, ok = decodeBody(coding, rec.Body, int64(m.maxResponse)<<3); !ok {
			m.alreadyCompleted(c, f, rec)
			return
		}
	}
	m.emit(c.Request.Context(), f, EventReplayed, rec.Status, nil)
	h := c.Writer.Header()
	for name, values := range rec.Header {
		if decoded && (name == "Content-Encoding" || name == "Etag") {
			continue // they describe the encoded representation
		}
		h[name] = values[:len(values):len(values)] // an append must copy, not write into the record
	}
	h[m.replayedHeader] = m.replayedValue
	c.Writer.WriteHeader(rec.Status)
	c.Writer.WriteHeaderNow()
	c.Writer.Write(body)
	c.Abort()
}

// alreadyCompleted answers a completed duplicate that is not replayed: 409
// with the stored Location.
func (m *middleware) alreadyCompleted(c *gin.Context, f *flight, rec *Record) {
	m.emit(c.Request.Context(), f, EventConflict, http.StatusConflict, nil)
	if loc := rec.Header.Get("Location"); loc != "" {
		c.Header("Location", loc)
	}
	m.refuse(c, http.StatusConflict, ProblemAlreadyCompleted, "Request already completed",
		"a request with this idempotency key has completed; its result is not replayed")
}

// acceptsCoding reports whether Accept-Encoding lines accept coding
// (RFC 9110 12.5.3): named with a nonzero weight, or covered by "*" and not
// refused by name.
func acceptsCoding(lines []string, coding string) bool {
	coding = strings.ToLower(strings.TrimSpace(coding))
	if coding == "identity" {
		return true
	}
	star := false
	for _, line := range lines {
		for _, item := range strings.Split(line, ",") {
			name, params, _ := strings.Cut(item, ";")
			name = strings.ToLower(strings.TrimSpace(name))
			if name != coding && name != "*" && !(coding == "gzip" && name == "x-gzip") {
				continue
			}
			ok := weight(params) > 0
			if name != "*" {
				return ok
			}
			star = ok
		}
	}
	return star
}

// weight reads the q parameter of an Accept-Encoding item (1 when absent).
func weight(params string) float64 {
	for _, p := range strings.Split(params, ";") {
		k, v, _ := strings.Cut(strings.TrimSpace(p), "=")
		if strings.EqualFold(k, "q") {
			q, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				return 0
			}
			return q
		}
	}
	return 1
}

// decodeBody decodes a body stored in coding, up to limit bytes. Only gzip
// can be decoded.
func decodeBody(coding string, body []byte, limit int64) ([]byte, bool) {
	switch strings.ToLower(strings.TrimSpace(coding)) {
	case "gzip", "x-gzip":
	default:
		return nil, false
	}
	zr, err := gzip.NewReader(bytes.NewReader(body))
	if err != nil {
		return nil, false
	}
	out, err := io.ReadAll(io.LimitReader(zr, limit+1))
	if err != nil || int64(len(out)) > limit {
		return nil, false
	}
	return out, true
}
