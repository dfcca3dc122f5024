package idempotency

import (
	"fmt"
	"strconv"

	"github.com/gin-gonic/gin"
)

// AuthorizationScope is the default scope: the caller's Authorization
// header, of which only a SHA-256 is kept. It is a fallback. A cookie-session
// app sends no Authorization header, so its callers have an empty scope and
// their keyed requests are refused unless the scope comes from the session
// (see [ScopeFromContext]). And an access token that is refreshed between
// two attempts makes the retry another caller, which runs the handler
// again: scope by the user or account id instead.
func AuthorizationScope(c *gin.Context) string {
	return c.GetHeader("Authorization")
}

// ScopeFromContext returns a scope function that reads the caller's
// identity from the value the authentication middleware set with c.Set
// under name: a user or account id, which stays the same when an access
// token is refreshed or a session cookie is renewed. A string, integer or
// fmt.Stringer is used as it is; any other value as fmt.Sprint prints it,
// so store an id, not a struct with changing fields. A missing or nil value
// is an empty scope, which the middleware refuses (see
// [AllowAnonymousKeys]). Mount the middleware after the authentication
// middleware, so that the value is set.
//
//	api := r.Group("/api", auth) // auth calls c.Set("user_id", id)
//	api.Use(idempotency.New(idempotency.WithScope(idempotency.ScopeFromContext("user_id"))))
func ScopeFromContext(name string) func(*gin.Context) string {
	if name == "" {
		panic("idempotency: ScopeFromContext with an empty name")
	}
	return func(c *gin.Context) string {
		v, _ := c.Get(name)
		switch v := v.(type) {
		case nil:
			return ""
		case string:
			return v
		case int:
			return strconv.Itoa(v)
		case int64:
			return strconv.FormatInt(v, 10)
		case uint64:
			return strconv.FormatUint(v, 10)
		case fmt.Stringer:
			return v.String()
		default:
			return fmt.Sprint(v)
		}
	}
}

// WithScope sets who owns a key: a function of the request that returns the
// caller's identity, such as a user id, tenant or API key (default
// [AuthorizationScope], a fallback). The middleware only keeps its SHA-256,
// and the same key from another scope is another record, so one caller
// never receives another's stored response. An empty scope means the
// caller is unknown: a keyed request gets 400 unless [AllowAnonymousKeys]
// is set. [ScopeFromContext] reads the id the authentication middleware set.
//
//	idempotency.WithScope(idempotency.ScopeFromContext("user_id"))
func WithScope(scope func(*gin.Context) string) Option {
	if scope == nil {
		panic("idempotency: WithScope(nil)")
	}
	return optionFunc(func(c *config) { c.scope = scope })
}

// AllowAnonymousKeys lets callers with an empty scope use keys, on public
// endpoints where no caller is known. Every anonymous caller then shares
// one scope, so the key is the only secret: anyone who sends another's key
// and payload receives that caller's stored response. Without this option a
// keyed request with an empty scope gets a 400 problem, because the
// service cannot tell its callers apart.
func AllowAnonymousKeys() Option {
	return optionFunc(func(c *config) { c.anonymous = true })
}
