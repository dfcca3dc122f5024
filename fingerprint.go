package idempotency

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"hash"
	"io"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strings"
)

// A FingerprintPart writes the part of a request that identifies its payload
// into w, a running SHA-256. body is the request body, already read (up to
// the body cap); the handler still gets it in full. An error refuses the
// request with 400 and the error's text as the detail.
//
// The built-in parts frame what they write with its length, so that parts
// cannot run into each other; a custom part should do the same if it writes
// several values.
type FingerprintPart func(w io.Writer, r *http.Request, body []byte) error

// QueryString is the raw query string, as sent.
func QueryString() FingerprintPart {
	return func(w io.Writer, r *http.Request, _ []byte) error {
		writeString(w, r.URL.RawQuery)
		return nil
	}
}

// CanonicalQuery is the query string parsed (net/url), so that the order of
// its parameters does not count: "?a=1&b=2" and "?b=2&a=1" are one
// fingerprint. The values of a repeated parameter keep their order
// ("?a=1&a=2" differs from "?a=2&a=1"), and percent-encoding is decoded
// ("?q=a%20b", "?q=a+b" and "?q=a%20%62" are one), as Gin's c.Query reads
// them; "?a" is "?a=". A query string that net/url cannot parse (a bad
// percent escape, a semicolon) counts as sent, like [QueryString]. Use it in
// place of QueryString:
//
//	idempotency.WithFingerprint(idempotency.CanonicalQuery(), idempotency.RawBody())
func CanonicalQuery() FingerprintPart {
	return func(w io.Writer, r *http.Request, _ []byte) error {
		values, err := url.ParseQuery(r.URL.RawQuery)
		if err != nil {
			writeString(w, "raw")
			writeString(w, r.URL.RawQuery)
			return nil
		}
		writeString(w, "parsed")
		writeLength(w, len(values))
		for _, name := range slices.Sorted(maps.Keys(values)) {
			writeString(w, name)
			writeLength(w, len(values[name]))
			for _, v := range values[name] {
				writeString(w, v)
			}
		}
		return nil
	}
}

// RawBody is the request body, byte for byte.
func RawBody() FingerprintPart {
	return func(w io.Writer, _ *http.Request, body []byte) error {
		writeField(w, body)
		return nil
	}
}

// CanonicalJSON is the body as JSON, with key order and insignificant
// whitespace ignored. A body that is not one valid JSON value gets 400.
func CanonicalJSON() FingerprintPart {
	return func(w io.Writer, _ *http.Request, body []byte) error {
		v, err := decodeJSON(body)
		if err != nil {
			return err
		}
		return writeJSON(w, v)
	}
}

// CanonicalJSONOrRaw is [CanonicalJSON], falling back to the raw body when
// the body is not valid JSON.
func CanonicalJSONOrRaw() FingerprintPart {
	return func(w io.Writer, _ *http.Request, body []byte) error {
		v, err := decodeJSON(body)
		if err != nil {
			writeString(w, "raw")
			writeField(w, body)
			return nil
		}
		writeString(w, "json")
		return writeJSON(w, v)
	}
}

// JSONFields is the canonical JSON of the named fields of a JSON object
// body; a dot walks into nested objects ("order.amount"). A missing field
// counts as absent, which differs from null. A body that is not valid JSON
// gets 400.
func JSONFields(paths ...string) FingerprintPart {
	split := make([][]string, len(paths))
	for i, p := range paths {
		split[i] = strings.Split(p, ".")
	}
	return func(w io.Writer, _ *http.Request, body []byte) error {
		v, err := decodeJSON(body)
		if err != nil {
			return err
		}
		for i, path := range split {
			writeString(w, paths[i])
			field, ok := lookupJSON(v, path)
			if !ok {
				writeString(w, "absent")
				continue
			}
			writeString(w, "present")
			if err := writeJSON(w, field); err != nil {
				return err
			}
		}
		return nil
	}
}

// Headers is the values of the named request headers, in order.
func Headers(names ...string) FingerprintPart {
	canonical := make([]string, len(names))
	for i, n := range names {
		canonical[i] = http.CanonicalHeaderKey(n)
	}
	return func(w io.Writer, r *http.Request, _ []byte) error {
		for _, name := range canonical {
			values := r.Header[name]
			writeString(w, name)
			writeLength(w, len(values))
			for _, v := range values {
				writeString(w, v)
			}
		}
		return nil
	}
}

// fingerprint hashes the method, the path and every part with h.
func fingerprint(h *hasher, parts []FingerprintPart, r *http.Request, path string, body []byte) ([]byte, error) {
	h.Reset()
	writeString(h, r.Method)
	writeString(h, path)
	for _, part := range parts {
		if err := part(h, r, body); err != nil {
			return nil, err
		}
	}
	return h.Sum(nil), nil
}

// hasher is a reusable SHA-256 with scratch space, so that hashing strings
// and lengths allocates nothing. The middleware keeps them in a pool.
type hasher struct {
	hash.Hash
	scratch [64]byte
}

func newHasher() any { return &hasher{Hash: sha256.New()} }

// WriteString writes s through the scratch space, without converting it.
func (h *hasher) WriteString(s string) (int, error) {
	for n := 0; n < len(s); {
		k := copy(h.scratch[:], s[n:])
		h.Hash.Write(h.scratch[:k])
		n += k
	}
	return len(s), nil
}

// writeField writes b with its length in front.
func writeField(w io.Writer, b []byte) {
	writeLength(w, len(b))
	w.Write(b)
}

// writeString writes s with its length in front.
func writeString(w io.Writer, s string) {
	writeLength(w, len(s))
	io.WriteString(w, s)
}

func writeLength(w io.Writer, n int) {
	if h, ok := w.(*hasher); ok {
		binary.BigEndian.PutUint64(h.scratch[:8], uint64(n))
		h.Hash.Write(h.scratch[:8])
		return
	}
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], uint64(n))
	w.Write(b[:])
}

// errInvalidJSON refuses a body that a JSON policy cannot read.
var errInvalidJSON = errors.New("the request body must be valid JSON")

// decodeJSON reads exactly one JSON value. encoding/json bounds the nesting
// depth, so deep input is an error, not a stack overflow.
func decodeJSON(body []byte) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, errInvalidJSON
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errInvalidJSON
	}
	return v, nil
}

// writeJSON writes v re-encoded: object keys sorted, no whitespace, numbers
// as written.
func writeJSON(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return errInvalidJSON
	}
	writeField(w, b)
	return nil
}

func lookupJSON(v any, path []string) (any, bool) {
	for _, name := range path {
		obj, ok := v.(map[string]any)
		if !ok {
			return nil, false
		}
		if v, ok = obj[name]; !ok {
			return nil, false
		}
	}
	return v, true
}
