package pgstore

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/http"

	"golang.org/x/net/http/httpguts"
)

// ErrCorruptRecord is returned by [Store.Acquire] when the row under a key
// is not a record this package can read: an unknown state or status, a
// header value that does not decode within its bounds, a body larger than
// the store's maximum (see [WithMaxBodySize]), or more than 2 MiB of
// fingerprint, method, path and headers. Oversized values are refused
// without reading them out of Postgres. The middleware answers such a request
// like any store failure; the row is left alone until it expires or is
// deleted.
var ErrCorruptRecord = errors.New("pgstore: corrupt record")

// Bounds on the replayable headers of one record. The middleware keeps a
// small subset of a response's headers, far within them. Complete never
// writes a header set beyond them (it keeps such a record without its body
// and with its Location alone), and the decoder refuses one before sizing
// anything by it.
const (
	maxHeaderNames  = 64       // header names per record
	maxHeaderValues = 256      // header values per record, all names together
	maxHeaderBytes  = 64 << 10 // bytes of header names and values per record
)

// headerVersion is the first byte of an encoded header column.
const headerVersion = 1

// The header column holds the replayable headers in a compact binary form,
// version 1, rather than jsonb: the store only ever reads the column back
// whole, and the binary form needs no escaping and is decoded in one pass.
//
//	byte     version (1)
//	uvarint  number of names
//	then per name: uvarint length + name, uvarint number of values,
//	         per value uvarint length + value
//
// A record without headers stores NULL.
func encodeHeader(h http.Header) []byte {
	if len(h) == 0 {
		return nil
	}
	size := 1 + binary.MaxVarintLen64
	for name, values := range h {
		size += 2*binary.MaxVarintLen64 + len(name)
		for _, v := range values {
			size += binary.MaxVarintLen64 + len(v)
		}
	}
	b := make([]byte, 0, size)
	b = append(b, headerVersion)
	b = binary.AppendUvarint(b, uint64(len(h)))
	for name, values := range h {
		b = appendString(b, name)
		b = binary.AppendUvarint(b, uint64(len(values)))
		for _, v := range values {
			b = appendString(b, v)
		}
	}
	return b
}

func appendString(b []byte, s string) []byte {
	return append(binary.AppendUvarint(b, uint64(len(s))), s...)
}

// decodeHeader reads a header column. Every count and length is checked
// against the bytes left and the bounds above before anything is sized by
// it, so a corrupt or foreign value costs a small multiple of its own size
// at most and returns an error wrapping ErrCorruptRecord, never a panic.
func decodeHeader(b []byte) (http.Header, error) {
	if len(b) == 0 {
		return nil, nil
	}
	if b[0] != headerVersion {
		return nil, fmt.Errorf("%w: unknown header format version %d", ErrCorruptRecord, b[0])
	}
	d := decoder{rest: b[1:]}
	n := d.count("header count", 2) // a name takes at least two bytes: its length and its value count
	if d.err == nil && n > maxHeaderNames {
		d.fail("%d headers, more than %d", n, maxHeaderNames)
	}
	if d.err != nil {
		return nil, d.err
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
			break
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
		h[name] = append(h[name], vs...)
	}
	if d.err == nil && len(d.rest) > 0 {
		d.fail("%d bytes after the headers", len(d.rest))
	}
	if d.err != nil {
		return nil, d.err
	}
	return h, nil
}

// validHeaderName reports whether name is a valid HTTP field name in
// canonical form, as the middleware snapshots them.
func validHeaderName(name string) bool {
	return httpguts.ValidHeaderFieldName(name) && http.CanonicalHeaderKey(name) == name
}

// headerWithinBounds reports whether decodeHeader accepts h.
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

// locationOnly returns h's Location header alone, or nil when h has none
// within the bounds.
func locationOnly(h http.Header) http.Header {
	loc := http.Header{"Location": h["Location"]}
	if len(loc["Location"]) == 0 || !headerWithinBounds(loc) {
		return nil
	}
	return loc
}

// decoder reads length-prefixed fields. After the first error every read
// returns a zero value, so callers check err once at the end.
type decoder struct {
	rest []byte
	err  error
}

func (d *decoder) fail(format string, args ...any) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: "+format, append([]any{ErrCorruptRecord}, args...)...)
	}
	d.rest = nil
}

func (d *decoder) uvarint(what string) uint64 {
	if d.err != nil {
		return 0
	}
	x, n := binary.Uvarint(d.rest)
	switch {
	case n == 0:
		d.fail("truncated %s", what)
		return 0
	case n < 0:
		d.fail("%s overflows", what)
		return 0
	}
	d.rest = d.rest[n:]
	return x
}

// count reads a count of items that take at least minLen bytes each and
// checks it against the bytes left.
func (d *decoder) count(what string, minLen int) int {
	n := d.uvarint(what)
	if d.err == nil && n > uint64(len(d.rest)/minLen) {
		d.fail("%s %d exceeds the %d bytes left", what, n, len(d.rest))
		return 0
	}
	return int(n)
}

func (d *decoder) string(what string) string {
	n := d.uvarint(what + " length")
	if d.err != nil {
		return ""
	}
	if n > uint64(len(d.rest)) {
		d.fail("%s length %d exceeds the %d bytes left", what, n, len(d.rest))
		return ""
	}
	s := string(d.rest[:n])
	d.rest = d.rest[n:]
	return s
}
