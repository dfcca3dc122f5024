package client

// End-to-end cases: the transport, through a fault-injecting proxy, in
// front of the ginidem middleware on a real Gin engine.

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	idempotency "github.com/ginidem/idempotency"
)

// thingsApp is a Gin service with POST /things behind idempotency.New().
// Its handler counts its runs, answers 201 {"id": run, "name": ...} with a
// Location, or 500 for the first failFirst runs; with block set it
// announces on running that it runs, then waits for release.
type thingsApp struct {
	*httptest.Server
	runs      atomic.Int32
	failFirst int32
	block     bool
	running   chan struct{}
	gate      chan struct{}
	once      sync.Once
}

func newThingsApp(t *testing.T, block bool, failFirst int32, opts ...idempotency.Option) *thingsApp {
	t.Helper()
	gin.SetMode(gin.TestMode)
	a := &thingsApp{failFirst: failFirst, block: block, running: make(chan struct{}, 16), gate: make(chan struct{})}
	r := gin.New()
	r.POST("/things", idempotency.New(opts...), func(c *gin.Context) {
		n := a.runs.Add(1)
		var in struct{ Name string }
		if err := c.ShouldBindJSON(&in); err != nil {
			c.JSON(http.StatusBadRequest, gin.H{"error": err.Error()})
			return
		}
		if a.block {
			a.running <- struct{}{}
			select {
			case <-a.gate:
			case <-c.Request.Context().Done():
			}
		}
		if n <= a.failFirst {
			c.JSON(http.StatusInternalServerError, gin.H{"error": "database unavailable"})
			return
		}
		c.Header("Location", fmt.Sprintf("/things/%d", n))
		c.JSON(http.StatusCreated, gin.H{"id": n, "name": in.Name})
	})
	a.Server = httptest.NewServer(r)
	t.Cleanup(a.Close)
	return a
}

// release lets blocked handlers finish; it may be called more than once.
func (a *thingsApp) release() { a.once.Do(func() { close(a.gate) }) }

type thing struct {
	ID   int    `json:"id"`
	Name string `json:"name"`
}

func postThing(t *testing.T, tr http.RoundTripper, url, key, name string) *http.Response {
	t.Helper()
	// The deadline only turns a broken transport's hang into a failure.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url+"/things", strings.NewReader(`{"name":"`+name+`"}`))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer alice")
	if key != "" {
		req.Header.Set(KeyHeader, key)
	}
	resp, err := (&http.Client{Transport: tr}).Do(req)
	require.NoError(t, err)
	return resp
}

func decodeThing(t *testing.T, resp *http.Response) thing {
	t.Helper()
	var th thing
	require.NoError(t, json.Unmarshal([]byte(readAll(t, resp)), &th))
	return th
}

func outcomes(as []Attempt) []string {
	out := make([]string, len(as))
	for i, a := range as {
		switch {
		case a.Err != nil:
			out[i] = "error"
		case Replayed(a.Response):
			out[i] = fmt.Sprintf("%d replayed", a.Response.StatusCode)
		default:
			out[i] = fmt.Sprint(a.Response.StatusCode)
		}
	}
	return out
}

func TestMiddlewareAnswerLostAfterTheWork(t *testing.T) {
	app := newThingsApp(t, false, 0)
	proxy := newFaultProxy(t, app.URL, nil, dropAnswer, dropAnswer, forward)
	tr, _, a := newTestTransport(t)

	resp := postThing(t, tr, proxy.URL, "", "lamp")

	assert.Equal(t, http.StatusCreated, resp.StatusCode)
	assert.True(t, Replayed(resp), "the server did the work on the first attempt")
	assert.Equal(t, "/things/1", resp.Header.Get("Location"))
	assert.Equal(t, thing{ID: 1, Name: "lamp"}, decodeThing(t, resp))
	assert.EqualValues(t, 1, app.runs.Load(), "handler ran once")
	assert.Equal(t, []string{"error", "error", "201 replayed"}, outcomes(a.all()))
	_, answers := proxy.seen()
	assert.Equal(t, []upstreamAnswer{{201, false}, {201, true}, {201, true}}, answers,
		"the upstream answered every attempt; the first two answers were lost")
}

func TestMiddlewareGatewayTimeoutWhileTheHandlerRuns(t *testing.T) {
	app := newThingsApp(t, true, 0)
	defer app.release()
	proxy := newFaultProxy(t, app.URL, app.running, gatewayTimeout)
	var waits []time.Duration
	sleep := func(ctx context.Context, d time.Duration) error {
		waits = append(waits, d)
		if len(waits) == 2 { // told "in flight, retry after 1 s": let the first finish meanwhile
			app.release()
			select {
			case <-proxy.bgDone:
			case <-ctx.Done():
			}
		}
		return ctx.Err()
	}
	tr, _, a := newTestTransport(t, withSleep(sleep))

	resp := postThing(t, tr, proxy.URL, "", "desk")

	assert.Equal(t, http.StatusCreated, resp.StatusCode)
	assert.True(t, Replayed(resp))
	assert.Equal(t, thing{ID: 1, Name: "desk"}, decodeThing(t, resp))
	assert.EqualValues(t, 1, app.runs.Load(), "handler ran once")
	assert.Equal(t, []string{"504", "409", "201 replayed"}, outcomes(a.all()))
	assert.Equal(t, []time.Duration{DefaultBaseDelay, time.Second}, waits, "backoff after 504, Retry-After after 409")
}

