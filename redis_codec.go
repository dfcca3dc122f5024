package idempotency

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
)

// ErrCorruptRecord is returned by [RedisStore.Acquire] when the value under a
// record's key is not a record this package can read: corrupt, truncated,
// larger than the store's maximum record size, written by something else, or
// not a Redis string at all. The middleware answers such a request like any
// store failure; the value is left alone.
var ErrCorruptRecord = errors.New("idempotency: corrupt record in the Redis store")

// The Redis store keeps each record as one Redis string in a compact binary
// form, version 1:
//
//	offset 0     version byte (1)
//	offset 1     state byte (InFlight 1, Completed 2)
//	offset 2-17  fencing token, 16 raw bytes
//	then         uvarint length + fingerprint
//	             uvarint length + method
//	             uvarint length + path
//	             uvarint status
//	             flags byte (bit 0: BodyOmitted)
//	             uvarint header count, then per header: uvarint length +
//	             name, uvarint value count, per value uvarint length + value
//	             (bounded in number and size: see redis_headers.go)
//	             uvarint length + body
//
// A record must end exactly after its body, so a truncated value or one
// with trailing bytes is refused.
// Why a string with a fixed head, not a Redis hash: the Lua scripts that
// fence Complete, Release and Extend compare one 18-byte GETRANGE against
// the caller's version+InFlight+token, so owning a key costs no decoding and
// never copies a body inside Redis; Acquire reads a held record, its size and
// PTTL with one GET and a STRLEN bound, and Go decodes it in one pass with
// no reflection and one copy of the body. A hash would still need its own
// encoding for the header list, costs a field/value pair per field in
// memory, and turns a replay into an HGETALL of alternating pairs. Lengths
// are uvarints, so a small record pays one byte per length: a typical
// completed record (a 201 with Content-Type, a 56-byte Location and a
// 200-byte JSON body) takes 391 bytes, an in-flight record 78.
const (
	recordVersion   = 1
	recordHeadLen   = 2 + tokenLen // version, state, token
	tokenLen        = 16           // raw bytes; the Record.Token string is its hex form
	flagBodyOmitted = 1 << 0
	maxStatus       = 999
)

// redisToken is a fencing token in the raw form the record head keeps.
type redisToken [tokenLen]byte

// newRedisToken returns a random fencing token.
func newRedisToken() redisToken {
	var t redisToken
	_, _ = rand.Read(t[:]) // crypto/rand.Read never fails (Go 1.24+)
	return t
}

// String returns the token as the 32 hex characters callers see.
func (t redisToken) String() string { return hex.EncodeToString(t[:]) }

// parseRedisToken reads a token returned by Acquire. A string that is not 32
// hex characters was not issued by a RedisStore, so it owns no key.
func parseRedisToken(s string) (redisToken, bool) {
	var t redisToken
	if hex.DecodedLen(len(s)) != tokenLen {
		return t, false
	}
	if _, err := hex.Decode(t[:], []byte(s)); err != nil {
		return t, false
	}
	return t, true
}

// ownerHead is the record head that token's in-flight record starts with:
// the scripts compare it against the first bytes of the stored value.
func ownerHead(t redisToken) string { return recordHead(InFlight, t) }

// completedHead is the head of the record token completed: a completion
// retried after a reply was lost finds its own record, not a stranger's.
func completedHead(t redisToken) string { return recordHead(Completed, t) }

func recordHead(state State, t redisToken) string {
	var b [recordHeadLen]byte
	b[0] = recordVersion
	b[1] = byte(state)
	copy(b[2:], t[:])
	return string(b[:])
}

// encodeRecord returns the stored form of rec in state, owned or written by
// token. rec's own State, Token and ExpiresAt are ignored: Redis keeps the
// expiry (PX).
func encodeRecord(state State, token redisToken, rec *Record) []byte {
	size := recordHeadLen + 3*binary.MaxVarintLen64 + len(rec.Fingerprint) + len(rec.Method) + len(rec.Path) +
		binary.MaxVarintLen64 + 1 + 2*binary.MaxVarintLen64 + len(rec.Body)
	for name, values := range rec.Header {
		size += 2*binary.MaxVarintLen64 + len(name)
		for _, v := range values {
			size += binary.MaxVarintLen64 + len(v)
		}
	}
	b := make([]byte, 0, size)
	b = append(b, recordVersion, byte(state))
	b = append(b, token[:]...)
	b = appendBytes(b, rec.Fingerprint)
	b = appendString(b, rec.Method)
	b = appendString(b, rec.Path)
	b = binary.AppendUvarint(b, uint64(max(rec.Status, 0)))
	var flags byte
	if rec.BodyOmitted {
		flags |= flagBodyOmitted
	}
	b = append(b, flags)
	b = binary.AppendUvarint(b, uint64(len(rec.Header)))
	for name, values := range rec.Header {
		b = appendString(b, name)
		b = binary.AppendUvarint(b, uint64(len(values)))
		for _, v := range values {
			b = appendString(b, v)
		}
	}
	if rec.BodyOmitted {
		return append(b, 0)
	}
	return appendBytes(b, rec.Body)
}

