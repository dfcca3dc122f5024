// Package suite holds the tests that every store must pass, and the HTTP
// test app they drive: the store conformance table, the behaviour table,
// the reliability table, and the other tests that run once per store.
//
// Each exported suite is a func(*testing.T, Harness). The root module runs
// it on the stores that need no other module (memory, Redis, Redis
// Cluster) from a TestXxx of the same name in store_suite_test.go, and the
// test-only module in tests/ runs it on Postgres (pgstore, with and
// without its local cache) from a TestXxx of the same name in
// tests/suites_test.go. A new test that must hold on every store goes
// here, with a TestXxx in both files.
//
// Only tests import it: it lives in the root module so that the suites
// need no Postgres, and in internal/ so that no user can.
package suite
