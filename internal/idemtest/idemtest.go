// Package idemtest holds what the tests of several packages share: a store that
// fails on demand, a Gin engine with the real middleware to drive over
// httptest, and a fake clock. Only tests import it.
package idemtest

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/ginidem/idempotency"
)

// ErrDown is the error of a [FaultStore] call told to fail.
var ErrDown = errors.New("idemtest: store down")

// FaultStore is an idempotency.Store over a MemoryStore whose calls fail
// on demand. Not being a *MemoryStore, it gets the middleware's store
// deadline and circuit breaker, like a remote store.
type FaultStore struct {
	inner *idempotency.MemoryStore
	// FailAcquire makes Acquire return ErrDown.
	FailAcquire atomic.Bool
	// FailRelease makes Release return ErrDown.
	FailRelease atomic.Bool
	// LoseComplete makes Complete return ErrNotOwner, as when another
	// request took the key after the lease ran out.
	LoseComplete atomic.Bool
}

var _ idempotency.Store = (*FaultStore)(nil)

// NewFaultStore returns a FaultStore that does not fail yet.
func NewFaultStore() *FaultStore { return &FaultStore{inner: idempotency.NewMemoryStore()} }

// Acquire implements idempotency.Store.
func (s *FaultStore) Acquire(ctx context.Context, key string, claim *idempotency.Record, lease time.Duration) (string, *idempotency.Record, error) {
	if s.FailAcquire.Load() {
		return "", nil, ErrDown
	}
	return s.inner.Acquire(ctx, key, claim, lease)
}

// Complete implements idempotency.Store.
func (s *FaultStore) Complete(ctx context.Context, key, token string, rec *idempotency.Record, ttl time.Duration) error {
	if s.LoseComplete.Load() {
		return idempotency.ErrNotOwner
	}
	return s.inner.Complete(ctx, key, token, rec, ttl)
}

// Release implements idempotency.Store.
func (s *FaultStore) Release(ctx context.Context, key, token string) error {
	if s.FailRelease.Load() {
		return ErrDown
	}
	return s.inner.Release(ctx, key, token)
}

// Extend implements idempotency.Store.
func (s *FaultStore) Extend(ctx context.Context, key, token string, lease time.Duration) error {
	return s.inner.Extend(ctx, key, token, lease)
}

// Delete implements idempotency.Store.
func (s *FaultStore) Delete(ctx context.Context, key string) error { return s.inner.Delete(ctx, key) }

// Get passes through.
func (s *FaultStore) Get(ctx context.Context, key string) (*idempotency.Record, error) {
	return s.inner.Get(ctx, key)
}

// Engine returns a Gin engine that runs mws on every request, matched or
// not, and serves POST /orders/:id with handler. Gin reports the route of
// a matched request as "/orders/:id".
func Engine(handler gin.HandlerFunc, mws ...gin.HandlerFunc) *gin.Engine {
	gin.SetMode(gin.TestMode)
	r := gin.New()
	r.Use(mws...)
	r.POST("/orders/:id", handler)
	return r
}

// Created answers 201 with the order id, or with the status in the query
// parameter "status" when there is one.
func Created(c *gin.Context) {
	status := http.StatusCreated
	if s, err := strconv.Atoi(c.Query("status")); err == nil {
		status = s
	}
	c.JSON(status, gin.H{"id": c.Param("id")})
}

// Post sends POST path with the idempotency key (none when empty) and body
// through h, as the caller "alice", and returns the recorded answer.
func Post(h http.Handler, path, key, body string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(http.MethodPost, path, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer alice")
	req.Header.Set("Content-Type", "application/json")
	if key != "" {
		req.Header.Set("Idempotency-Key", key)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	return w
}

// FakeClock is a manually advanced clock for stores that take one, such as
// idempotency.WithClock: it starts on 2026-01-01 and moves only with
// Advance.
type FakeClock struct{ ns atomic.Int64 }

// NewFakeClock returns a FakeClock at 2026-01-01 00:00 UTC.
func NewFakeClock() *FakeClock {
	c := &FakeClock{}
	c.ns.Store(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano())
	return c
}

// Now returns the clock's time.
func (c *FakeClock) Now() time.Time { return time.Unix(0, c.ns.Load()) }

// Advance moves the clock forward by d.
func (c *FakeClock) Advance(d time.Duration) { c.ns.Add(int64(d)) }
