package main

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ginidem/idempotency"
)

// The crash tests start a consumer in a child process (this test binary,
// running TestSpec31_ConsumerCrashHelper) and let it stop at a kill point
// while it applies the one event of the stream. They start a survivor
// while the child is stopped there, still alive and renewing its key's
// lease, wait until the survivor has reclaimed the entry (and found the
// key in flight, when the child holds it), then kill the child with
// SIGKILL. No step waits for a time to pass. The child's environment:
const (
	crashChildPointEnv  = "IDEM_CONSUMER_CHILD_POINT"  // the kill point where it stops
	crashChildSetupEnv  = "IDEM_CONSUMER_CHILD_SETUP"  // onRedis or onPostgres
	crashChildRedisEnv  = "IDEM_CONSUMER_CHILD_REDIS"  // the redis-server's address
	crashChildStreamEnv = "IDEM_CONSUMER_CHILD_STREAM" // the stream
	crashChildDSNEnv    = "IDEM_CONSUMER_CHILD_DSN"    // onPostgres: the test's database
)

// crashEvent is the event the child applies.
const crashEvent = "evt-crash"

// TestSpec31_ConsumerCrashHelper is the child process of the crash tests:
// a consumer of the parent's stream, whose pause at the point its
// environment names prints the point on stdout and blocks until the parent
// kills the process.
func TestSpec31_ConsumerCrashHelper(t *testing.T) {
	point := os.Getenv(crashChildPointEnv)
	if point == "" {
		t.Skip("the child process of the TestSpec31_Consumer*Killed* tests; runs only as that child")
	}
	rig := &consumerRig{t: t, setup: os.Getenv(crashChildSetupEnv), addr: os.Getenv(crashChildRedisEnv),
		stream: os.Getenv(crashChildStreamEnv), dsn: os.Getenv(crashChildDSNEnv)}
	c := rig.newConsumer("doomed")
	c.pause = func(at string) {
		if at == point {
			os.Stdout.WriteString(at + "\n")
			select {} // killed here
		}
	}
	c.run(context.Background())
}

// pauseConsumerAt starts the child consumer and waits until it stops at
// point (its marker line on stdout). The child is alive there: its Runner
// renews its key's lease. kill sends it SIGKILL and waits for it to exit.
func (rig *consumerRig) pauseConsumerAt(point string) (kill func()) {
	t := rig.t
	t.Helper()
	child := exec.Command(os.Args[0], "-test.run=^TestSpec31_ConsumerCrashHelper$")
	child.Env = append(os.Environ(), crashChildPointEnv+"="+point, crashChildSetupEnv+"="+rig.setup,
		crashChildRedisEnv+"="+rig.addr, crashChildStreamEnv+"="+rig.stream, crashChildDSNEnv+"="+rig.dsn)
	child.Stderr = os.Stderr
	out, err := child.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, child.Start())
	t.Cleanup(func() { _ = child.Process.Kill(); _ = child.Wait() })
	reached := make(chan bool, 1)
	go func() {
		lines := bufio.NewScanner(out)
		for lines.Scan() {
			if lines.Text() == point {
				reached <- true
				return
			}
		}
		reached <- false // the child exited
	}()
	select {
	case ok := <-reached:
		require.True(t, ok, "the child exited before %q", point)
	case <-time.After(60 * time.Second):
		t.Fatalf("the child did not reach %q", point)
	}
	return func() {
		require.NoError(t, child.Process.Kill()) // SIGKILL
		_ = child.Wait()
	}
}

// crashCase is one kill point, with the effects the child has left when it
// stops there and once the survivor has consumed the stream. When the
// survivor runs the event, it runs it once the dead consumer's lease is
// over, after finding it in flight while the child was alive.
type crashCase struct {
	point             string
	leftByTheChild    int
	afterTheSurvivor  int
	survivorRanItOnce bool // the survivor ran the function (else it replayed the result)
}

// testConsumerKilled stops the child at each case's point, starts a
// survivor, kills the child once the survivor has reclaimed the entry, and
// lets the survivor consume the stream.
func testConsumerKilled(t *testing.T, setup string, cases []crashCase) {
	for _, tc := range cases {
		t.Run(tc.point, func(t *testing.T) {
			rig := newConsumerRig(t, setup)
			rig.addEvent(crashEvent)
			kill := rig.pauseConsumerAt(tc.point)
			assert.Equal(t, tc.leftByTheChild, rig.effects(facilityOf(crashEvent)), "effects left by the stopped consumer")
			assert.EqualValues(t, 1, rig.pending(), "the entry is pending for the stopped consumer")

			// The survivor reclaims the entry once it has been pending for
			// min-idle, while the child, alive, still holds the key (or has
			// recorded the result): the first call of the survivor finds it
			// in flight (or replays it). Then the child dies.
			var events eventCounter
			rig.start(rig.newConsumer("survivor", events.hook()))
			require.Eventually(t, func() bool { return events.handled() > 0 }, 30*time.Second, 10*time.Millisecond,
				"the survivor did not reclaim the entry")
			if tc.survivorRanItOnce {
				require.Zero(t, events.count(idempotency.EventAcquired), "the survivor took the key of a live consumer")
				require.Positive(t, events.count(idempotency.EventConflict), "the survivor found the key in flight")
			}
			kill()
			rig.waitConsumed()
			assert.Equal(t, tc.afterTheSurvivor, rig.effects(facilityOf(crashEvent)), "effects in all")
			if tc.survivorRanItOnce {
				assert.Equal(t, 1, events.count(idempotency.EventAcquired), "the survivor ran the function")
			} else {
				assert.Equal(t, 1, events.count(idempotency.EventReplayed), "the survivor got the recorded result")
				assert.Zero(t, events.count(idempotency.EventAcquired), "the survivor did not run the function")
			}
		})
	}
}

// TestSpec31_ConsumerKilledOnPostgres: with the records and the
// requisitions in Postgres, a consumer killed (SIGKILL) at any point of an
// entry leaves exactly one requisition once a survivor has reclaimed the
// entry. Before the effect, or after it and before the commit, nothing
// committed (the insert dies with the connection), and the survivor runs
// the event once its lease is over; after the commit and before the XACK,
// the requisition and the record committed together, and the survivor gets
// the recorded result.
func TestSpec31_ConsumerKilledOnPostgres(t *testing.T) {
	testConsumerKilled(t, onPostgres, []crashCase{
		{point: pointBeforeEffect, leftByTheChild: 0, afterTheSurvivor: 1, survivorRanItOnce: true},
		{point: pointAfterEffect, leftByTheChild: 0, afterTheSurvivor: 1, survivorRanItOnce: true},
		{point: pointBeforeAck, leftByTheChild: 1, afterTheSurvivor: 1},
	})
}

// TestSpec31_ConsumerKilledOnRedis: with the records in Redis, the effect
// and the record are two writes to two systems. A consumer killed after
// its effect and before the record is written leaves the key in flight
// with no result: once its lease has run out, the survivor runs the event
// again, and there are two requisitions. That is the only window: killed
// before the effect, the survivor runs it once; killed after the record
// and before the XACK, it gets the recorded result. docs/functions.md
// states the window.
func TestSpec31_ConsumerKilledOnRedis(t *testing.T) {
	testConsumerKilled(t, onRedis, []crashCase{
		{point: pointBeforeEffect, leftByTheChild: 0, afterTheSurvivor: 1, survivorRanItOnce: true},
		{point: pointAfterEffect, leftByTheChild: 1, afterTheSurvivor: 2, survivorRanItOnce: true},
		{point: pointBeforeAck, leftByTheChild: 1, afterTheSurvivor: 1},
	})
}
