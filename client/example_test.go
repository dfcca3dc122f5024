package client_test

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"

	"github.com/ginidem/idempotency/client"
)

// A POST through the client gets a generated key; a 503 is retried with
// the same key and the same body.
func ExampleNewClient() {
	var mu sync.Mutex
	var keys []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		keys = append(keys, r.Header.Get("Idempotency-Key"))
		n := len(keys)
		mu.Unlock()
		if n == 1 {
			w.WriteHeader(http.StatusServiceUnavailable) // a gateway hiccup
			return
		}
		w.WriteHeader(http.StatusCreated)
	}))
	defer srv.Close()

	hc := client.NewClient(client.WithBackoff(time.Millisecond, 10*time.Millisecond))
	resp, err := hc.Post(srv.URL, "application/json", strings.NewReader(`{"amount":42}`))
	if err != nil {
		fmt.Println(err)
		return
	}
	resp.Body.Close()

	u, _ := uuid.Parse(keys[0])
	fmt.Println(resp.StatusCode, "after", len(keys), "attempts")
	fmt.Println("key:", u.Version(), "sent on both:", keys[0] == keys[1])
	// Output:
	// 201 after 2 attempts
	// key: VERSION_4 sent on both: true
}

// A server that did the work but whose answer was lost gets the same key
// again, and answers with a replay of what it recorded.
func ExampleReplayed() {
	var mu sync.Mutex
	done := map[string]string{} // key -> recorded body
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		key := r.Header.Get("Idempotency-Key")
		mu.Lock()
		body, seen := done[key]
		if !seen {
			done[key] = `{"id":1}` // the work is done and recorded...
		}
		mu.Unlock()
		if !seen {
			conn, _, _ := http.NewResponseController(w).Hijack()
			conn.Close() // ...but the answer is lost on the way
			return
		}
		w.Header().Set("Idempotent-Replayed", "true")
		w.WriteHeader(http.StatusCreated)
		io.WriteString(w, body)
	}))
	defer srv.Close()

	hc := client.NewClient(client.WithBackoff(time.Millisecond, 10*time.Millisecond))
	resp, err := hc.Post(srv.URL, "application/json", strings.NewReader(`{"name":"lamp"}`))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	fmt.Println(resp.StatusCode, string(b), "replayed:", client.Replayed(resp))
	// Output: 201 {"id":1} replayed: true
}

// The hook sees every attempt, for logs and metrics.
func ExampleWithOnAttempt() {
	var mu sync.Mutex
	n := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		n++
		first := n == 1
		mu.Unlock()
		if first {
			w.Header().Set("Retry-After", "0")
			w.WriteHeader(http.StatusTooManyRequests)
			return
		}
		w.WriteHeader(http.StatusOK)
	}))
	defer srv.Close()

	hc := client.NewClient(client.WithOnAttempt(func(a client.Attempt) {
		fmt.Printf("attempt %d: %d retry=%v wait=%v\n", a.N, a.Response.StatusCode, a.Retry, a.Wait)
	}))
	resp, err := hc.Post(srv.URL, "text/plain", strings.NewReader("hello"))
	if err != nil {
		fmt.Println(err)
		return
	}
	resp.Body.Close()
	// Output:
	// attempt 1: 429 retry=true wait=0s
	// attempt 2: 200 retry=false wait=0s
}

// NewTransport wraps any base transport; here DELETE requests get a key too.
func ExampleNewTransport() {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Println(r.Method, "with key:", r.Header.Get("Idempotency-Key") != "")
	}))
	defer srv.Close()

	hc := &http.Client{Transport: client.NewTransport(http.DefaultTransport,
		client.WithMethods(http.MethodPost, http.MethodPatch, http.MethodDelete))}
	for _, m := range []string{http.MethodGet, http.MethodDelete} {
		req, _ := http.NewRequest(m, srv.URL, nil)
		resp, err := hc.Do(req)
		if err != nil {
			fmt.Println(err)
			return
		}
		resp.Body.Close()
	}
	// Output:
	// GET with key: false
	// DELETE with key: true
}
