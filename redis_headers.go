package idempotency

import (
	"net/http"

	"golang.org/x/net/http/httpguts"
)

// Bounds on the headers of a record in the Redis store. The middleware
// keeps a small replayable subset of a response's headers, far within
// them; a value beyond them is not a record this package wrote, so the
// decoder refuses it (ErrCorruptRecord) before sizing anything by it, and
// RedisStore.Complete never writes one: it keeps such a record without its
// body and with its Location alone.
const (
	maxHeaderNames  = 64       // header names per record
	maxHeaderValues = 256      // header values per record, all names together
	maxHeaderBytes  = 64 << 10 // bytes of header names and values per record
)

// validHeaderName reports whether name is a valid HTTP field name in
// canonical form, as the recorder snapshots them.
func validHeaderName(name string) bool {
	return httpguts.ValidHeaderFieldName(name) && http.CanonicalHeaderKey(name) == name
}

// headerWithinBounds reports whether the decoder accepts h: at most
// maxHeaderNames names, maxHeaderValues values and maxHeaderBytes bytes,
// valid canonical names and valid values.
func headerWithinBounds(h http.Header) bool {
	if len(h) > maxHeaderNames {
		return false
	}
	values, size := 0, 0
	for name, vs := range h {
		values += len(vs)
		size += len(name)
		for _, v := range vs {
			size += len(v)
			if !httpguts.ValidHeaderFieldValue(v) {
				return false
			}
		}
		if values > maxHeaderValues || size > maxHeaderBytes || !validHeaderName(name) {
			return false
		}
	}
	return true
}

// header reads the header part of a record, within the bounds above.
// Every header takes at least two bytes (name length, value count), and
// every value at least one: counts are checked against the bytes left and
// the bounds before anything is sized by them.
func (d *recordDecoder) header() http.Header {
	n := d.count("header count", 2)
	if n > maxHeaderNames {
		d.fail("%d headers, more than %d", n, maxHeaderNames)
	}
	if n == 0 || d.err != nil {
		return nil
	}
	h := make(http.Header, n)
	values, size := 0, 0 // all names together
	for i := 0; i < n && d.err == nil; i++ {
		name := d.string("header name")
		count := d.count("header value count", 1)
		values += count
		size += len(name)
		switch {
		case d.err != nil:
		case values > maxHeaderValues:
			d.fail("more than %d header values", maxHeaderValues)
		case size > maxHeaderBytes:
			d.fail("more than %d bytes of headers", maxHeaderBytes)
		case !validHeaderName(name):
			d.fail("invalid header name %.40q", name)
		}
		if d.err != nil {
			return nil
		}
		vs := make([]string, 0, count)
		for j := 0; j < count && d.err == nil; j++ {
			v := d.string("header value")
			if size += len(v); size > maxHeaderBytes {
				d.fail("more than %d bytes of headers", maxHeaderBytes)
			} else if !httpguts.ValidHeaderFieldValue(v) {
				d.fail("invalid value %.40q of header %.40s", v, name)
			}
			vs = append(vs, v)
		}
		if prev, dup := h[name]; dup {
			vs = append(prev, vs...)
		}
		h[name] = vs
	}
	return h
}

// withoutBody returns a copy of rec without its body and with header h: a
// record that cannot be replayed, whose duplicates get 409 with the
// Location it keeps.
func withoutBody(rec *Record, h http.Header) *Record {
	r := *rec
	r.Body, r.BodyOmitted, r.Header = nil, true, h
	return &r
}

// locationOnly returns h's Location header alone, or nil when h has none
// within the bounds.
func locationOnly(h http.Header) http.Header {
	loc := http.Header{"Location": h["Location"]}
	if len(loc["Location"]) == 0 || !headerWithinBounds(loc) {
		return nil
	}
	return loc
}
