package idempotency

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"

	"github.com/ginidem/idempotency/internal/wire"
)

// ErrCorruptRecord is returned by [RedisStore.Acquire] when the value under a
// record's key is not a record this package can read: corrupt, truncated,
// larger than the store's maximum record size, written by something else, or
// not a Redis string at all. The middleware answers such a request like any
// store failure, but its circuit breaker does not count it: it is one key's
// problem, not an outage. The value is left alone. Other stores' corrupt
// record errors wrap it.
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
//	             (bounded in number and size: see internal/wire)
//	             uvarint length + body
//
// A record must end exactly after its body, so a truncated value or one
// with trailing bytes is refused.
//
// A key deleted while in flight holds a marker instead, until the deleted
// request's lease would have ended, and at least a day: the two bytes
// version (1), state Forgotten (3). It is no record: Acquire takes the key
// as if it held nothing, Get and Delete find no record, and no token owns
// it, so the deleted request can no longer complete, release or extend it
// (see [RedisStore.Delete]). decodeRecord refuses it with an error that
// wraps [ErrNoRecord].
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
	// stateForgotten is the state byte of the marker of a key deleted
	// while in flight; it is no State a Record has.
	stateForgotten = 3
)

// forgottenValue is the whole value under a key deleted while in flight.
const forgottenValue = string(rune(recordVersion)) + string(rune(stateForgotten))

// inFlightPrefix is how every in-flight record starts: its version and
// state, before the token.
const inFlightPrefix = string(rune(recordVersion)) + string(rune(InFlight))

// errForgotten is what decodeRecord says of the marker of a key deleted
// while in flight: the key holds no record.
var errForgotten = fmt.Errorf("%w: the key was deleted while in flight", ErrNoRecord)

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
// the scripts compare it against the first bytes of the stored value. (A
// completed record starts with the same head, state Completed: the
// complete script finds a record its token already stored by it.)
func ownerHead(t redisToken) string {
	var b [recordHeadLen]byte
	b[0] = recordVersion
	b[1] = byte(InFlight)
	copy(b[2:], t[:])
	return string(b[:])
}

// encodeRecord returns the stored form of rec in state, owned or written by
// token. rec's own State, Token and ExpiresAt are ignored: Redis keeps the
// expiry (PX).
func encodeRecord(state State, token redisToken, rec *Record) []byte {
	size := recordHeadLen + 3*binary.MaxVarintLen64 + len(rec.Fingerprint) + len(rec.Method) + len(rec.Path) +
		binary.MaxVarintLen64 + 1 + wire.HeaderSize(rec.Header) + binary.MaxVarintLen64 + len(rec.Body)
	b := make([]byte, 0, size)
	b = append(b, recordVersion, byte(state))
	b = append(b, token[:]...)
	b = appendRecordFields(b, rec)
	b = wire.AppendHeader(b, rec.Header)
	if rec.BodyOmitted {
		return append(b, 0)
	}
	return wire.AppendBytes(b, rec.Body)
}

// appendRecordFields appends what both stores' encodings share, after
// their heads: the fingerprint, method and path (each length-prefixed),
// the status and the flags byte.
func appendRecordFields(b []byte, rec *Record) []byte {
	b = wire.AppendBytes(b, rec.Fingerprint)
	b = wire.AppendString(b, rec.Method)
	b = wire.AppendString(b, rec.Path)
	b = binary.AppendUvarint(b, uint64(max(rec.Status, 0)))
	var flags byte
	if rec.BodyOmitted {
		flags |= flagBodyOmitted
	}
	return append(b, flags)
}

// decodeRecord reads a stored record of at most maxSize bytes. Every length
// and count is checked against the bytes left, headers also against the
// bounds of internal/wire, before anything is sized by it, so a corrupt
// or foreign value costs a small multiple of its own size at most and
// returns an error wrapping ErrCorruptRecord, never a panic. The marker of
// a key deleted while in flight returns an error wrapping ErrNoRecord. The
// record's ExpiresAt is left for the caller, which knows the key's PTTL.
func decodeRecord(v string, maxSize int) (*Record, error) {
	if len(v) > maxSize {
		return nil, fmt.Errorf("%w: %d bytes, more than the maximum record size %d", ErrCorruptRecord, len(v), maxSize)
	}
	if v == forgottenValue {
		return nil, errForgotten
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

	d := wire.Decoder{Rest: v[recordHeadLen:], Corrupt: ErrCorruptRecord}
	if fp := d.String("fingerprint"); fp != "" {
		rec.Fingerprint = []byte(fp)
	}
	rec.Method = d.String("method")
	rec.Path = d.String("path")
	status := d.Uvarint("status")
	if d.Err == nil && status > maxStatus {
		d.Fail("status %d out of range", status)
	}
	rec.Status = int(status)
	flags := d.Byte("flags")
	if d.Err == nil && flags&^flagBodyOmitted != 0 {
		d.Fail("unknown flags %#x", flags)
	}
	rec.BodyOmitted = flags&flagBodyOmitted != 0
	rec.Header = d.Header()
	body := d.String("body")
	if d.Err == nil && len(d.Rest) > 0 {
		d.Fail("%d bytes after the body", len(d.Rest))
	}
	if d.Err == nil && rec.BodyOmitted && body != "" {
		d.Fail("%d body bytes on a record without body", len(body))
	}
	if d.Err != nil {
		return nil, d.Err
	}
	if body != "" {
		rec.Body = []byte(body)
	}
	return rec, nil
}

// withoutBody returns a copy of rec without its body and with header h: a
// record that cannot be replayed, whose duplicates get 409 with the
// Location it keeps.
func withoutBody(rec *Record, h http.Header) *Record {
	r := *rec
	r.Body, r.BodyOmitted, r.Header = nil, true, h
	return &r
}
