package idempotency_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"

	"github.com/gin-gonic/gin"

	idem "github.com/ginidem/idempotency"
)

// A retried POST gets the first response again, and the handler runs once;
// the same key with another body is refused. Keys belong to a caller: here
// the default scope, the Authorization header.
func Example() {
	r := gin.New()
	r.Use(idem.New())
	orders := 0
	r.POST("/orders", func(c *gin.Context) {
		orders++
		c.Header("Location", fmt.Sprintf("/orders/%d", orders))
		c.JSON(http.StatusCreated, gin.H{"id": orders})
	})

	for _, body := range []string{`{"item":"book"}`, `{"item":"book"}`, `{"item":"pen"}`} {
		req := httptest.NewRequest(http.MethodPost, "/orders", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer alice")
		req.Header.Set("Idempotency-Key", "5f0c7a8e-2b1d-4c3e-9f4a-6b7c8d9e0f1a")
		w := httptest.NewRecorder()
		r.ServeHTTP(w, req)
		fmt.Printf("%d replayed=%q %s\n", w.Code, w.Header().Get("Idempotent-Replayed"), w.Body.String())
	}
	fmt.Println("orders:", orders)
	// Output:
	// 201 replayed="" {"id":1}
	// 201 replayed="true" {"id":1}
	// 409 replayed="" {"type":"https://ginidem.dev/problems/key-mismatch","title":"Idempotency key reused","status":409,"detail":"this idempotency key was already used with a different request payload"}
	// orders: 1
}

// A route or group can require a key: a request without one gets 400 and
// the handler does not run.
func ExampleRequireKey() {
	r := gin.New()
	payments := r.Group("/payments", idem.New(idem.RequireKey()))
	payments.POST("", func(c *gin.Context) { c.String(http.StatusCreated, "paid") })

	req := httptest.NewRequest(http.MethodPost, "/payments", strings.NewReader(`{"amount":42}`))
	req.Header.Set("Authorization", "Bearer alice")
	w := httptest.NewRecorder()
	r.ServeHTTP(w, req)
	fmt.Println(w.Code, w.Body.String())
	// Output:
	// 400 {"type":"https://ginidem.dev/problems/missing-key","title":"Idempotency key required","status":400,"detail":"this endpoint requires an Idempotency-Key header"}
}

// Canonical JSON fingerprints ignore key order and whitespace: the second
// body is the same JSON value, so it gets the replay.
func ExampleCanonicalJSON() {
	r := gin.New()
	r.Use(idem.New(idem.WithFingerprint(idem.CanonicalJSON())))
	r.POST("/orders", func(c *gin.Context) { c.String(http.StatusCreated, "created") })

	for _, body := range []string{`{"item":"book","qty":1}`, `{ "qty": 1, "item": "book" }`} {
		req := httptest.NewRequest(http.MethodPost, "/orders", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer alice")
		req.Header.Set("Idempotency-Key", "0b0b2e0c-5f4c-4b7e-9a3d-2f1c6e8d9a10")
		w := httptest.NewRecorder()
		r.ServeHTTP(w, req)
		fmt.Printf("%d replayed=%q %s\n", w.Code, w.Header().Get("Idempotent-Replayed"), w.Body.String())
	}
	// Output:
	// 201 replayed="" created
	// 201 replayed="true" created
}

// The scope decides whose keys are whose. ScopeFromContext reads the id that
// the authentication middleware set with c.Set, so the same key from two
// users is two records, and a keyed request without a user is refused.
func ExampleScopeFromContext() {
	r := gin.New()
	auth := func(c *gin.Context) { // a stand-in: a real one checks a session or a token
		if user := c.GetHeader("X-User"); user != "" {
			c.Set("user_id", user)
		}
	}
	r.Use(auth, idem.New(idem.WithScope(idem.ScopeFromContext("user_id"))))
	r.POST("/orders", func(c *gin.Context) { c.String(http.StatusCreated, "for "+c.GetString("user_id")) })

	for _, user := range []string{"alice", "bob", "alice", ""} {
		req := httptest.NewRequest(http.MethodPost, "/orders", strings.NewReader("{}"))
		if user != "" {
			req.Header.Set("X-User", user)
		}
		req.Header.Set("Idempotency-Key", "0b0b2e0c-5f4c-4b7e-9a3d-2f1c6e8d9a10")
		w := httptest.NewRecorder()
		r.ServeHTTP(w, req)
		fmt.Printf("%q: %d replayed=%q %s\n", user, w.Code, w.Header().Get("Idempotent-Replayed"), w.Body.String())
	}
	// Output:
	// "alice": 201 replayed="" for alice
	// "bob": 201 replayed="" for bob
	// "alice": 201 replayed="true" for alice
	// "": 400 replayed="" {"type":"https://ginidem.dev/problems/unknown-caller","title":"Caller not identified","status":400,"detail":"this service cannot tell callers apart for this request, so it cannot scope an idempotency key to its caller; authenticate, or send the request without a key"}
}

// One memory store can back several middlewares, bounded as you choose.
func ExampleNewMemoryStore() {
	store := idem.NewMemoryStore(idem.WithMaxEntries(10_000), idem.WithMaxBytes(16<<20))
	r := gin.New()
	r.POST("/orders", idem.New(idem.WithStore(store)), func(c *gin.Context) { c.String(http.StatusCreated, "order") })
	r.POST("/refunds", idem.New(idem.WithStore(store), idem.RequireKey()), func(c *gin.Context) { c.String(http.StatusCreated, "refund") })

	for _, send := range []struct{ path, key string }{
		{"/orders", "0b0b2e0c-5f4c-4b7e-9a3d-2f1c6e8d9a10"},
		{"/refunds", "7c9e6679-7425-40de-944b-e07fc1f90ae7"},
	} {
		req := httptest.NewRequest(http.MethodPost, send.path, strings.NewReader("{}"))
		req.Header.Set("Authorization", "Bearer alice")
		req.Header.Set("Idempotency-Key", send.key)
		w := httptest.NewRecorder()
		r.ServeHTTP(w, req)
		fmt.Println(w.Code, w.Body.String())
	}
	fmt.Println("records:", store.Len())
	// Output:
	// 201 order
	// 201 refund
	// records: 2
}
