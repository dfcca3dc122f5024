// Package wire is the compact binary encoding the stores share for what
// they keep of a response: length-prefixed fields, and the replayable
// headers within fixed bounds. Decoding is bounded: every count and length
// is checked against the bytes left and the bounds before anything is
// sized by it, so a corrupt or foreign value costs a small multiple of its
// own size at most and is an error, never a panic.
package wire

import (
	"encoding/binary"
	"fmt"
	"net/http"
	"slices"

	"golang.org/x/net/http/httpguts"
)

// Bounds on the headers of one record. The middleware keeps a small
// replayable subset of a response's headers, far within them; a value
// beyond them is not a record a store wrote, so the decoder refuses it, and
// the stores never write one (they keep such a record without its body and
// with its Location alone, see LocationOnly).
const (
	MaxHeaderNames  = 64       // header names per record
	MaxHeaderValues = 256      // header values per record, all names together
	MaxHeaderBytes  = 64 << 10 // bytes of header names and values per record
)

// ValidHeaderName reports whether name is a valid HTTP field name in
// canonical form, as the middleware snapshots them.
func ValidHeaderName(name string) bool {
	return httpguts.ValidHeaderFieldName(name) && http.CanonicalHeaderKey(name) == name
}

// HeaderWithinBounds reports whether the decoder accepts h.
func HeaderWithinBounds(h http.Header) bool {
	if len(h) > MaxHeaderNames {
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
		if values > MaxHeaderValues || size > MaxHeaderBytes || !ValidHeaderName(name) {
			return false
		}
	}
	return true
}

// LocationOnly returns h's Location header alone, or nil when h has none
// within the bounds.
func LocationOnly(h http.Header) http.Header {
	loc := http.Header{"Location": h["Location"]}
	if len(loc["Location"]) == 0 || !HeaderWithinBounds(loc) {
		return nil
	}
	return loc
}

// HeaderSize is an upper bound of the bytes AppendHeader adds for h.
func HeaderSize(h http.Header) int {
	size := binary.MaxVarintLen64
	for name, values := range h {
		size += 2*binary.MaxVarintLen64 + len(name)
		for _, v := range values {
			size += binary.MaxVarintLen64 + len(v)
		}
	}
	return size
}

// AppendHeader appends h: the number of names, then per name its length
// and bytes, the number of values, and per value its length and bytes.
// Names go in sorted order, so that the same header always encodes to the
// same bytes: a store compares a retried write with what it holds.
func AppendHeader(b []byte, h http.Header) []byte {
	var buf [16]string
	names := buf[:0]
	for name := range h {
		names = append(names, name)
	}
	slices.Sort(names)
	b = binary.AppendUvarint(b, uint64(len(h)))
	for _, name := range names {
		values := h[name]
		b = AppendString(b, name)
		b = binary.AppendUvarint(b, uint64(len(values)))
		for _, v := range values {
			b = AppendString(b, v)
		}
	}
	return b
}

// AppendString appends s with its length in front.
func AppendString(b []byte, s string) []byte {
	return append(binary.AppendUvarint(b, uint64(len(s))), s...)
}

// AppendBytes appends p with its length in front.
func AppendBytes(b, p []byte) []byte {
	return append(binary.AppendUvarint(b, uint64(len(p))), p...)
}

// Decoder reads fields from Rest. After the first error every read returns
// a zero value, so callers check Err once at the end. Errors wrap Corrupt.
type Decoder struct {
	Rest    string
	Err     error
	Corrupt error // the error every decoding error wraps
}

// Fail records the first error and stops reading.
func (d *Decoder) Fail(format string, args ...any) {
	if d.Err == nil {
		d.Err = fmt.Errorf("%w: "+format, append([]any{d.Corrupt}, args...)...)
	}
	d.Rest = ""
}

// Uvarint reads an unsigned varint of at most 64 bits.
func (d *Decoder) Uvarint(what string) uint64 {
	if d.Err != nil {
		return 0
	}
	var x uint64
	for i := 0; i < binary.MaxVarintLen64; i++ {
		if i >= len(d.Rest) {
			d.Fail("truncated %s", what)
			return 0
		}
		c := d.Rest[i]
		if i == binary.MaxVarintLen64-1 && c > 1 {
			break // more than 64 bits
		}
		x |= uint64(c&0x7f) << (7 * i)
		if c < 0x80 {
			d.Rest = d.Rest[i+1:]
			return x
		}
	}
	d.Fail("%s overflows", what)
	return 0
}

// Byte reads one byte.
func (d *Decoder) Byte(what string) byte {
	if d.Err != nil {
		return 0
	}
	if len(d.Rest) == 0 {
		d.Fail("truncated %s", what)
		return 0
	}
	c := d.Rest[0]
	d.Rest = d.Rest[1:]
	return c
}

// Count reads a count of items that take at least minLen bytes each and
// checks it against the bytes left.
func (d *Decoder) Count(what string, minLen int) int {
	n := d.Uvarint(what)
	if d.Err == nil && n > uint64(len(d.Rest)/minLen) {
		d.Fail("%s %d exceeds the %d bytes left", what, n, len(d.Rest))
		return 0
	}
	return int(n)
}

// String reads a length-prefixed field. It returns a substring of Rest,
// so it costs no allocation.
func (d *Decoder) String(what string) string {
	n := d.Uvarint(what + " length")
	if d.Err != nil {
		return ""
	}
	if n > uint64(len(d.Rest)) {
		d.Fail("%s length %d exceeds the %d bytes left", what, n, len(d.Rest))
		return ""
	}
	s := d.Rest[:n]
	d.Rest = d.Rest[n:]
	return s
}

// Header reads what AppendHeader wrote, within the bounds. Every header
// takes at least two bytes (name length, value count), and every value at
// least one: counts are checked against the bytes left and the bounds
// before anything is sized by them.
func (d *Decoder) Header() http.Header {
	n := d.Count("header count", 2)
	if n > MaxHeaderNames {
		d.Fail("%d headers, more than %d", n, MaxHeaderNames)
	}
	if n == 0 || d.Err != nil {
		return nil
	}
	h := make(http.Header, n)
	values, size := 0, 0 // all names together
	for i := 0; i < n && d.Err == nil; i++ {
		name := d.String("header name")
		count := d.Count("header value count", 1)
		values += count
		size += len(name)
		switch {
		case d.Err != nil:
		case values > MaxHeaderValues:
			d.Fail("more than %d header values", MaxHeaderValues)
		case size > MaxHeaderBytes:
			d.Fail("more than %d bytes of headers", MaxHeaderBytes)
		case !ValidHeaderName(name):
			d.Fail("invalid header name %.40q", name)
		}
		if d.Err != nil {
			return nil
		}
		vs := make([]string, 0, count)
		for j := 0; j < count && d.Err == nil; j++ {
			v := d.String("header value")
			if size += len(v); size > MaxHeaderBytes {
				d.Fail("more than %d bytes of headers", MaxHeaderBytes)
			} else if !httpguts.ValidHeaderFieldValue(v) {
				d.Fail("invalid value %.40q of header %.40s", v, name)
			}
			vs = append(vs, v)
		}
		h[name] = append(h[name], vs...)
	}
	if d.Err != nil {
		return nil
	}
	return h
}
