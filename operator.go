package idempotency

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
)

// ErrNoRecord is returned by [Store.Get] and [Store.Delete], and so by
// [Lookup] and [Forget], when the store keeps no record under the key: the
// key was never used by that caller, has expired, or the scope or key do
// not match what the middleware saw.
var ErrNoRecord = errors.New("idempotency: no record under this key")

// StoreKey returns the key under which the middleware keeps the record of
// the idempotency key a caller sent: scope is the caller's scope as the
// scope function returns it (the user id [ScopeFromContext] reads, or the
// whole Authorization header value with the default scope), and key the
// idempotency key as sent. A UUID is compared in its canonical form, lower
// case. Only a hash of the two is kept.
func StoreKey(scope, key string) string {
	h := &hasher{Hash: sha256.New()}
	var scopeSum [sha256.Size]byte
	var hexSum [2 * sha256.Size]byte
	h.storeKey(scope, canonicalKey(key), &scopeSum, &hexSum)
	return string(hexSum[:])
}

// storeKey writes into scopeSum the SHA-256 of scope, and into dst the hex
// store key of canonical key under scope: the SHA-256 of scopeSum and the
// key.
func (h *hasher) storeKey(scope, key string, scopeSum *[sha256.Size]byte, dst *[2 * sha256.Size]byte) {
	h.Reset()
	h.WriteString(scope)
	h.Sum(scopeSum[:0])
	h.Reset()
	h.Write(scopeSum[:])
	h.WriteString(key)
	hex.Encode(dst[:], h.Sum(h.scratch[:0]))
}

// Lookup returns the record store keeps for the idempotency key that a
// caller with scope sent (see [StoreKey]): its state, status, headers and
// body, when it was created and when it expires. It returns [ErrNoRecord]
// when there is none. For operators answering a ticket ("key 0b0b2e0c-… of
// customer 42 failed"):
//
//	rec, err := idempotency.Lookup(ctx, store, "42", "0b0b2e0c-5d5a-4c1e-9f3e-2f7b6b0c9a10")
func Lookup(ctx context.Context, store Store, scope, key string) (*Record, error) {
	return store.Get(ctx, StoreKey(scope, key))
}

// Forget removes the record store keeps for the idempotency key that a
// caller with scope sent, in flight or completed, so that the caller's
// next request with that key runs as new. It returns [ErrNoRecord] when
// there is none. A request still running under a forgotten in-flight
// record can no longer complete it. A store with a local cache forgets the
// record in this process's cache; other processes may replay it until it
// leaves theirs (at most the cache's maximum age).
func Forget(ctx context.Context, store Store, scope, key string) error {
	return store.Delete(ctx, StoreKey(scope, key))
}
