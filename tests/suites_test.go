package tests

import (
	"testing"

	"github.com/ginidem/idempotency/internal/suite"
)

// The shared suites (internal/suite) on Postgres, under the names the root
// module runs them by on memory, Redis and Cluster (store_suite_test.go).

func TestStoreConformance(t *testing.T) { onPostgres(t, suite.Conformance) }
func TestBehaviour(t *testing.T)        { onPostgres(t, suite.Behaviour) }
func TestReliability(t *testing.T)      { onPostgres(t, suite.Reliability) }

func TestSpec4_DefaultAcceptsEveryUUIDVersion(t *testing.T) {
	onPostgres(t, suite.DefaultAcceptsEveryUUIDVersion)
}
func TestSpec4_UUIDv4Only(t *testing.T)            { onPostgres(t, suite.UUIDv4Only) }
func TestSpec8_DefaultQueryIsRaw(t *testing.T)     { onPostgres(t, suite.DefaultQueryIsRaw) }
func TestSpec34_CanonicalQuery(t *testing.T)       { onPostgres(t, suite.CanonicalQuery) }
func TestSpec34_SkipPredicate(t *testing.T)        { onPostgres(t, suite.SkipPredicate) }
func TestSpec34_ZeroStoresAreRefused(t *testing.T) { onPostgres(t, suite.ZeroStoresAreRefused) }
func TestSpec34_SkipDoesNotBufferTheBody(t *testing.T) {
	onPostgres(t, suite.SkipDoesNotBufferTheBody)
}
func TestSpec13_TheHandlersWorkOutlivesItsClient(t *testing.T) {
	onPostgres(t, suite.TheHandlersWorkOutlivesItsClient)
}
func TestSpec29_AnOperatorLooksUpAndForgetsAKey(t *testing.T) {
	onPostgres(t, suite.AnOperatorLooksUpAndForgetsAKey)
}
func TestSpec29_TheHandlerAsksNotToKeepItsAnswer(t *testing.T) {
	onPostgres(t, suite.TheHandlerAsksNotToKeepItsAnswer)
}
func TestFunctionReliability(t *testing.T) {
	onPostgres(t, suite.FunctionReliability)
}

// TestEverySharedSuiteRunsHere: the stubs above run every suite of
// internal/suite, so that a suite added there runs on these stores too.
func TestEverySharedSuiteRunsHere(t *testing.T) {
	suite.RequireEveryStub(t, "../internal/suite", "suites_test.go")
}
