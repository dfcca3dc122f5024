package suite

import (
	"context"
	"net/http"
	"testing"
	"time"

	idem "github.com/ginidem/idempotency"
	"github.com/ginidem/idempotency/internal/idemtest"
)

// Harness builds a fresh, empty store for one test, with a way to move
// the store's clock forward.
type Harness struct {
	Name string
	New  func(t *testing.T) (store idem.Store, advance func(time.Duration))
	// Tx: the store is an idem.TxStore, so keyed requests run in a
	// transaction and their responses are held until it commits. A case
	// whose answer differs there by design asserts the TxStore's answer;
	// none is skipped.
	Tx bool
}

// MemoryHarness is the memory store, with a fake clock.
func MemoryHarness(opts ...idem.MemoryStoreOption) Harness {
	return Harness{Name: "memory", New: func(t *testing.T) (idem.Store, func(time.Duration)) {
		clock := idemtest.NewFakeClock()
		return idem.NewMemoryStore(append([]idem.MemoryStoreOption{idem.WithClock(clock.Now)}, opts...)...), clock.Advance
	}}
}

// StoreCtx is a context for one store call, with a deadline.
func StoreCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// TestClaim is the claim the store-level tests acquire keys with.
var TestClaim = &idem.Record{Fingerprint: []byte("fp-1"), Method: http.MethodPost, Path: "/things"}

// behaviour is one SPEC.md point, proved over HTTP against one store.
type behaviour struct {
	name string
	run  func(t *testing.T, h Harness)
}

// runBehaviours runs each case of table as a subtest, on the store of h.
func runBehaviours(t *testing.T, h Harness, table []behaviour) {
	for _, b := range table {
		t.Run(b.name, func(t *testing.T) { b.run(t, h) })
	}
}
