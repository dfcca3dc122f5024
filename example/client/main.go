// Command client shows the idempotency client transport surviving a flaky
// network in front of the example requisition service.
//
// It starts an in-process reverse proxy on a loopback port that, drawn from
// a seeded random source, drops some answers after the service did the
// work, resets some connections before forwarding, and answers some 503s
// itself. Through that proxy it creates -n requisitions as user alice with
// the client transport, prints per request the attempts and whether the
// final answer was a replay, and checks with GET /api/requisitions that
// exactly -n requisitions were created.
//
//	go run ./example                                   # the service, on 127.0.0.1:8080
//	go run ./example/client -addr http://127.0.0.1:8080 -n 20 -seed 1
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ginidem/idempotency/client"
)

// options are the demo's command-line settings.
type options struct {
	addr   string  // base URL of the example service
	n      int     // requisitions to create
	seed   uint64  // seed of the proxy's faults
	faults float64 // share of requests the proxy spoils
	user   string  // the caller, sent as Authorization: Bearer <user>
}

func main() {
	var o options
	flag.StringVar(&o.addr, "addr", "http://127.0.0.1:8080", "base `URL` of the example service (go run ./example)")
	flag.IntVar(&o.n, "n", 20, "number of requisitions to create")
	flag.Uint64Var(&o.seed, "seed", 1, "seed of the proxy's faults: the same seed spoils the same requests")
	flag.Float64Var(&o.faults, "faults", 0.45, "share of requests the proxy spoils, split evenly between lost answers, resets and 503s")
	flag.StringVar(&o.user, "user", "alice", "user to send as Authorization: Bearer <user>")
	flag.Parse()
	if o.n < 0 || o.faults < 0 || o.faults > 1 || flag.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "client: need -n >= 0, 0 <= -faults <= 1 and no arguments")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "client:", err)
		os.Exit(1)
	}
}

// trail collects the outcome of each attempt of one request.
type trail struct{ steps []string }

type trailKey struct{}

// run starts the flaky proxy in front of o.addr, creates o.n requisitions
// through it, and writes a report to out.
func run(ctx context.Context, o options, out io.Writer) error {
	upstream := strings.TrimRight(o.addr, "/")
	proxy, err := startFlakyProxy(upstream, o.seed, o.faults)
	if err != nil {
		return err
	}
	defer proxy.close()

	// The transport, as an application would set it up; the hook reports
	// each attempt to the trail carried by the request's context.
	hc := client.NewClient(
		client.WithMaxAttempts(6),
		client.WithBackoff(50*time.Millisecond, time.Second),
		client.WithOnAttempt(func(a client.Attempt) {
			if t, ok := a.Request.Context().Value(trailKey{}).(*trail); ok {
				t.steps = append(t.steps, outcome(a))
			}
		}),
	)
	hc.Timeout = 30 * time.Second

	before, err := countRequisitions(ctx, hc, upstream, o.user)
	if err != nil {
		return fmt.Errorf("is the example service running at %s (go run ./example)? %w", upstream, err)
	}
	fmt.Fprintf(out, "proxy %s -> %s, seed %d, %d requisitions as %s\n\n", proxy.url, upstream, o.seed, o.n, o.user)

	programs := []string{"Family Planning", "Essential Meds", "TB", "Malaria"}
	facilities := []string{"Comfort Health Clinic", "Balaka District Hospital", "Nandumbo Health Center"}
	attempts, replays, ok := 0, 0, 0
	for i := range o.n {
		t := &trail{}
		body := fmt.Sprintf(`{"program":%q,"facility":%q}`, programs[i%len(programs)], facilities[i%len(facilities)])
		req, err := http.NewRequestWithContext(context.WithValue(ctx, trailKey{}, t),
			http.MethodPost, proxy.url+"/api/requisitions", strings.NewReader(body))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer "+o.user)
		resp, err := hc.Do(req)
		attempts += len(t.steps)
		if err != nil {
			fmt.Fprintf(out, "#%02d  failed after %d attempts [%s]: %v\n", i+1, len(t.steps), strings.Join(t.steps, ", "), err)
			continue
		}
		var created struct{ ID string }
		err = json.NewDecoder(resp.Body).Decode(&created)
		resp.Body.Close()
		replayed := client.Replayed(resp)
		if replayed {
			replays++
		}
		if resp.StatusCode == http.StatusCreated && err == nil {
			ok++
		}
		fmt.Fprintf(out, "#%02d  %d  id=%.8s  attempts=%d  replayed=%-5v  [%s]\n",
			i+1, resp.StatusCode, created.ID, len(t.steps), replayed, strings.Join(t.steps, ", "))
	}

	after, err := countRequisitions(ctx, hc, upstream, o.user)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "\nrequests %d, answered 201: %d, attempts %d, replays %d\n", o.n, ok, attempts, replays)
	fmt.Fprintf(out, "requisitions before %d, after %d: created %d\n", before, after, after-before)
	fmt.Fprintf(out, "proxy: %s\n", proxy.stats())
	if after-before != ok {
		return fmt.Errorf("created %d requisitions for %d successful requests", after-before, ok)
	}
	return nil
}

