package client

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
)

// fault is what the fault-injecting proxy does with one request.
type fault int

const (
	// forward passes the request upstream and its answer back.
	forward fault = iota
	// dropAnswer forwards the request, waits until the upstream answered in
	// full (the server did the work), then closes the client's connection
	// without an answer.
	dropAnswer
	// resetFirst resets the client's connection (TCP RST) before anything is
	// forwarded: the server never sees the request.
	resetFirst
	// gatewayTimeout forwards the request in the background and answers 504
	// as soon as the upstream handler is running (or the upstream answered),
	// like a gateway whose timeout is shorter than the handler.
	gatewayTimeout
)

func (f fault) String() string {
	return [...]string{"forward", "dropAnswer", "resetFirst", "gatewayTimeout"}[f]
}

// upstreamAnswer is an answer the proxy received from upstream.
type upstreamAnswer struct {
	status   int
	replayed bool
}

// faultProxy is an httptest server in front of an upstream server that
// applies plan[i] to the i-th request it receives (forward once the plan
// is used up).
type faultProxy struct {
	*httptest.Server
	t        *testing.T
	upstream string
	client   *http.Client
	running  <-chan struct{} // the upstream handler announces that it runs
	bgDone   chan struct{}   // one value per finished background forward
	bg       sync.WaitGroup

	mu      sync.Mutex
	plan    []fault
	applied []fault
	answers []upstreamAnswer
}

func newFaultProxy(t *testing.T, upstream string, running <-chan struct{}, plan ...fault) *faultProxy {
	t.Helper()
	tr := &http.Transport{DisableKeepAlives: true}
	p := &faultProxy{
		t:        t,
		upstream: upstream,
		client:   &http.Client{Transport: tr},
		running:  running,
		bgDone:   make(chan struct{}, 16),
		plan:     plan,
	}
	p.Server = httptest.NewServer(http.HandlerFunc(p.serve))
	t.Cleanup(func() {
		p.Close()
		p.bg.Wait()
		tr.CloseIdleConnections()
	})
	return p
}

func (p *faultProxy) next() fault {
	p.mu.Lock()
	defer p.mu.Unlock()
	f := forward
	if n := len(p.applied); n < len(p.plan) {
		f = p.plan[n]
	}
	p.applied = append(p.applied, f)
	return f
}

// seen returns the faults applied so far and the answers the upstream gave.
func (p *faultProxy) seen() ([]fault, []upstreamAnswer) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]fault(nil), p.applied...), append([]upstreamAnswer(nil), p.answers...)
}

func (p *faultProxy) serve(w http.ResponseWriter, r *http.Request) {
	f := p.next()
	if f == resetFirst {
		closeConn(p.t, w, true)
		return
	}
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return
	}
	switch f {
	case gatewayTimeout:
		// The upstream request outlives this one: the gateway gave up, the
		// server did not.
		out, err := p.outgoing(context.Background(), r, body)
		if err != nil {
			p.t.Errorf("proxy: %v", err)
			return
		}
		done := make(chan struct{})
		p.bg.Add(1)
		go func() {
			defer p.bg.Done()
			if _, _, err := p.send(out); err != nil {
				p.t.Errorf("proxy: background forward: %v", err)
			}
			close(done)
			p.bgDone <- struct{}{}
		}()
		select {
		case <-p.running:
		case <-done:
		}
		http.Error(w, "gateway timeout", http.StatusGatewayTimeout)
	case dropAnswer:
		if _, _, err := p.forward(r.Context(), r, body); err != nil {
			p.t.Errorf("proxy: forward: %v", err)
		}
		closeConn(p.t, w, false)
	default:
		resp, b, err := p.forward(r.Context(), r, body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		for k, vs := range resp.Header {
			w.Header()[k] = vs
		}
		w.WriteHeader(resp.StatusCode)
		_, _ = w.Write(b)
	}
}

// forward sends the request upstream, with ctx, and reads the whole answer.
func (p *faultProxy) forward(ctx context.Context, r *http.Request, body []byte) (*http.Response, []byte, error) {
	out, err := p.outgoing(ctx, r, body)
	if err != nil {
		return nil, nil, err
	}
	return p.send(out)
}

// outgoing is the request to send upstream for r.
func (p *faultProxy) outgoing(ctx context.Context, r *http.Request, body []byte) (*http.Request, error) {
	out, err := http.NewRequestWithContext(ctx, r.Method, p.upstream+r.URL.RequestURI(), bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	out.Header = r.Header.Clone()
	out.Header.Del("Connection")
	return out, nil
}

func (p *faultProxy) send(out *http.Request) (*http.Response, []byte, error) {
	resp, err := p.client.Do(out)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, nil, err
	}
	resp.Header.Del("Connection")
	resp.Header.Del("Content-Length")
	p.mu.Lock()
	p.answers = append(p.answers, upstreamAnswer{status: resp.StatusCode, replayed: Replayed(resp)})
	p.mu.Unlock()
	return resp, b, nil
}