func TestMiddlewareResetBeforeTheRequestArrives(t *testing.T) {
	app := newThingsApp(t, false, 0)
	proxy := newFaultProxy(t, app.URL, nil, resetFirst, resetFirst, forward)
	tr, _, a := newTestTransport(t)

	resp := postThing(t, tr, proxy.URL, "", "chair")

	assert.Equal(t, http.StatusCreated, resp.StatusCode)
	assert.False(t, Replayed(resp), "the server saw the request for the first time")
	assert.Equal(t, thing{ID: 1, Name: "chair"}, decodeThing(t, resp))
	assert.EqualValues(t, 1, app.runs.Load())
	assert.Equal(t, []string{"error", "error", "201"}, outcomes(a.all()))
	faults, answers := proxy.seen()
	assert.Equal(t, []fault{resetFirst, resetFirst, forward}, faults)
	assert.Len(t, answers, 1, "only the third attempt reached the server")
}

func TestMiddlewareInFlightThenReplay(t *testing.T) {
	app := newThingsApp(t, true, 0)
	defer app.release()
	const key = "1f0d4f5e-8a8c-4b8e-9d6a-3c2b1a0f9e8d"

	// Someone (an earlier process, say) sent the same request; it still runs.
	first := make(chan thing, 1)
	go func() {
		var th thing
		defer func() { first <- th }()
		req, err := http.NewRequest(http.MethodPost, app.URL+"/things", strings.NewReader(`{"name":"sofa"}`))
		if !assert.NoError(t, err) {
			return
		}
		req.Header.Set("Authorization", "Bearer alice")
		req.Header.Set(KeyHeader, key)
		resp, err := http.DefaultClient.Do(req)
		if assert.NoError(t, err) {
			defer resp.Body.Close()
			assert.NoError(t, json.NewDecoder(resp.Body).Decode(&th))
		}
	}()
	<-app.running

	// While the transport waits as told by Retry-After, the first finishes.
	var firstAnswer thing
	var once sync.Once
	recorded := &waits{}
	sleep := func(ctx context.Context, d time.Duration) error {
		once.Do(func() {
			app.release()
			select {
			case firstAnswer = <-first:
			case <-ctx.Done():
			}
		})
		return recorded.sleep(ctx, d)
	}
	tr, _, a := newTestTransport(t, withSleep(sleep))

	resp := postThing(t, tr, app.URL, key, "sofa")

	assert.Equal(t, http.StatusCreated, resp.StatusCode)
	assert.True(t, Replayed(resp))
	assert.Equal(t, thing{ID: 1, Name: "sofa"}, firstAnswer)
	assert.Equal(t, firstAnswer, decodeThing(t, resp), "the retry got the first request's answer")
	assert.EqualValues(t, 1, app.runs.Load(), "handler ran once")
	assert.Equal(t, []string{"409", "201 replayed"}, outcomes(a.all()))
	assert.Equal(t, []time.Duration{time.Second}, recorded.all(), "Retry-After: 1 honoured")
}

func TestMiddlewareMismatchIsNotRetried(t *testing.T) {
	for _, status := range []int{http.StatusConflict, http.StatusUnprocessableEntity} {
		t.Run(fmt.Sprint(status), func(t *testing.T) {
			app := newThingsApp(t, false, 0, idempotency.WithMismatchStatus(status))
			proxy := newFaultProxy(t, app.URL, nil)
			tr, w, a := newTestTransport(t)
			const key = "7c9e6679-7425-40de-944b-e07fc1f90ae7"

			resp := postThing(t, tr, proxy.URL, key, "lamp")
			require.Equal(t, http.StatusCreated, resp.StatusCode)
			readAll(t, resp)

			resp = postThing(t, tr, proxy.URL, key, "a different lamp")
			assert.Equal(t, status, resp.StatusCode, "the caller's bug surfaces")
			assert.Empty(t, resp.Header.Get("Retry-After"))
			assert.Equal(t, "application/problem+json", strings.Split(resp.Header.Get("Content-Type"), ";")[0])
			readAll(t, resp)
			assert.EqualValues(t, 1, app.runs.Load())
			assert.Equal(t, []string{"201", fmt.Sprint(status)}, outcomes(a.all()), "one attempt each")
			assert.Empty(t, w.all())
		})
	}
}

func TestMiddlewareServerErrorRetriedAndRunsAgain(t *testing.T) {
	app := newThingsApp(t, false, 2)
	proxy := newFaultProxy(t, app.URL, nil)
	tr, _, a := newTestTransport(t)

	resp := postThing(t, tr, proxy.URL, "", "shelf")

	assert.Equal(t, http.StatusCreated, resp.StatusCode)
	assert.False(t, Replayed(resp), "a 5xx is not kept: the key was released")
	assert.Equal(t, thing{ID: 3, Name: "shelf"}, decodeThing(t, resp))
	assert.EqualValues(t, 3, app.runs.Load(), "the handler ran again on each retry")
	assert.Equal(t, []string{"500", "500", "201"}, outcomes(a.all()))
	keys := map[string]bool{}
	for _, at := range a.all() {
		keys[at.Request.Header.Get(KeyHeader)] = true
	}
	assert.Len(t, keys, 1, "same key on every attempt")
}
