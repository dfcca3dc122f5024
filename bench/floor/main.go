// Command floor is a measuring stick, not an idempotency layer: it serves the
// requisition contract of ../shared/peers/bench.sh (flags -addr -redis -ttl
// -lease -latency -idempotency) on Gin, with the least any layer that holds a
// key in Redis before the handler and records after it can do: one plain
// SET NX PX before the handler and one SET PX after it, on a default go-redis
// client. No fingerprint, no fencing, no record, no replay (a duplicate gets
// 409). It accepts -ttl, -lease and -latency for bench.sh and ignores them,
// and it does not check the second SET's error: the answer is sent by then.
// The microseconds it adds per new key are the floor of two round trips on
// the machine (docs/performance.md):
//
//	../shared/peers/bench.sh -stores redis -project . ../shared/peers/fiberidem ./bench/floor
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"flag"
	"log"
	"net/http"
	"sync"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/redis/go-redis/v9"
)

type requisition struct {
	ID       string `json:"id"`
	Program  string `json:"program" binding:"required"`
	Facility string `json:"facility" binding:"required"`
	Status   string `json:"status"`
}

func main() {
	addr := flag.String("addr", "127.0.0.1:8080", "")
	rurl := flag.String("redis", "", "")
	flag.Duration("ttl", 24*time.Hour, "")
	flag.Duration("lease", time.Minute, "")
	flag.Duration("latency", 0, "")
	on := flag.Bool("idempotency", true, "")
	flag.Parse()
	gin.SetMode(gin.ReleaseMode)
	var mu sync.Mutex
	store := map[string]requisition{}
	r := gin.New()
	var rdb *redis.Client
	if *rurl != "" {
		o, err := redis.ParseURL(*rurl)
		if err != nil {
			log.Fatal(err)
		}
		o.ContextTimeoutEnabled = true
		rdb = redis.NewClient(o)
	}
	api := r.Group("/api", func(c *gin.Context) {
		if c.GetHeader("Authorization") != "Bearer alice" {
			c.AbortWithStatus(401)
		}
	})
	if *on && rdb != nil {
		api.Use(func(c *gin.Context) {
			k := c.GetHeader("Idempotency-Key")
			if k == "" {
				c.Next()
				return
			}
			ctx, cancel := context.WithTimeout(c, time.Second)
			ok, err := rdb.SetNX(ctx, "idem:"+k, "inflight", time.Minute).Result()
			cancel()
			if err != nil || !ok {
				c.AbortWithStatus(409)
				return
			}
			c.Next()
			ctx, cancel = context.WithTimeout(c, time.Second)
			rdb.Set(ctx, "idem:"+k, "done", 24*time.Hour)
			cancel()
		})
	}
	api.POST("/requisitions", func(c *gin.Context) {
		var q requisition
		if err := c.ShouldBindJSON(&q); err != nil {
			c.AbortWithStatus(400)
			return
		}
		var b [8]byte
		_, _ = rand.Read(b[:])
		q.ID, q.Status = hex.EncodeToString(b[:]), "INITIATED"
		mu.Lock()
		store[q.ID] = q
		mu.Unlock()
		c.Header("Location", "/api/requisitions/"+q.ID)
		c.JSON(http.StatusCreated, q)
	})
	log.Fatal(http.ListenAndServe(*addr, r))
}
