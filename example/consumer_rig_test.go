package main

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/ginidem/idempotency"
	"github.com/ginidem/idempotency/internal/pgtest"
	"github.com/ginidem/idempotency/internal/redistest"
)

// The consumer's set-ups, as the service runs them: the stream is in Redis
// in both.
const (
	// onRedis: -redis -consume. The records are in Redis and the
	// requisitions in each process's memory; a consumer's effect is also
	// counted in Redis (countedRequisitions), where the tests read it and
	// where it outlives a killed process.
	onRedis = "redis"
	// onPostgres: -redis -postgres -consume. The records and the
	// requisitions are in Postgres; the tests count the rows.
	onPostgres = "postgres"
)

// consumerLease is the lease of the tests' Runners, and their consumers'
// min-idle: a dead consumer's key is free one lease after its last
// renewal, and its entry, found in flight by the first reclaim, is applied
// up to about two leases after its delivery (see newStreamConsumer).
const consumerLease = time.Second

// consumerRig is one test's stream, on a redis-server of its own, and the
// records and requisitions of one set-up. Each consumer it makes has
// clients, a store and requisitions of its own, as a process would.
type consumerRig struct {
	t      *testing.T
	setup  string        // onRedis or onPostgres
	addr   string        // the redis-server
	redis  *redis.Client // the test's own client
	stream string
	db     *pgtest.DB // onPostgres
	dsn    string     // onPostgres: db.DSN, for the consumers and the crash helper
}

// newConsumerRig starts a redis-server and, on Postgres, a schema of its
// own for the test. It skips when either server is not installed.
func newConsumerRig(t *testing.T, setup string) *consumerRig {
	t.Helper()
	srv := redistest.StartServer(t)
	rig := &consumerRig{t: t, setup: setup, addr: srv.Addr, redis: redistest.NewClient(t, srv.Addr), stream: "requisition-events"}
	if setup == onPostgres {
		rig.db = pgtest.NewDB(t)
		rig.dsn = rig.db.DSN
	}
	return rig
}

// newConsumer returns a consumer named name, with the tests' lease and a
// short block, so that it reclaims and stops quickly; opts are added to
// its Runner's.
func (rig *consumerRig) newConsumer(name string, opts ...idempotency.Option) *streamConsumer {
	rig.t.Helper()
	return rig.newConsumerWrapped(name, nil, opts...)
}

// newConsumerWrapped is newConsumer with its Runner's store wrapped by
// wrap, when not nil. A wrapper hides the optional interfaces of the
// store it wraps (idempotency.TxStore): use it on Redis.
func (rig *consumerRig) newConsumerWrapped(name string, wrap func(idempotency.Store) idempotency.Store, opts ...idempotency.Option) *streamConsumer {
	t := rig.t
	t.Helper()
	client := redistest.NewClient(t, rig.addr)
	var store idempotency.Store
	var reqs requisitionCreator
	switch rig.setup {
	case onRedis:
		store = idempotency.NewRedisStore(client)
		reqs = &countedRequisitions{requisitions: newRequisitions(), client: client}
	case onPostgres:
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		pg, err := openPostgres(ctx, rig.dsn, true)
		require.NoError(t, err)
		t.Cleanup(pg.close)
		store, reqs = pg.store, pg.reqs
	default:
		t.Fatalf("unknown set-up %q", rig.setup)
	}
	if wrap != nil {
		store = wrap(store)
	}
	opts = append([]idempotency.Option{idempotency.WithLease(consumerLease), idempotency.WithTTL(time.Hour)}, opts...)
	c := newStreamConsumer(client, rig.stream, name, newConsumerRunner(store, opts...), reqs, consumerLease)
	c.block = 100 * time.Millisecond
	return c
}

// start runs c until the test ends.
func (rig *consumerRig) start(c *streamConsumer) {
	rig.t.Cleanup(c.start(context.Background()))
}

// facilityOf is the facility of the requisition that event id creates:
// each event's effect is told apart by it.
func facilityOf(id string) string { return "facility of " + id }

// add adds an entry with fields to the stream, as a producer would.
func (rig *consumerRig) add(fields ...string) {
	rig.t.Helper()
	err := rig.redis.XAdd(context.Background(), &redis.XAddArgs{Stream: rig.stream, Values: fields}).Err()
	require.NoError(rig.t, err)
}

