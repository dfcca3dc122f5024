//go:build unix

package idemtest

import (
	"syscall"
	"time"
)

// CPUTime is the CPU time, user and system, that this process has used so
// far, every goroutine included.
func CPUTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
