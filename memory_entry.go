package idempotency

import (
	"encoding/binary"
	"net/http"
	"time"
	"unsafe"

	"github.com/ginidem/idempotency/internal/wire"
)

// How a MemoryStore keeps a record: pointer-light, so that a store full of
// records costs the garbage collector little. An entry holds the record
// encoded in one byte slice, which the collector never scans, and only its
// key, its state, its lease or lifetime and its ring links besides. A
// completed record is decoded on its first read (a replay) and the decoded
// form is kept for the next ones; its strings and body are views of the
// encoded bytes, which never change once written.

// memoryEntry is one record of a MemoryStore.
type memoryEntry struct {
	key       string
	state     State
	expiresAt time.Time
	created   int64   // when the key was acquired, in Unix nanoseconds
	blob      []byte  // the record, encoded by encodeMemoryRecord; never changed once set
	decoded   *Record // the completed record, decoded on its first read, or nil
	size      int64   // what the entry counts against the byte bound
	prev      *memoryEntry
	next      *memoryEntry // links in the ring of its state: in flight or completed
}

// memoryEntryOverhead approximates an entry's memory beside its key and
// blob: the entry itself and its map slot. memoryDecodedOverhead
// approximates a decoded record beside the blob it views: the Record, its
// header map and value slice.
const (
	memoryEntryOverhead   = 128
	memoryDecodedOverhead = 256
)

// newMemoryEntry returns the entry of rec, in state, owned or written by
// token, until expiresAt.
func newMemoryEntry(key string, state State, token string, rec *Record, expiresAt time.Time) *memoryEntry {
	e := &memoryEntry{key: key}
	e.set(state, token, rec, expiresAt)
	return e
}

// set replaces the entry's record.
func (e *memoryEntry) set(state State, token string, rec *Record, expiresAt time.Time) {
	e.state, e.expiresAt, e.decoded = state, expiresAt, nil
	e.blob = encodeMemoryRecord(token, rec)
	e.size = memoryEntryOverhead + int64(len(e.key)+cap(e.blob))
	if state == Completed { // counted before it is decoded, so a replay never grows the store
		e.size += memoryDecodedOverhead
	}
}

// ownedBy reports whether the entry's record was made by token; the token
// is the blob's first field.
func (e *memoryEntry) ownedBy(token string) bool {
	r := memoryReader{e.blob}
	return r.string() == token
}

// encodeMemoryRecord writes rec, owned or written by token, as: token,
// fingerprint, method, path (each length-prefixed), status, flags, the
// header (name count, value count, then per name its name, value count and
// values), and the body to the end.
func encodeMemoryRecord(token string, rec *Record) []byte {
	values := 0
	for _, vs := range rec.Header {
		values += len(vs)
	}
	size := 8*binary.MaxVarintLen64 + len(token) + len(rec.Fingerprint) + len(rec.Method) + len(rec.Path) +
		wire.HeaderSize(rec.Header) + len(rec.Body)
	b := make([]byte, 0, size)
	b = wire.AppendString(b, token)
	b = appendRecordFields(b, rec)
	b = binary.AppendUvarint(b, uint64(len(rec.Header)))
	b = binary.AppendUvarint(b, uint64(values))
	for name, vs := range rec.Header {
		b = wire.AppendString(b, name)
		b = binary.AppendUvarint(b, uint64(len(vs)))
		for _, v := range vs {
			b = wire.AppendString(b, v)
		}
	}
	return append(b, rec.Body...)
}

// decode returns the record the entry holds. Its strings, fingerprint and
// body are views of the blob: read-only, like every record a Store returns.
func (e *memoryEntry) decode() *Record {
	r := memoryReader{e.blob}
	rec := &Record{State: e.state, ExpiresAt: e.expiresAt}
	rec.Token = r.string()
	rec.Fingerprint = r.bytes()
	rec.Method = r.string()
	rec.Path = r.string()
	rec.Status = r.uvarint()
	rec.BodyOmitted = r.byte()&flagBodyOmitted != 0
	// Every name and value takes a byte at least: the counts are bounded by
	// the bytes left before anything is sized by them.
	names, values := min(r.uvarint(), len(r.rest)), min(r.uvarint(), len(r.rest))
	if names > 0 {
		rec.Header = make(http.Header, names)
		all := make([]string, values)
		for range names {
			name := r.string()
			n := min(r.uvarint(), len(all))
			vs := all[:n:n]
			for i := range vs {
				vs[i] = r.string()
			}
			rec.Header[name], all = vs, all[n:]
		}
	}
	if n := len(r.rest); n > 0 {
		// No spare capacity: the blob is sized by an estimate, and an append
		// to one reader's Body must not write into bytes every replay shares.
		rec.Body = r.rest[:n:n]
	}
	return rec
}

// memoryReader reads what encodeMemoryRecord wrote. The store reads only
// blobs it wrote, but a short read still yields zero values, never a panic.
type memoryReader struct{ rest []byte }

func (r *memoryReader) uvarint() int {
	v, n := binary.Uvarint(r.rest)
	if n <= 0 || v > 1<<31 {
		r.rest = nil
		return 0
	}
	r.rest = r.rest[n:]
	return int(v)
}

func (r *memoryReader) byte() byte {
	if len(r.rest) == 0 {
		return 0
	}
	c := r.rest[0]
	r.rest = r.rest[1:]
	return c
}

func (r *memoryReader) bytes() []byte {
	n := min(r.uvarint(), len(r.rest))
	if n == 0 {
		return nil
	}
	p := r.rest[:n:n]
	r.rest = r.rest[n:]
	return p
}

// string returns the next field as a view of the blob, without a copy.
func (r *memoryReader) string() string {
	p := r.bytes()
	return unsafe.String(unsafe.SliceData(p), len(p))
}