// addEvent adds the event id: create a requisition at facilityOf(id).
func (rig *consumerRig) addEvent(id string) {
	rig.add(fieldEventID, id, fieldType, eventCreate, fieldProgram, "Family Planning", fieldFacility, facilityOf(id))
}

// countAtFacility counts the requisitions created at a facility ($1) on
// Postgres, in the test's schema.
const countAtFacility = "SELECT count(*) FROM requisitions WHERE facility = $1"

// effects returns how many requisitions were created at facility, by
// every consumer, living or dead.
func (rig *consumerRig) effects(facility string) int {
	rig.t.Helper()
	if rig.setup == onPostgres {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		var n int
		require.NoError(rig.t, rig.db.Pool.QueryRow(ctx, countAtFacility, facility).Scan(&n))
		return n
	}
	n, err := rig.redis.HGet(context.Background(), effectsKey, facility).Int()
	if err == redis.Nil {
		return 0
	}
	require.NoError(rig.t, err)
	return n
}

// group returns the state of the consumers' group; found is false before
// a consumer created it. It may run outside the test's goroutine.
func (rig *consumerRig) group() (g redis.XInfoGroup, found bool, err error) {
	groups, err := rig.redis.XInfoGroups(context.Background(), rig.stream).Result()
	for _, g := range groups {
		if g.Name == consumerGroup {
			return g, true, nil
		}
	}
	return redis.XInfoGroup{}, false, err
}

// pending returns how many entries are pending in the group: delivered to
// a consumer, and not acknowledged.
func (rig *consumerRig) pending() int64 {
	rig.t.Helper()
	g, found, err := rig.group()
	require.NoError(rig.t, err)
	require.True(rig.t, found, "no group %q on %s", consumerGroup, rig.stream)
	return g.Pending
}

// waitConsumed waits until every entry of the stream was delivered to the
// group and acknowledged: nothing left to read (lag 0), nothing pending.
func (rig *consumerRig) waitConsumed() {
	rig.t.Helper()
	require.Eventually(rig.t, func() bool {
		g, found, err := rig.group()
		return err == nil && found && g.Lag == 0 && g.Pending == 0
	}, 30*time.Second, 20*time.Millisecond, "the stream was not consumed")
}

// effectsKey is the Redis hash where countedRequisitions counts the
// requisitions created per facility.
const effectsKey = "effects"

// countedRequisitions is the in-memory requisitions of -redis, with each
// creation also counted in Redis (HINCRBY): the tests count the effects of
// processes they kill, whose memory dies with them.
type countedRequisitions struct {
	*requisitions
	client *redis.Client
}

func (s *countedRequisitions) createInCall(ctx context.Context, tx idempotency.Tx, program, facility string) (requisition, error) {
	r, err := s.requisitions.createInCall(ctx, tx, program, facility)
	if err != nil {
		return r, err
	}
	return r, s.client.HIncrBy(ctx, effectsKey, facility, 1).Err()
}

// eventCounter counts the Runner's events of each kind, through
// idempotency.WithEventHook; a kind added to the package is counted too.
// Its zero value is ready to use.
type eventCounter struct {
	mu     sync.Mutex
	counts map[idempotency.EventKind]int
}

func (c *eventCounter) hook() idempotency.Option {
	return idempotency.WithEventHook(func(_ context.Context, e idempotency.Event) {
		c.mu.Lock()
		defer c.mu.Unlock()
		if c.counts == nil {
			c.counts = make(map[idempotency.EventKind]int)
		}
		c.counts[e.Kind]++
	})
}

func (c *eventCounter) count(kind idempotency.EventKind) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.counts[kind]
}

// handled returns how many calls the Runner answered: run, replayed, or
// found in flight.
func (c *eventCounter) handled() int {
	return c.count(idempotency.EventAcquired) + c.count(idempotency.EventReplayed) + c.count(idempotency.EventConflict)
}

// forEachSetup runs test on each set-up, as a subtest.
func forEachSetup(t *testing.T, test func(t *testing.T, rig *consumerRig)) {
	for _, setup := range []string{onRedis, onPostgres} {
		t.Run(setup, func(t *testing.T) { test(t, newConsumerRig(t, setup)) })
	}
}
