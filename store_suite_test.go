package idempotency_test

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/gin-gonic/gin"

	idem "github.com/ginidem/idempotency"
	"github.com/ginidem/idempotency/internal/idemtest"
	"github.com/ginidem/idempotency/internal/suite"
)

func TestMain(m *testing.M) {
	gin.SetMode(gin.TestMode)
	os.Exit(m.Run())
}

// The shared suites (internal/suite) run here on every store this module
// has: memory, a real Redis (miniredis without redis-server) and, when
// IDEM_REDIS_CLUSTER is set, a Redis Cluster. The test-only module in
// tests/ runs the same suites, under the same names, on Postgres.

func TestStoreConformance(t *testing.T) { onEveryStore(t, suite.Conformance) }
func TestBehaviour(t *testing.T)        { onEveryStore(t, suite.Behaviour) }
func TestReliability(t *testing.T)      { onEveryStore(t, suite.Reliability) }

func TestSpec4_DefaultAcceptsEveryUUIDVersion(t *testing.T) {
	onEveryStore(t, suite.DefaultAcceptsEveryUUIDVersion)
}
func TestSpec4_UUIDv4Only(t *testing.T)            { onEveryStore(t, suite.UUIDv4Only) }
func TestSpec8_DefaultQueryIsRaw(t *testing.T)     { onEveryStore(t, suite.DefaultQueryIsRaw) }
func TestSpec34_CanonicalQuery(t *testing.T)       { onEveryStore(t, suite.CanonicalQuery) }
func TestSpec34_SkipPredicate(t *testing.T)        { onEveryStore(t, suite.SkipPredicate) }
func TestSpec34_ZeroStoresAreRefused(t *testing.T) { onEveryStore(t, suite.ZeroStoresAreRefused) }
func TestSpec34_SkipDoesNotBufferTheBody(t *testing.T) {
	onEveryStore(t, suite.SkipDoesNotBufferTheBody)
}
func TestSpec13_TheHandlersWorkOutlivesItsClient(t *testing.T) {
	onEveryStore(t, suite.TheHandlersWorkOutlivesItsClient)
}
func TestSpec29_AnOperatorLooksUpAndForgetsAKey(t *testing.T) {
	onEveryStore(t, suite.AnOperatorLooksUpAndForgetsAKey)
}
func TestSpec29_TheHandlerAsksNotToKeepItsAnswer(t *testing.T) {
	onEveryStore(t, suite.TheHandlerAsksNotToKeepItsAnswer)
}
func TestFunctionReliability(t *testing.T) {
	onEveryStore(t, suite.FunctionReliability)
}

// TestEverySharedSuiteRunsHere: the stubs above run every suite of
// internal/suite, so that a suite added there runs on these stores too.
func TestEverySharedSuiteRunsHere(t *testing.T) {
	suite.RequireEveryStub(t, "internal/suite", "store_suite_test.go")
}

// storeHarness builds a fresh, empty store for one test, with a way to move
// the store's clock forward: suite.Harness, as this package's tests build
// it (redisHarnesses in redis_store_test.go).
type storeHarness struct {
	name string
	new  func(t *testing.T) (store idem.Store, advance func(time.Duration))
	tx   bool // the store is an idem.TxStore (see suite.Harness)
}

func (h storeHarness) suite() suite.Harness {
	return suite.Harness{Name: h.name, New: h.new, Tx: h.tx}
}

// fakeClock is a manually advanced clock.
type fakeClock = idemtest.FakeClock

func newFakeClock() *fakeClock { return idemtest.NewFakeClock() }

func memoryHarness(opts ...idem.MemoryStoreOption) storeHarness {
	h := suite.MemoryHarness(opts...)
	return storeHarness{name: h.Name, new: h.New}
}

// allStores lists every store the shared suites run on here: memory
// always, and the Redis ones (see redis_store_test.go).
func allStores(t *testing.T) []storeHarness {
	return append([]storeHarness{memoryHarness()}, redisHarnesses(t)...)
}

// forEachStore runs fn as a subtest once per store.
func forEachStore(t *testing.T, fn func(t *testing.T, h storeHarness)) {
	for _, h := range allStores(t) {
		t.Run(h.name, func(t *testing.T) { fn(t, h) })
	}
}

// onEveryStore runs a shared suite as a subtest once per store.
func onEveryStore(t *testing.T, run func(*testing.T, suite.Harness)) {
	forEachStore(t, func(t *testing.T, h storeHarness) { run(t, h.suite()) })
}

func storeCtx(t *testing.T) context.Context { return suite.StoreCtx(t) }

var testClaim = suite.TestClaim
