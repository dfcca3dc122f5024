package client

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
)

// body gives each attempt of a request the same bytes.
type body struct {
	first  io.ReadCloser                 // the body of the first attempt
	get    func() (io.ReadCloser, error) // a fresh copy; nil when it cannot be sent again
	length int64                         // the ContentLength to send
}

// newBody prepares the body of req for one or more attempts. A request with
// no body, or with GetBody, is replayable as it is. Otherwise, when the
// request may be retried, up to bodyCap bytes are read into memory: a body
// that fits is replayed from that buffer, a larger one is streamed once
// (what was read, then the rest) and get is nil. On error, req.Body is
// closed.
func newBody(req *http.Request, retryable bool, bodyCap int64) (*body, error) {
	switch {
	case req.Body == nil || req.Body == http.NoBody:
		return &body{first: req.Body, get: noBody, length: req.ContentLength}, nil
	case req.GetBody != nil:
		return &body{first: req.Body, get: req.GetBody, length: req.ContentLength}, nil
	case !retryable:
		return &body{first: req.Body, length: req.ContentLength}, nil
	}
	limit := bodyCap
	if limit < 1<<62 {
		limit++ // one byte more tells a body over the cap from one at it
	}
	buf, err := io.ReadAll(io.LimitReader(req.Body, limit))
	if err != nil {
		_ = req.Body.Close()
		return nil, fmt.Errorf("client: read request body: %w", err)
	}
	if int64(len(buf)) > bodyCap {
		rest := struct {
			io.Reader
			io.Closer
		}{io.MultiReader(bytes.NewReader(buf), req.Body), req.Body}
		return &body{first: rest, length: req.ContentLength}, nil
	}
	_ = req.Body.Close()
	if len(buf) == 0 {
		return &body{first: http.NoBody, get: noBody}, nil
	}
	get := func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(buf)), nil }
	first, _ := get()
	return &body{first: first, get: get, length: int64(len(buf))}, nil
}

func noBody() (io.ReadCloser, error) { return http.NoBody, nil }

// discard drains a little of a response that will not be returned, so that
// its connection can be reused, and closes it.
func discard(resp *http.Response) {
	if resp == nil || resp.Body == nil {
		return
	}
	_, _ = io.CopyN(io.Discard, resp.Body, 64<<10)
	_ = resp.Body.Close()
}
