package idempotency_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"

	"github.com/alicebob/miniredis/v2"
	"github.com/gin-gonic/gin"
	"github.com/redis/go-redis/v9"

	idem "github.com/ginidem/idempotency"
)

// Two replicas of a service, each with its own Redis client, share their
// idempotency keys: a retry that lands on the other replica gets the first
// response again. (miniredis stands in for a Redis server here.)
func ExampleNewRedisStore() {
	mr := miniredis.NewMiniRedis()
	if err := mr.Start(); err != nil {
		panic(err)
	}
	defer mr.Close()

	orders := 0 // the service's state, shared by both replicas
	replica := func() (*gin.Engine, *redis.Client) {
		// ContextTimeoutEnabled lets the middleware's deadline (1 s by
		// default) bound every Redis call.
		rdb := redis.NewClient(&redis.Options{Addr: mr.Addr(), ContextTimeoutEnabled: true})
		store := idem.NewRedisStore(rdb, idem.WithRedisKeyPrefix("orders:idem:"))
		r := gin.New()
		r.Use(idem.New(idem.WithStore(store)))
		r.POST("/orders", func(c *gin.Context) {
			orders++
			c.Header("Location", fmt.Sprintf("/orders/%d", orders))
			c.JSON(http.StatusCreated, gin.H{"id": orders})
		})
		return r, rdb
	}
	a, rdbA := replica()
	defer rdbA.Close()
	b, rdbB := replica()
	defer rdbB.Close()

	post := func(h http.Handler) {
		r := httptest.NewRequest(http.MethodPost, "/orders", strings.NewReader(`{"item":"book"}`))
		r.Header.Set("Authorization", "Bearer alice")
		r.Header.Set("Idempotency-Key", "5f0c7a8e-2b1d-4c3e-9f4a-6b7c8d9e0f1a")
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		fmt.Printf("%d replayed=%q %s\n", w.Code, w.Header().Get("Idempotent-Replayed"), w.Body.String())
	}
	post(a)
	post(b) // the retry lands on the other replica
	fmt.Println("orders:", orders)
	for _, k := range mr.Keys() { // one record, its key hashed with the caller's scope
		hash := strings.TrimSuffix(strings.TrimPrefix(k, "orders:idem:{"), "}")
		fmt.Printf("redis key: orders:idem:{%d hex digits}\n", len(hash))
	}
	// Output:
	// 201 replayed="" {"id":1}
	// 201 replayed="true" {"id":1}
	// orders: 1
	// redis key: orders:idem:{64 hex digits}
}
