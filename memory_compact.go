package idempotency

import (
	"net/http"
	"unsafe"
)

// compact returns a copy of the completed record rec laid out for a long
// stay in memory: its token, fingerprint, method, path, header names and
// values and body share one byte allocation, and its header values one
// slice, so that a retained record is a handful of objects for the garbage
// collector to mark instead of one or more per field, and it holds on to
// nothing of the request and response it came from (their buffers, a
// body's spare capacity).
//
// The strings are views of the shared bytes, which nothing writes after
// compact returns: records a store returns are read-only for the caller.
func compact(rec *Record) Record {
	size, values := len(rec.Token)+len(rec.Fingerprint)+len(rec.Method)+len(rec.Path)+len(rec.Body), 0
	for name, vs := range rec.Header {
		size += len(name)
		values += len(vs)
		for _, v := range vs {
			size += len(v)
		}
	}
	a := arena{buf: make([]byte, 0, size)}
	out := *rec
	out.Token = a.string(rec.Token)
	out.Fingerprint = a.bytes(rec.Fingerprint)
	out.Method = a.string(rec.Method)
	out.Path = a.string(rec.Path)
	out.Body = a.bytes(rec.Body)
	if len(rec.Header) > 0 {
		all := make([]string, 0, values)
		out.Header = make(http.Header, len(rec.Header))
		for name, vs := range rec.Header {
			start := len(all)
			for _, v := range vs {
				all = append(all, a.string(v))
			}
			out.Header[a.string(name)] = all[start:len(all):len(all)]
		}
	}
	return out
}

// arena appends into a buffer of fixed capacity, so that what it hands out
// never moves.
type arena struct{ buf []byte }

func (a *arena) bytes(b []byte) []byte {
	if b == nil {
		return nil
	}
	start := len(a.buf)
	a.buf = append(a.buf, b...)
	return a.buf[start:len(a.buf):len(a.buf)]
}

func (a *arena) string(s string) string {
	if s == "" {
		return ""
	}
	start := len(a.buf)
	a.buf = append(a.buf, s...)
	return unsafe.String(&a.buf[start], len(s))
}
