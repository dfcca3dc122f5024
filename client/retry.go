package client

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// idempotentMethod reports whether RFC 9110 (section 9.2.2) calls method
// idempotent, so that a request of it may be repeated without a key.
func idempotentMethod(method string) bool {
	switch method {
	case "", http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace,
		http.MethodPut, http.MethodDelete:
		return true
	}
	return false
}

// retryStatus reports whether an answer with this status is worth another
// attempt, and the Retry-After value when the answer is retried because of
// it.
//
//	5xx except 501          retry (Retry-After honoured when present)
//	429                     retry (Retry-After honoured when present)
//	409 with Retry-After    retry after it (the draft's "still in flight")
//	anything else           final
func retryStatus(resp *http.Response) (retry bool, after string) {
	after = resp.Header.Get("Retry-After")
	switch {
	case resp.StatusCode == http.StatusNotImplemented:
		return false, ""
	case resp.StatusCode >= 500 && resp.StatusCode <= 599,
		resp.StatusCode == http.StatusTooManyRequests:
		return true, after
	case resp.StatusCode == http.StatusConflict:
		return after != "", after
	}
	return false, ""
}

// retryError reports whether a transport error may be a lost request or a
// lost answer, worth another attempt: a reset, refused or aborted connection,
// an unexpected EOF, a timeout, or another error of the network layer.
// Errors that another attempt cannot cure (a bad URL or scheme, a
// certificate the client does not trust) and cancellations are final.
func retryError(err error) bool {
	var (
		certInvalid  x509.CertificateInvalidError
		unknownAuth  x509.UnknownAuthorityError
		hostname     x509.HostnameError
		certVerify   *tls.CertificateVerificationError
		recordHeader tls.RecordHeaderError
		netErr       net.Error
		dnsErr       *net.DNSError
		opErr        *net.OpError
	)
	switch {
	case errors.As(err, &netErr) && netErr.Timeout():
		return true // a deadline of the caller's context was checked before
	case errors.Is(err, context.Canceled):
		return false
	case errors.As(err, &certInvalid), errors.As(err, &unknownAuth), errors.As(err, &hostname),
		errors.As(err, &certVerify), errors.As(err, &recordHeader):
		return false
	case errors.As(err, &dnsErr):
		return dnsErr.IsTimeout || dnsErr.IsTemporary
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, net.ErrClosed),
		errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.ECONNREFUSED),
		errors.Is(err, syscall.ECONNABORTED), errors.Is(err, syscall.EPIPE):
		return true
	case errors.As(err, &opErr):
		return true
	}
	// net/http reports a connection closed before the answer in words only.
	msg := err.Error()
	return strings.Contains(msg, "server closed idle connection") ||
		strings.Contains(msg, "transport connection broken")
}

// parseRetryAfter reads a Retry-After value, delay-seconds or an HTTP-date
// (RFC 9110, section 10.2.3), as a wait from now. ok is false when the
// value is neither.
func parseRetryAfter(v string, now time.Time) (d time.Duration, ok bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	const forever = time.Duration(1<<63 - 1)
	if secs, err := strconv.ParseUint(v, 10, 63); err == nil || errors.Is(err, strconv.ErrRange) {
		if err != nil || secs > uint64(forever/time.Second) {
			return forever, true // capped by the caller
		}
		return time.Duration(secs) * time.Second, true
	}
	t, err := http.ParseTime(v)
	if err != nil {
		return 0, false
	}
	return max(t.Sub(now), 0), true
}

// backoff is the capped exponential ceiling after attempt n (1-based):
// min(maxDelay, base·2^(n-1)).
func (c *config) backoff(n int) time.Duration {
	d := c.baseDelay
	for i := 1; i < n; i++ {
		if d > c.maxDelay/2 {
			return c.maxDelay
		}
		d *= 2
	}
	return min(d, c.maxDelay)
}

// fullJitter returns a random duration in [0, n].
func fullJitter(n time.Duration) time.Duration {
	if n <= 0 {
		return 0
	}
	return rand.N(n + 1)
}

// sleepCtx waits for d or until ctx is done, whichever comes first; it
// returns the context's error in the second case.
func sleepCtx(ctx context.Context, d time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
