package pgstore

import (
	"fmt"
	"net/http"

	"github.com/ginidem/idempotency"
	"github.com/ginidem/idempotency/internal/wire"
)

// ErrCorruptRecord is returned by [Store.Acquire] when the row under a key
// is not a record this package can read: an unknown state or status, a
// header value that does not decode within its bounds, a body larger than
// the store's maximum (see [WithMaxBodySize]), or more than 2 MiB of
// fingerprint, method, path and headers. Oversized values are refused
// without reading them out of Postgres. The middleware answers such a request
// like any store failure, but it is no outage: it wraps
// [idempotency.ErrCorruptRecord], which the middleware's circuit breaker
// does not count. The row is left alone until it expires or is deleted.
var ErrCorruptRecord = fmt.Errorf("pgstore: corrupt record: %w", idempotency.ErrCorruptRecord)

// headerVersion is the first byte of an encoded header column.
const headerVersion = 1

// The header column holds the replayable headers in a compact binary form,
// version 1, rather than jsonb: the store only ever reads the column back
// whole, and the binary form needs no escaping and is decoded in one pass.
//
//	byte     version (1)
//	then     the headers as internal/wire encodes them: the number of
//	         names, then per name its length and bytes, the number of
//	         values, and per value its length and bytes
//
// A record without headers stores NULL. The headers are bounded in number
// and size (see internal/wire): Complete never writes a header set beyond
// the bounds (it keeps such a record without its body and with its
// Location alone), and the decoder refuses one before sizing anything by it.
func encodeHeader(h http.Header) []byte {
	if len(h) == 0 {
		return nil
	}
	b := make([]byte, 0, 1+wire.HeaderSize(h))
	return wire.AppendHeader(append(b, headerVersion), h)
}

// decodeHeader reads a header column. A corrupt or foreign value costs a
// small multiple of its own size at most and returns an error wrapping
// ErrCorruptRecord, never a panic.
func decodeHeader(b []byte) (http.Header, error) {
	if len(b) == 0 {
		return nil, nil
	}
	if b[0] != headerVersion {
		return nil, fmt.Errorf("%w: unknown header format version %d", ErrCorruptRecord, b[0])
	}
	d := wire.Decoder{Rest: string(b[1:]), Corrupt: ErrCorruptRecord}
	h := d.Header()
	if d.Err == nil && len(d.Rest) > 0 {
		d.Fail("%d bytes after the headers", len(d.Rest))
	}
	if d.Err != nil {
		return nil, d.Err
	}
	return h, nil
}
