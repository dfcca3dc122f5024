package idempotency

import (
	"reflect"
	"runtime"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/gin-gonic/gin"
)

// requestKey is the c.Keys entry that marks a request as seen by this
// package's middlewares: the mark is on the request, not on the writer, so
// it holds whatever wraps c.Writer in between (gzip, metrics, timeouts).
const requestKey = "github.com/ginidem/idempotency"

// requestMark is what the middlewares on one request's chain know of each
// other, and what the handler can read with [Key].
type requestMark struct {
	total   int    // idempotency middlewares on the chain, as far as Gin names them
	seen    int    // of those, how many have run so far
	handled bool   // one of them handles the key: the others step aside
	key     string // the canonical key it handles
	leased  bool   // the handler runs under the key's lease
	tx      Tx     // the request's transaction on a TxStore, or nil
	noKeep  bool   // the handler asked that its answer not be kept (DoNotKeep)
}

// markOf returns the request's mark, or nil. It reads c.Keys directly, as
// Gin's handlers do: a request's chain runs on one goroutine, and c.Get
// would take a lock on every request.
func markOf(c *gin.Context) *requestMark {
	mark, _ := c.Keys[requestKey].(*requestMark)
	return mark
}

// Key returns the canonical idempotency key the request runs under: a UUID
// in lower case, any other key as sent. leased is true when the handler
// runs under the key's lease, so that no duplicate runs at the same time;
// it is false when the store failed and [WithFailOpen] let the request run
// without idempotency. ok is false when no middleware handles a key for
// this request.
//
// A handler that writes to a database can keep the key in a unique column,
// so that even a run without the lease cannot repeat the effect:
//
//	key, _, ok := idempotency.Key(c)
func Key(c *gin.Context) (key string, leased, ok bool) {
	mark := markOf(c)
	if mark == nil || mark.key == "" {
		return "", false, false
	}
	return mark.key, mark.leased, true
}

// DoNotKeep tells the middleware not to keep the handler's answer, whatever
// its status: the key is released when the handler returns, and a retry
// runs the handler again (SPEC 29). It is for answers that a status cannot
// tell apart (see [WithKeep]), such as a 200 that reports a failure the
// client may retry. On a transactional store the handler's writes are
// rolled back with it. Call it before the answer outgrows the response cap:
// a larger answer on a transactional store is committed when it does. It
// does nothing on a request the middleware does not run under a key.
//
//	if result.Retryable {
//		idempotency.DoNotKeep(c)
//	}
func DoNotKeep(c *gin.Context) {
	if mark := markOf(c); mark != nil && mark.handled {
		mark.noKeep = true
	}
}

// chains remembers, per engine and route, how many idempotency middlewares
// the route's handler chain holds. A route's chain is fixed once Gin serves
// it, so it is counted once; the map is replaced on write and read without
// a lock. One middleware may be mounted on several engines, whose routes
// of one method and pattern may hold different chains: each engine's are
// counted apart (SPEC 28).
type chains struct {
	self   string // the name Gin gives this package's handler
	engine int    // index of gin.Context's engine field, or -1: no count is kept
	counts atomic.Pointer[map[routeID]int]
	mu     sync.Mutex // serializes writers
}

// routeID names one route of one engine. The engine pointer keeps the
// engine from being collected while the count is remembered, so no other
// engine can later take its address.
type routeID struct {
	engine       unsafe.Pointer
	method, path string
}

// maxChains bounds the routes remembered; past it, chains are counted on
// every request.
const maxChains = 4096

func newChains(handler gin.HandlerFunc) *chains {
	ch := &chains{self: runtime.FuncForPC(reflect.ValueOf(handler).Pointer()).Name(), engine: -1}
	ch.counts.Store(&map[routeID]int{})
	// Gin has no accessor for the engine that serves a request: its
	// Context keeps it in an unexported field, read by reflection. Should a
	// Gin release rename it, every request counts its chain instead.
	if f, ok := reflect.TypeFor[gin.Context]().FieldByName("engine"); ok && len(f.Index) == 1 &&
		f.Type == reflect.TypeFor[*gin.Engine]() {
		ch.engine = f.Index[0]
	}
	return ch
}

// count returns the number of this package's middlewares on c's chain.
func (ch *chains) count(c *gin.Context) int {
	id := routeID{method: c.Request.Method, path: c.FullPath()}
	cached := id.path != "" && ch.engine >= 0 // "" is the 404 or 405 chain, which is not cached
	if cached {
		id.engine = reflect.ValueOf(c).Elem().Field(ch.engine).UnsafePointer()
		if n, ok := (*ch.counts.Load())[id]; ok {
			return n
		}
	}
	n := 0
	for _, name := range c.HandlerNames() {
		if name == ch.self {
			n++
		}
	}
	if cached {
		ch.mu.Lock()
		old := *ch.counts.Load()
		if len(old) < maxChains {
			next := make(map[routeID]int, len(old)+1)
			for k, v := range old {
				next[k] = v
			}
			next[id] = n
			ch.counts.Store(&next)
		}
		ch.mu.Unlock()
	}
	return n
}

// turn decides whether this middleware handles the request. Where several
// are nested (engine, group, route), the innermost handles the key and its
// options apply; the others step aside. It returns the request's mark, or
// nil when this middleware is alone on the chain and the request has no
// mark yet: the fast path, which costs no allocation.
func (m *middleware) turn(c *gin.Context) (mark *requestMark, mine bool) {
	mark = markOf(c)
	if mark == nil {
		total := m.chains.count(c)
		if total <= 1 {
			return nil, true
		}
		mark = &requestMark{total: total}
		c.Set(requestKey, mark)
	}
	mark.seen++
	return mark, !mark.handled && mark.seen >= mark.total
}

// markRun marks the request as handled before the rest of the chain runs:
// a middleware further in steps aside, and the handler can read the key.
// Answers that stop the chain (replays, conflicts) need no mark. own is the
// flight's mark, used when no outer middleware made one, so that the common
// case costs no allocation of its own.
func (m *middleware) markRun(c *gin.Context, mark, own *requestMark, key string, leased bool) *requestMark {
	if mark == nil {
		mark = own
		c.Set(requestKey, mark)
	}
	mark.handled, mark.key, mark.leased = true, key, leased
	return mark
}
