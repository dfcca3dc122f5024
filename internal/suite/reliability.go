package suite

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/google/uuid"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	idem "github.com/ginidem/idempotency"
)

// Reliability runs the fault cases on the store of h (TestReliability).
func Reliability(t *testing.T, h Harness) { runBehaviours(t, h, faults) }

var faults = []behaviour{
	{"spec10/1000 requests over 50 keys: each handler runs once", func(t *testing.T, h Harness) {
		store, _ := h.New(t)
		var mu sync.Mutex
		runs := map[string]int{}
		r := gin.New()
		r.POST("/pay", idem.New(idem.WithStore(store)), func(c *gin.Context) {
			key := c.GetHeader("Idempotency-Key")
			mu.Lock()
			runs[key]++
			n := runs[key]
			mu.Unlock()
			c.JSON(http.StatusCreated, gin.H{"key": key, "run": n, "pad": strings.Repeat("p", 100)})
		})
		srv := httptest.NewServer(r)
		defer srv.Close()
		keys := make([]string, 50)
		for i := range keys {
			keys[i] = uuid.NewString()
		}
		type answer struct {
			key    string
			status int
			replay bool
			body   string
		}
		answers := make(chan answer, 1000)
		var wg sync.WaitGroup
		for w := range 20 {
			wg.Go(func() {
				for i := range 50 {
					key := keys[(w*7+i)%50]
					hr, _ := http.NewRequest("POST", srv.URL+"/pay", strings.NewReader(`{"amount":1}`))
					hr.Header.Set("Idempotency-Key", key)
					hr.Header.Set("Authorization", DefaultAuth)
					res, err := srv.Client().Do(hr)
					if !assert.NoError(t, err) {
						return
					}
					body, _ := io.ReadAll(res.Body)
					res.Body.Close()
					answers <- answer{key, res.StatusCode, res.Header.Get("Idempotent-Replayed") == "true", string(body)}
				}
			})
		}
		wg.Wait()
		close(answers)
		originals := map[string]string{}
		var all []answer
		for a := range answers {
			all = append(all, a)
			if a.status == http.StatusCreated && !a.replay {
				assert.NotContains(t, originals, a.key, "two originals for one key")
				originals[a.key] = a.body
			}
		}
		require.Len(t, all, 1000)
		for _, a := range all {
			switch {
			case a.status == http.StatusCreated && a.replay:
				assert.Equal(t, originals[a.key], a.body, "a replay is byte-identical to the original")
			case a.status == http.StatusCreated, a.status == http.StatusConflict:
			default:
				t.Errorf("unexpected %d: %s", a.status, a.body)
			}
		}
		for _, k := range keys {
			assert.Equal(t, 1, runs[k], "key %s", k)
		}
	}},
	{"spec23/a handler that outlived its lease while nobody took the key: its answer still lands", func(t *testing.T, h Harness) {
		ev := NewEvents()
		a := NewApp(t, h, idem.WithEventHook(ev.Hook))
		first := a.Async(Post("/slow", Key1, "x"))
		a.WaitEntered(1)
		a.Advance(2 * time.Minute) // the lease (1 min) ends before a renewal is due, as in an outage
		a.Open()
		answer := Recv(t, first)
		assert.Equal(t, http.StatusCreated, answer.Status)
		ev.WaitFor(t, idem.EventCompleted)
		again := a.Do(Post("/slow", Key1, "x"))
		assert.True(t, again.Replayed(), "the answer was stored: a retry gets it, not a second run")
		assert.Equal(t, answer.Body, again.Body)
		assert.Equal(t, int32(1), a.Calls.Load())
	}},
	{"spec12/headers written, then a panic: released, never replayed as complete", func(t *testing.T, h Harness) {
		store, _ := h.New(t)
		var calls atomic.Int32
		r := gin.New()
		r.Use(gin.CustomRecoveryWithWriter(io.Discard, func(c *gin.Context, _ any) { c.AbortWithStatus(500) }))
		r.POST("/half", idem.New(idem.WithStore(store)), func(c *gin.Context) {
			if calls.Add(1) == 1 {
				c.Status(http.StatusCreated)
				c.Writer.WriteString(`{"partial":`)
				c.Writer.Flush()
				panic("half way")
			}
			c.String(http.StatusCreated, "whole")
		})
		srv := httptest.NewServer(r)
		defer srv.Close()
		send := func() (int, string, bool) {
			hr, _ := http.NewRequest("POST", srv.URL+"/half", strings.NewReader("x"))
			hr.Header.Set("Idempotency-Key", Key1)
			hr.Header.Set("Authorization", DefaultAuth)
			res, err := srv.Client().Do(hr)
			if err != nil {
				return 0, "", false // the connection may be cut mid-body
			}
			defer res.Body.Close()
			body, _ := io.ReadAll(res.Body)
			return res.StatusCode, string(body), res.Header.Get("Idempotent-Replayed") == "true"
		}
		send()
		status, body, replayed := send()
		assert.Equal(t, http.StatusCreated, status)
		assert.Equal(t, "whole", body, "the retry ran the handler again")
		assert.False(t, replayed)
		_, body, replayed = send()
		assert.True(t, replayed)
		assert.Equal(t, "whole", body)
		assert.Equal(t, int32(2), calls.Load())
	}},
	{"spec27/a slow body that times out holds no key", func(t *testing.T, h Harness) {
		store, _ := h.New(t)
		var calls atomic.Int32
		r := gin.New()
		r.POST("/x", idem.New(idem.WithStore(store)), func(c *gin.Context) {
			calls.Add(1)
			c.String(http.StatusCreated, "ok")
		})
		srv := httptest.NewUnstartedServer(r)
		srv.Config.ReadTimeout = 300 * time.Millisecond
		srv.Start()
		defer srv.Close()
		body, stall := io.Pipe()
		defer stall.Close()
		go stall.Write([]byte("never finished"))
		hr, _ := http.NewRequest("POST", srv.URL+"/x", body)
		hr.ContentLength = 100
		hr.Header.Set("Idempotency-Key", Key1)
		hr.Header.Set("Authorization", DefaultAuth)
		if res, err := srv.Client().Do(hr); err == nil {
			assert.Equal(t, http.StatusBadRequest, res.StatusCode)
			res.Body.Close()
		}
		hr, _ = http.NewRequest("POST", srv.URL+"/x", strings.NewReader("x"))
		hr.Header.Set("Idempotency-Key", Key1)
		hr.Header.Set("Authorization", DefaultAuth)
		res, err := srv.Client().Do(hr)
		require.NoError(t, err)
		res.Body.Close()
		assert.Equal(t, http.StatusCreated, res.StatusCode, "the key was never taken")
		assert.Equal(t, int32(1), calls.Load())
	}},
	{"spec6/one caller never receives another's response", func(t *testing.T, h Harness) {
		a := NewApp(t, h)
		for i := range 20 {
			key := uuid.NewString()
			alice := Post("/things", key, "same body")
			alice.Auth = "Bearer alice"
			bob := alice
			bob.Auth = fmt.Sprintf("Bearer bob-%d", i)
			ra := a.Do(alice)
			rb := a.Do(bob)
			assert.NotEqual(t, ra.Body, rb.Body)
			assert.False(t, rb.Replayed())
		}
	}},
}
