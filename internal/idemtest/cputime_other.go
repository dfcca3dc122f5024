//go:build !unix

package idemtest

import "time"

// CPUTime is zero where getrusage is missing: cpu-ns/op then reads 0.
func CPUTime() time.Duration { return 0 }