// outcome is a short word for what one attempt got.
func outcome(a client.Attempt) string {
	switch {
	case a.Err == nil:
		return fmt.Sprint(a.Response.StatusCode)
	case errors.Is(a.Err, syscall.ECONNRESET):
		return "reset"
	case errors.Is(a.Err, io.EOF), errors.Is(a.Err, io.ErrUnexpectedEOF):
		return "no answer"
	}
	return "error"
}

// countRequisitions reads GET /api/requisitions and counts its items.
func countRequisitions(ctx context.Context, hc *http.Client, base, user string) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/api/requisitions", nil)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Authorization", "Bearer "+user)
	resp, err := hc.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("GET /api/requisitions: %s", resp.Status)
	}
	var list struct{ Items []json.RawMessage }
	if err := json.NewDecoder(resp.Body).Decode(&list); err != nil {
		return 0, fmt.Errorf("GET /api/requisitions: %w", err)
	}
	return len(list.Items), nil
}

// Flaky proxy.

// fault is what the proxy does with one request.
type fault int

const (
	pass        fault = iota // forward the request and its answer
	loseAnswer               // forward, let the service finish, close the connection without the answer
	reset                    // reset the connection before forwarding
	unavailable              // answer 503 without forwarding
)

// flakyProxy is a reverse proxy on a loopback port that spoils requests.
type flakyProxy struct {
	url      string
	srv      *http.Server
	upstream string
	client   *http.Client

	mu     sync.Mutex
	draw   func() float64
	faults float64
	count  [4]int
}

func startFlakyProxy(upstream string, seed uint64, faults float64) (*flakyProxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	rng := newRand(seed)
	p := &flakyProxy{
		url:      "http://" + ln.Addr().String(),
		upstream: upstream,
		client:   &http.Client{Timeout: 30 * time.Second},
		draw:     rng,
		faults:   faults,
	}
	p.srv = &http.Server{Handler: p, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = p.srv.Serve(ln) }()
	return p, nil
}

func (p *flakyProxy) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = p.srv.Shutdown(ctx)
	p.client.CloseIdleConnections()
}

// next draws the fault for the next request, in order of arrival.
func (p *flakyProxy) next() fault {
	p.mu.Lock()
	defer p.mu.Unlock()
	f := pass
	if x := p.draw(); x < p.faults {
		f = fault(1 + int(3*x/p.faults))
	}
	p.count[f]++
	return f
}

func (p *flakyProxy) stats() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	c := p.count
	return fmt.Sprintf("%d requests: %d forwarded, %d answers lost after the work, %d connections reset, %d answered 503",
		c[0]+c[1]+c[2]+c[3], c[pass], c[loseAnswer], c[reset], c[unavailable])
}

func (p *flakyProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	// No keep-alive: each attempt is a new connection, so net/http never
	// resends a request on its own and every attempt is counted.
	w.Header().Set("Connection", "close")
	switch p.next() {
	case reset:
		hangUp(w, true)
	case unavailable:
		http.Error(w, "service unavailable", http.StatusServiceUnavailable)
	case loseAnswer:
		if resp, _, err := p.forward(r); err == nil && resp != nil {
			hangUp(w, false)
			return
		}
		http.Error(w, "bad gateway", http.StatusBadGateway)
	default:
		resp, body, err := p.forward(r)
		if err != nil {
			http.Error(w, "bad gateway", http.StatusBadGateway)
			return
		}
		for k, vs := range resp.Header {
			if k != "Connection" && k != "Content-Length" {
				w.Header()[k] = vs
			}
		}
		w.WriteHeader(resp.StatusCode)
		_, _ = w.Write(body)
	}
}

// forward sends r to the upstream and reads the whole answer.
func (p *flakyProxy) forward(r *http.Request) (*http.Response, []byte, error) {
	out, err := http.NewRequestWithContext(r.Context(), r.Method, p.upstream+r.URL.RequestURI(), r.Body)
	if err != nil {
		return nil, nil, err
	}
	out.Header = r.Header.Clone()
	out.Header.Del("Connection")
	out.ContentLength = r.ContentLength
	resp, err := p.client.Do(out)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp, body, err
}

// newRand returns a deterministic source of floats in [0, 1).
func newRand(seed uint64) func() float64 {
	return rand.New(rand.NewPCG(seed, 0x9e3779b97f4a7c15)).Float64
}

// hangUp closes the client's connection without an answer: with reset, by
// a TCP RST, else by a FIN.
func hangUp(w http.ResponseWriter, reset bool) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return
	}
	if tc, ok := conn.(*net.TCPConn); ok && reset {
		_ = tc.SetLinger(0)
	}
	_ = conn.Close()
}