func appendBytes(b, p []byte) []byte {
	return append(binary.AppendUvarint(b, uint64(len(p))), p...)
}

func appendString(b []byte, s string) []byte {
	return append(binary.AppendUvarint(b, uint64(len(s))), s...)
}

// decodeRecord reads a stored record of at most maxSize bytes. Every length
// and count is checked against the bytes left, headers also against the
// bounds of redis_headers.go, before anything is sized by it, so a corrupt
// or foreign value costs a small multiple of its own size at most and
// returns an error wrapping ErrCorruptRecord, never a panic. The record's
// ExpiresAt is left for the caller, which knows the key's PTTL.
func decodeRecord(v string, maxSize int) (*Record, error) {
	if len(v) > maxSize {
		return nil, fmt.Errorf("%w: %d bytes, more than the maximum record size %d", ErrCorruptRecord, len(v), maxSize)
	}
	if len(v) < recordHeadLen {
		return nil, fmt.Errorf("%w: %d bytes, shorter than a record head", ErrCorruptRecord, len(v))
	}
	if v[0] != recordVersion {
		return nil, fmt.Errorf("%w: unknown format version %d", ErrCorruptRecord, v[0])
	}
	rec := &Record{State: State(v[1])}
	if rec.State != InFlight && rec.State != Completed {
		return nil, fmt.Errorf("%w: unknown state %d", ErrCorruptRecord, v[1])
	}
	rec.Token = hex.EncodeToString([]byte(v[2:recordHeadLen]))

	d := recordDecoder{rest: v[recordHeadLen:]}
	if fp := d.string("fingerprint"); fp != "" {
		rec.Fingerprint = []byte(fp)
	}
	rec.Method = d.string("method")
	rec.Path = d.string("path")
	status := d.uvarint("status")
	if d.err == nil && status > maxStatus {
		d.fail("status %d out of range", status)
	}
	rec.Status = int(status)
	flags := d.byte("flags")
	if d.err == nil && flags&^flagBodyOmitted != 0 {
		d.fail("unknown flags %#x", flags)
	}
	rec.BodyOmitted = flags&flagBodyOmitted != 0
	rec.Header = d.header()
	body := d.string("body")
	if d.err == nil && len(d.rest) > 0 {
		d.fail("%d bytes after the body", len(d.rest))
	}
	if d.err == nil && rec.BodyOmitted && body != "" {
		d.fail("%d body bytes on a record without body", len(body))
	}
	if d.err != nil {
		return nil, d.err
	}
	if body != "" {
		rec.Body = []byte(body)
	}
	return rec, nil
}

// recordDecoder reads the variable part of a record. After the first error
// every read returns a zero value, so callers check err once at the end.
type recordDecoder struct {
	rest string
	err  error
}

func (d *recordDecoder) fail(format string, args ...any) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: "+format, append([]any{ErrCorruptRecord}, args...)...)
	}
	d.rest = ""
}

func (d *recordDecoder) uvarint(what string) uint64 {
	if d.err != nil {
		return 0
	}
	var x uint64
	for i := 0; i < binary.MaxVarintLen64; i++ {
		if i >= len(d.rest) {
			d.fail("truncated %s", what)
			return 0
		}
		c := d.rest[i]
		if i == binary.MaxVarintLen64-1 && c > 1 {
			break // more than 64 bits
		}
		x |= uint64(c&0x7f) << (7 * i)
		if c < 0x80 {
			d.rest = d.rest[i+1:]
			return x
		}
	}
	d.fail("%s overflows", what)
	return 0
}

func (d *recordDecoder) byte(what string) byte {
	if d.err != nil {
		return 0
	}
	if len(d.rest) == 0 {
		d.fail("truncated %s", what)
		return 0
	}
	c := d.rest[0]
	d.rest = d.rest[1:]
	return c
}

// count reads a count of items that take at least minLen bytes each and
// checks it against the bytes left.
func (d *recordDecoder) count(what string, minLen int) int {
	n := d.uvarint(what)
	if d.err == nil && n > uint64(len(d.rest)/minLen) {
		d.fail("%s %d exceeds the %d bytes left", what, n, len(d.rest))
		return 0
	}
	return int(n)
}

// string reads a length-prefixed field. It returns a substring of the
// value, so text fields cost no allocation.
func (d *recordDecoder) string(what string) string {
	n := d.uvarint(what + " length")
	if d.err != nil {
		return ""
	}
	if n > uint64(len(d.rest)) {
		d.fail("%s length %d exceeds the %d bytes left", what, n, len(d.rest))
		return ""
	}
	s := d.rest[:n]
	d.rest = d.rest[n:]
	return s
}
