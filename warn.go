package idempotency

import (
	"log/slog"
	"sync"
	"time"

	"github.com/gin-gonic/gin"
)

// A misconfiguration shows on every keyed request of a route, so its
// warning is rate-limited: one line per route and kind every warnEvery,
// which tells how many were left out since the last one (SPEC 33).
const warnEvery = time.Minute

// maxWarnRoutes bounds the routes whose last warning is remembered. Routes
// are Gin patterns, so an app has few; past the bound, the entries older
// than warnEvery are dropped, and if that is not enough, all of them.
const maxWarnRoutes = 1024

// warnKind names a misconfiguration the middleware warns about.
type warnKind uint8

const (
	// warnUnknownCaller: keyed requests have an empty scope and get 400
	// (mounted before the authentication middleware).
	warnUnknownCaller warnKind = iota + 1
	// warnWroteNothing: a keyed handler wrote no answer, so its key is
	// released and a retry runs it again (a middleware outside writes it).
	warnWroteNothing
)

// warnings remembers, per route and kind, when the last warning was logged.
// Its zero value is ready to use.
type warnings struct {
	mu   sync.Mutex
	last map[warnSite]warnEntry
}

type warnSite struct {
	kind  warnKind
	route string
}

type warnEntry struct {
	at      time.Time // the last line
	skipped int       // warnings left out since
}

// due reports whether the warning of kind on route is to be logged at now,
// and how many were left out since the last line.
func (w *warnings) due(kind warnKind, route string, now time.Time) (skipped int, ok bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	site := warnSite{kind, route}
	if e, seen := w.last[site]; seen && now.Sub(e.at) < warnEvery {
		e.skipped++
		w.last[site] = e
		return 0, false
	} else if seen {
		w.last[site] = warnEntry{at: now}
		return e.skipped, true
	}
	if w.last == nil {
		w.last = make(map[warnSite]warnEntry)
	}
	if len(w.last) >= maxWarnRoutes {
		for s, e := range w.last {
			if now.Sub(e.at) >= warnEvery {
				delete(w.last, s)
			}
		}
		if len(w.last) >= maxWarnRoutes {
			clear(w.last)
		}
	}
	w.last[site] = warnEntry{at: now}
	return 0, true
}

// warn logs msg at warn level for f's route, unless it was logged there
// less than warnEvery ago.
func (m *middleware) warn(c *gin.Context, f *flight, kind warnKind, msg string, attrs ...slog.Attr) {
	ctx := c.Request.Context()
	if !m.logger.Enabled(ctx, slog.LevelWarn) {
		return
	}
	skipped, ok := m.warns.due(kind, f.route, time.Now())
	if !ok {
		return
	}
	ectx := f.view.context(ctx) // a log handler may read the request's values, as in events
	m.logger.LogAttrs(ectx, slog.LevelWarn, msg, append(attrs,
		slog.String("method", f.claim.Method), slog.String("route", f.route), slog.Int("left_out", skipped))...)
	f.view.done(ectx)
}

// warnUnknownCaller says, once per route a minute, that keyed requests are
// refused because the middleware cannot tell their callers apart: it is
// mounted before the authentication middleware, or its scope reads
// nothing that middleware sets.
func (m *middleware) warnUnknownCaller(c *gin.Context, f *flight) {
	m.warn(c, f, warnUnknownCaller, "idempotency: keyed requests on this route are refused with 400 (unknown caller): their scope is empty. "+
		"Mount the middleware after the authentication middleware and scope keys by the id it sets "+
		"(WithScope(ScopeFromContext(\"user_id\")) for c.Set(\"user_id\", id)); "+
		"on a public endpoint, allow anonymous keys (AllowAnonymousKeys)")
}

// warnWroteNothing says, once per route a minute, that a keyed handler
// wrote no answer, so that its key is released and a retry runs it again:
// usually a middleware outside this one writes the answer (a renderer of
// c.Errors, a response envelope), where it is not recorded.
func (m *middleware) warnWroteNothing(c *gin.Context, f *flight) {
	m.warn(c, f, warnWroteNothing, "idempotency: a keyed handler on this route wrote no response, so its key was released and a retry runs it again. "+
		"If a middleware mounted outside the idempotency middleware writes the answer (an error renderer after c.Error, a response envelope), "+
		"mount it inside (after the idempotency middleware), so that its answer is recorded and replayed",
		slog.Int("handler_errors", len(c.Errors)))
}
