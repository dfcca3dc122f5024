package idempotency

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"sync"
)

// bodyReader gives the handler the body the middleware read, byte for byte.
type bodyReader struct{ bytes.Reader }

// Close implements io.Closer; the server closes the real body.
func (*bodyReader) Close() error { return nil }

// errBodyTooLarge refuses a keyed request whose body is over the cap.
var errBodyTooLarge = errors.New("the request body is larger than this endpoint accepts with an idempotency key")

const (
	// firstBodyChunk is the most a body buffer holds before any byte has
	// arrived, whatever Content-Length declares: memory follows the bytes
	// received, so a connection that declares 1 MiB and sends one byte
	// costs kilobytes.
	firstBodyChunk = 16 << 10
	// bodyGrowth is how much a body buffer grows when it is full: memory
	// stays within bodyGrowth times what arrived, and a 1 MiB body is
	// copied only once on the way (16 KiB, 128 KiB, then its full size).
	bodyGrowth = 8
	// maxBodyDrain is how much of a body over the cap is read and discarded
	// before the 413 is sent, so that the client, still writing, reads its
	// answer instead of a reset connection. A larger excess is not drained:
	// the connection is closed after the answer.
	maxBodyDrain = 4 << 20
)

// bodyBuffers recycles the buffers a body passes through on its way to its
// full size, so that reading in steps costs no more garbage than reading in
// one. Each middleware has its own.
type bodyBuffers struct {
	pools [2]sync.Pool // of *[]byte, with capacity firstBodyChunk and firstBodyChunk*bodyGrowth
}

// get returns an empty buffer of capacity size, from its pool when size is
// a pooled size.
func (b *bodyBuffers) get(size int64) []byte {
	if p := b.pool(int(size)); p != nil {
		if buf, _ := p.Get().(*[]byte); buf != nil {
			return (*buf)[:0]
		}
	}
	return make([]byte, 0, size)
}

// pool returns the pool of buffers of capacity size, or nil.
func (b *bodyBuffers) pool(size int) *sync.Pool {
	for i, c := 0, firstBodyChunk; i < len(b.pools); i, c = i+1, c*bodyGrowth {
		if size == c {
			return &b.pools[i]
		}
	}
	return nil
}

// put returns a buffer of a pooled size to its pool.
func (b *bodyBuffers) put(buf []byte) {
	if p := b.pool(cap(buf)); p != nil {
		p.Put(&buf)
	}
}

// readBody reads the whole body once, up to maxLen bytes. The buffer grows
// with the bytes received, bodyGrowth times at each step, never past the
// declared Content-Length or the cap: memory follows what arrived, not what
// Content-Length declares.
func (b *bodyBuffers) readBody(r *http.Request, maxLen int64) ([]byte, error) {
	if r.Body == nil || r.Body == http.NoBody {
		return nil, nil
	}
	if r.ContentLength > maxLen {
		return nil, drainExcess(r, r.ContentLength)
	}
	limit := maxLen + 1 // room to see EOF, or one byte too many
	if r.ContentLength >= 0 {
		limit = r.ContentLength + 1
	}
	var buf []byte
	if limit <= firstBodyChunk {
		buf = make([]byte, 0, limit) // small and declared: exactly its size
	} else {
		buf = b.get(firstBodyChunk)
	}
	for {
		if len(buf) == cap(buf) {
			buf = b.grow(buf, limit, maxLen)
		}
		n, err := r.Body.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if int64(len(buf)) > maxLen {
			b.put(buf)
			return nil, drainExcess(r, -1)
		}
		if err == io.EOF {
			return b.keep(buf), nil
		}
		if err != nil {
			b.put(buf)
			var tooLarge *http.MaxBytesError
			if errors.As(err, &tooLarge) {
				return nil, errBodyTooLarge
			}
			return nil, err
		}
	}
}

// grow returns buf with room for more bytes: bodyGrowth times its capacity,
// but never past limit unless the body runs past it, and never past one
// byte over the cap. A pooled buffer goes back to its pool.
func (b *bodyBuffers) grow(buf []byte, limit, maxLen int64) []byte {
	c := int64(cap(buf))
	next := max(min(bodyGrowth*c, maxLen+1), c+1)
	if c < limit {
		next = min(next, limit)
	}
	grown := append(b.get(next), buf...)
	b.put(buf)
	return grown
}

// keep returns the body to hand to the handler: a pooled buffer is copied
// out, at its exact size, and goes back to its pool.
func (b *bodyBuffers) keep(buf []byte) []byte {
	if b.pool(cap(buf)) == nil {
		return buf // not a pooled size
	}
	body := append([]byte(nil), buf...)
	b.put(buf)
	return body
}

// drainExcess reads and discards the rest of a body over the cap, up to
// maxBodyDrain, so that the client receives its 413 rather than a reset:
// answering while the client still writes, then closing, resets the
// connection and loses the answer. declared is the Content-Length, or -1.
func drainExcess(r *http.Request, declared int64) error {
	if declared > maxBodyDrain {
		return errBodyTooLarge // the server closes the connection after the answer
	}
	io.CopyN(io.Discard, r.Body, maxBodyDrain)
	return errBodyTooLarge
}
