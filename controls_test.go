package idempotency_test

import (
	"testing"

	"github.com/stretchr/testify/assert"

	idem "github.com/ginidem/idempotency"
)

// The controls of SPEC 34 that need no store; the others run on every
// store (internal/suite/controls.go).

func TestSpec34_WithSkipNilPanics(t *testing.T) {
	assert.PanicsWithValue(t, "idempotency: WithSkip(nil)", func() { idem.WithSkip(nil) })
}
