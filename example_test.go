package idempotency_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"

	"github.com/gin-gonic/gin"

	idem "github.com/ginidem/idempotency"
)

// send posts body with an Idempotency-Key to h and prints the answer.
func send(h http.Handler, key, body string) {
	r := httptest.NewRequest(http.MethodPost, "/orders", strings.NewReader(body))
	r.Header.Set("Authorization", "Bearer alice")
	r.Header.Set("Idempotency-Key", key)
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	fmt.Println(w.Code, w.Header().Get("Location"), w.Header().Get("Idempotent-Replayed"), strings.TrimSpace(w.Body.String()))
}

// A retried POST gets the first response again, and the handler runs once.
func Example() {
	r := gin.New()
	r.Use(idem.New())
	orders := 0
	r.POST("/orders", func(c *gin.Context) {
		orders++
		c.Header("Location", fmt.Sprintf("/orders/%d", orders))
		c.JSON(http.StatusCreated, gin.H{"id": orders})
	})

	send(r, "5f0c7a8e-2b1d-4c3e-9f4a-6b7c8d9e0f1a", `{"item":"book"}`)
	send(r, "5f0c7a8e-2b1d-4c3e-9f4a-6b7c8d9e0f1a", `{"item":"book"}`)
	send(r, "5f0c7a8e-2b1d-4c3e-9f4a-6b7c8d9e0f1a", `{"item":"pen"}`)
	fmt.Println("orders:", orders)
	// Output:
	// 201 /orders/1  {"id":1}
	// 201 /orders/1 true {"id":1}
	// 409   {"type":"https://ginidem.dev/problems/key-mismatch","title":"Idempotency key reused","status":409,"detail":"this idempotency key was already used with a different request payload"}
	// orders: 1
}

// Key requirements and mismatch answers can differ per route group.
func ExampleRequireKey() {
	r := gin.New()
	payments := r.Group("/", idem.New(idem.RequireKey(), idem.WithMismatchStatus(http.StatusUnprocessableEntity)))
	payments.POST("/orders", func(c *gin.Context) { c.String(http.StatusCreated, "paid") })

	w := httptest.NewRecorder()
	r.ServeHTTP(w, httptest.NewRequest(http.MethodPost, "/orders", nil))
	fmt.Println(w.Code, w.Body.String())
	// Output:
	// 400 {"type":"https://ginidem.dev/problems/missing-key","title":"Idempotency key required","status":400,"detail":"this endpoint requires an Idempotency-Key header"}
}

// Canonical JSON fingerprints ignore key order and whitespace.
func ExampleCanonicalJSON() {
	r := gin.New()
	r.Use(idem.New(idem.WithFingerprint(idem.CanonicalJSON())))
	r.POST("/orders", func(c *gin.Context) { c.String(http.StatusCreated, "created") })

	send(r, "0b0b2e0c-5f4c-4b7e-9a3d-2f1c6e8d9a10", `{"item":"book","qty":1}`)
	send(r, "0b0b2e0c-5f4c-4b7e-9a3d-2f1c6e8d9a10", `{ "qty": 1, "item": "book" }`)
	// Output:
	// 201   created
	// 201  true created
}

// The scope decides whose keys are whose: here the authenticated user set by
// an earlier middleware.
func ExampleWithScope() {
	r := gin.New()
	r.Use(func(c *gin.Context) { c.Set("user", strings.TrimPrefix(c.GetHeader("Authorization"), "Bearer ")) })
	r.Use(idem.New(idem.WithScope(func(c *gin.Context) string { return c.GetString("user") })))
	r.POST("/orders", func(c *gin.Context) { c.String(http.StatusCreated, "for "+c.GetString("user")) })

	send(r, "0b0b2e0c-5f4c-4b7e-9a3d-2f1c6e8d9a10", "{}")
	send(r, "0b0b2e0c-5f4c-4b7e-9a3d-2f1c6e8d9a10", "{}")
	// Output:
	// 201   for alice
	// 201  true for alice
}

// One memory store can back several middlewares, bounded as you choose.
func ExampleNewMemoryStore() {
	store := idem.NewMemoryStore(idem.WithMaxEntries(10_000), idem.WithMaxBytes(16<<20))
	r := gin.New()
	r.POST("/orders", idem.New(idem.WithStore(store)), func(c *gin.Context) { c.String(http.StatusCreated, "ok") })

	send(r, "0b0b2e0c-5f4c-4b7e-9a3d-2f1c6e8d9a10", "{}")
	fmt.Println("records:", store.Len())
	// Output:
	// 201   ok
	// records: 1
}
