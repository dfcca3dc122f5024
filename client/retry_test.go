package client

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"0", 0, true},
		{"1", time.Second, true},
		{" 30 ", 30 * time.Second, true},
		{"99999999999999999999", time.Duration(1<<63 - 1), true}, // huge, capped later
		{"9223372037", time.Duration(1<<63 - 1), true},
		{"9223372036", 9223372036 * time.Second, true},
		{now.Add(90 * time.Second).Format(http.TimeFormat), 90 * time.Second, true},
		{now.Add(-time.Minute).Format(http.TimeFormat), 0, true},
		{"Sat, 01 Mar 2025 12:00:05 GMT", 5 * time.Second, true},
		{"-1", 0, false},
		{"1.5", 0, false},
		{"soon", 0, false},
		{"", 0, false},
	}
	for _, tc := range tests {
		d, ok := parseRetryAfter(tc.in, now)
		assert.Equal(t, tc.ok, ok, "%q", tc.in)
		assert.Equal(t, tc.want, d, "%q", tc.in)
	}
}

func TestRetryError(t *testing.T) {
	op := func(err error) error {
		return &net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", err)}
	}
	tests := []struct {
		err   error
		retry bool
	}{
		{io.EOF, true},
		{io.ErrUnexpectedEOF, true},
		{fmt.Errorf("wrapped: %w", io.EOF), true},
		{op(syscall.ECONNRESET), true},
		{op(syscall.ECONNREFUSED), true},
		{op(syscall.EPIPE), true},
		{&net.DNSError{Err: "timeout", IsTimeout: true}, true},
		{&net.DNSError{Err: "no such host", IsNotFound: true}, false},
		{context.DeadlineExceeded, true}, // a per-attempt timeout; the caller's context is checked apart
		{context.Canceled, false},
		{x509.UnknownAuthorityError{}, false},
		{errors.New("net/http: HTTP/1.x transport connection broken: malformed HTTP response"), true},
		{errors.New(`unsupported protocol scheme "gopher"`), false},
	}
	for _, tc := range tests {
		assert.Equal(t, tc.retry, retryError(tc.err), "%v", tc.err)
	}
}

func TestBackoffCeilingNeverOverflows(t *testing.T) {
	c := &config{baseDelay: time.Nanosecond, maxDelay: time.Duration(1<<63 - 1)}
	prev := time.Duration(0)
	for n := 1; n < 200; n++ {
		d := c.backoff(n)
		assert.GreaterOrEqual(t, d, prev, "attempt %d", n)
		prev = d
	}
	assert.Equal(t, c.maxDelay, prev)

	for range 1000 {
		d := fullJitter(10 * time.Millisecond)
		assert.True(t, d >= 0 && d <= 10*time.Millisecond, "%v", d)
	}
	assert.Zero(t, fullJitter(0))
}
