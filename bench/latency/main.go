// Command latency sends keyed POSTs to the example service from a fixed
// number of connections for a while, and prints the requests per second
// and the latency percentiles of every request, whatever its status. The
// load scripts use it where wrk's own latency figures cannot be trusted:
// measuring keyed requests while the store is down (bench/outage.sh).
package main

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/google/uuid"
)

func main() {
	url := flag.String("url", "http://127.0.0.1:8080/api/requisitions", "the create endpoint")
	conns := flag.Int("c", 16, "connections")
	duration := flag.Duration("d", 10*time.Second, "how long to send")
	flag.Parse()

	body := []byte(`{"program":"Family Planning","facility":"Comfort Health Clinic"}`)
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: *conns}, Timeout: 30 * time.Second}
	var mu sync.Mutex
	var latencies []time.Duration
	failed := 0
	end := time.Now().Add(*duration)
	var wg sync.WaitGroup
	for range *conns {
		wg.Go(func() {
			var mine []time.Duration
			bad := 0
			for time.Now().Before(end) {
				req, _ := http.NewRequest(http.MethodPost, *url, bytes.NewReader(body))
				req.Header.Set("Authorization", "Bearer alice")
				req.Header.Set("Content-Type", "application/json")
				req.Header.Set("Idempotency-Key", uuid.NewString())
				start := time.Now()
				res, err := client.Do(req)
				if err != nil {
					bad++
					continue
				}
				io.Copy(io.Discard, res.Body)
				res.Body.Close()
				mine = append(mine, time.Since(start))
			}
			mu.Lock()
			latencies = append(latencies, mine...)
			failed += bad
			mu.Unlock()
		})
	}
	wg.Wait()
	if len(latencies) == 0 {
		fmt.Fprintln(os.Stderr, "latency: no answers")
		os.Exit(1)
	}
	slices.Sort(latencies)
	at := func(p float64) float64 {
		return float64(latencies[int(p*float64(len(latencies)-1))].Microseconds()) / 1000
	}
	fmt.Printf("%.0f %.2f %.2f %.2f %.2f %d\n", float64(len(latencies))/duration.Seconds(),
		at(0.50), at(0.90), at(0.99), at(1), failed)
}
