package main

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/gin-gonic/gin"
	"github.com/google/uuid"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ginidem/idempotency"
	"github.com/ginidem/idempotency/internal/pgtest"
)

func TestMain(m *testing.M) {
	gin.SetMode(gin.TestMode)
	code := m.Run()
	pgtest.StopShared() // the throwaway Postgres, if a test started it
	os.Exit(code)
}

// noEnv is a getenv with an empty environment.
func noEnv(string) string { return "" }

// defaultConfig is the configuration with no flags and no environment.
func defaultConfig(t *testing.T) config {
	t.Helper()
	cfg, err := parseConfig(nil, noEnv)
	require.NoError(t, err)
	return cfg
}

// testAPI is the example service behind a real HTTP server.
type testAPI struct {
	t   *testing.T
	url string
}

// newTestAPI serves newRouter(cfg) with a fresh memory store.
func newTestAPI(t *testing.T, cfg config) *testAPI {
	t.Helper()
	return newTestAPIOn(t, cfg, idempotency.NewMemoryStore())
}

// newTestAPIOn serves newRouter(cfg) with store.
func newTestAPIOn(t *testing.T, cfg config, store idempotency.Store) *testAPI {
	t.Helper()
	srv := httptest.NewServer(newRouter(cfg, store))
	t.Cleanup(srv.Close)
	return &testAPI{t: t, url: srv.URL}
}

// response is what a request got back.
type response struct {
	status int
	header http.Header
	body   []byte
}

// do sends a request as user (none when empty) with the idempotency key
// (none when empty) and body (none when empty).
func (a *testAPI) do(method, path, user, key, body string) response {
	a.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, a.url+path, rd)
	require.NoError(a.t, err)
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	if user != "" {
		req.Header.Set("Authorization", "Bearer "+user)
	}
	if key != "" {
		req.Header.Set("Idempotency-Key", key)
	}
	res, err := http.DefaultClient.Do(req)
	require.NoError(a.t, err)
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	require.NoError(a.t, err)
	return response{status: res.StatusCode, header: res.Header, body: b}
}

// create creates a requisition as user, with key (none when empty), and
// requires 201.
func (a *testAPI) create(user, key string) requisition {
	a.t.Helper()
	res := a.do(http.MethodPost, "/api/requisitions", user, key, `{"program":"Family Planning","facility":"Comfort Health Clinic"}`)
	require.Equal(a.t, http.StatusCreated, res.status, string(res.body))
	return res.requisition(a.t)
}

// list returns all requisitions, read as dave.
func (a *testAPI) list() []requisition {
	a.t.Helper()
	res := a.do(http.MethodGet, "/api/requisitions", "dave", "", "")
	require.Equal(a.t, http.StatusOK, res.status, string(res.body))
	var out struct{ Items []requisition }
	require.NoError(a.t, json.Unmarshal(res.body, &out))
	return out.Items
}

// requisition decodes the body as a requisition.
func (r response) requisition(t *testing.T) requisition {
	t.Helper()
	require.Equal(t, "application/json; charset=utf-8", r.header.Get("Content-Type"))
	var out requisition
	require.NoError(t, json.Unmarshal(r.body, &out), string(r.body))
	return out
}

// problem requires an RFC 9457 answer with the given status and returns it.
func (r response) problem(t *testing.T, status int) idempotency.Problem {
	t.Helper()
	require.Equal(t, status, r.status, string(r.body))
	require.Equal(t, "application/problem+json", r.header.Get("Content-Type"))
	var p idempotency.Problem
	require.NoError(t, json.Unmarshal(r.body, &p), string(r.body))
	assert.Equal(t, status, p.Status)
	assert.NotEmpty(t, p.Type)
	assert.NotEmpty(t, p.Title)
	assert.NotEmpty(t, p.Detail)
	return p
}

// exampleProblem requires one of the example's own problems, of type kind.
func (r response) exampleProblem(t *testing.T, status int, kind string) {
	t.Helper()
	assert.Equal(t, problemBase+kind, r.problem(t, status).Type)
}

func TestParseConfig(t *testing.T) {
	env := map[string]string{
		"ADDR":              "127.0.0.1:9090",
		"IDEMPOTENCY_TTL":   "2h",
		"IDEMPOTENCY_LEASE": "30s",
		"LATENCY":           "250ms",
		"REDIS_URL":         "redis://127.0.0.1:6379/1",
	}
	getenv := func(k string) string { return env[k] }

	t.Run("defaults", func(t *testing.T) {
		assert.Equal(t, config{
			Addr:        "127.0.0.1:8080",
			TTL:         24 * time.Hour,
			Lease:       time.Minute,
			Idempotency: true,
			Breaker:     true,
		}, defaultConfig(t))
	})
	t.Run("env over defaults", func(t *testing.T) {
		cfg, err := parseConfig(nil, getenv)
		require.NoError(t, err)
		assert.Equal(t, config{
			Addr:        "127.0.0.1:9090",
			TTL:         2 * time.Hour,
			Lease:       30 * time.Second,
			Latency:     250 * time.Millisecond,
			Idempotency: true,
			Breaker:     true,
			RedisURL:    "redis://127.0.0.1:6379/1",
		}, cfg)
	})
	t.Run("flags over env", func(t *testing.T) {
		cfg, err := parseConfig([]string{
			"-addr", ":0", "-ttl", "1h", "-lease", "5s", "-latency", "5s",
			"-idempotency=false", "-breaker=false", "-redis", "redis://:secret@localhost:6380/2",
		}, getenv)
		require.NoError(t, err)
		assert.Equal(t, config{
			Addr:        ":0",
			TTL:         time.Hour,
			Lease:       5 * time.Second,
			Latency:     5 * time.Second,
			Idempotency: false,
			RedisURL:    "redis://:secret@localhost:6380/2",
		}, cfg)
	})
	t.Run("a flag wins over a bad env value", func(t *testing.T) {
		// The environment is read first, so a bad value is an error even
		// when a flag would replace it: a typo in the environment is never
		// silently ignored.
		_, err := parseConfig([]string{"-ttl", "1h"}, func(k string) string {
			return map[string]string{"IDEMPOTENCY_TTL": "soon"}[k]
		})
		require.ErrorContains(t, err, "IDEMPOTENCY_TTL")
	})
	for _, tc := range []struct {
		name string
		args []string
		env  map[string]string
		want string
	}{
		{"bad env duration", nil, map[string]string{"LATENCY": "slow"}, "LATENCY"},
		{"bad flag duration", []string{"-lease", "long"}, nil, "lease"},
		{"unknown flag", []string{"-port", "80"}, nil, "port"},
		{"extra argument", []string{"serve"}, nil, "unexpected arguments"},
		{"zero ttl", []string{"-ttl", "0"}, nil, "ttl must be positive"},
		{"negative lease", nil, map[string]string{"IDEMPOTENCY_LEASE": "-1s"}, "lease must be positive"},
		{"negative latency", []string{"-latency", "-1ms"}, nil, "latency must not be negative"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseConfig(tc.args, func(k string) string { return tc.env[k] })
			require.ErrorContains(t, err, tc.want)
		})
	}
}

func TestConfigStoreName(t *testing.T) {
	cfg := defaultConfig(t)
	assert.Equal(t, "memory", cfg.storeName())

	cfg.RedisURL = "redis://user:secret@127.0.0.1:6379/0"
	assert.Equal(t, "redis://user:xxxxx@127.0.0.1:6379/0", cfg.storeName())
	assert.NotContains(t, cfg.storeName(), "secret")

	cfg.Idempotency = false
	assert.Equal(t, "none", cfg.storeName())
}

func TestOpenStore(t *testing.T) {
	store, closeStore, err := openStore(defaultConfig(t))
	require.NoError(t, err)
	assert.IsType(t, &idempotency.MemoryStore{}, store)
	assert.NoError(t, closeStore())

	cfg := defaultConfig(t)
	cfg.RedisURL = "http://127.0.0.1:6379"
	_, _, err = openStore(cfg)
	assert.ErrorContains(t, err, "redis URL")
}

func TestRedisStoreSharedByReplicas(t *testing.T) {
	mr := miniredis.RunT(t)
	cfg := defaultConfig(t)
	cfg.RedisURL = "redis://" + mr.Addr() + "/0"
	store, closeStore, err := openStore(cfg)
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, closeStore()) })
	assert.IsType(t, &idempotency.RedisStore{}, store)

	// Two replicas with their own requisitions, one Redis for the keys.
	one, two := newTestAPIOn(t, cfg, store), newTestAPIOn(t, cfg, store)
	key := uuid.NewString()
	created := one.create("alice", key)

	res := two.do(http.MethodPost, "/api/requisitions", "alice", key, `{"program":"Family Planning","facility":"Comfort Health Clinic"}`)
	require.Equal(t, http.StatusCreated, res.status, string(res.body))
	assert.Equal(t, "true", res.header.Get("Idempotent-Replayed"))
	assert.Equal(t, created, res.requisition(t))
	assert.Empty(t, two.list(), "the second replica's handler did not run")
}

func TestSpec22_RedisDownFailsClosedThenRecovers(t *testing.T) {
	mr := miniredis.RunT(t)
	cfg := defaultConfig(t)
	cfg.RedisURL = "redis://" + mr.Addr() + "/0"
	mr.Close() // down before the service starts: logged, not fatal

	store, closeStore, err := openStore(cfg)
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, closeStore()) })
	api := newTestAPIOn(t, cfg, store)
	body := `{"program":"p","facility":"f"}`

	res := api.do(http.MethodPost, "/api/requisitions", "alice", uuid.NewString(), body)
	assert.Equal(t, idempotency.ProblemStoreUnavailable, res.problem(t, http.StatusServiceUnavailable).Type)
	assert.NotEmpty(t, res.header.Get("Retry-After"))
	assert.Empty(t, api.list(), "the handler did not run")
	api.create("alice", "") // without a key the store is not used

	require.NoError(t, mr.Restart())
	api.create("alice", uuid.NewString())
	assert.Len(t, api.list(), 2)
}

func TestServeShutsDownGracefully(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	entered, release := make(chan struct{}), make(chan struct{})
	h := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		close(entered)
		<-release
		_, _ = io.WriteString(w, "done")
	})
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- serve(ctx, ln, h, time.Minute) }()

	got := make(chan string, 1)
	go func() {
		res, err := http.Get("http://" + ln.Addr().String())
		if err != nil {
			got <- err.Error()
			return
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		got <- string(b)
	}()
	<-entered
	cancel() // the request in flight is still answered
	close(release)
	assert.Equal(t, "done", <-got)
	assert.NoError(t, <-served)
}

func TestAuthentication401(t *testing.T) {
	api := newTestAPI(t, defaultConfig(t))
	body := `{"program":"p","facility":"f"}`
	for _, tc := range []struct {
		name, method, path, auth string
	}{
		{"no header", http.MethodGet, "/api/requisitions", ""},
		{"unknown user", http.MethodGet, "/api/requisitions", "Bearer mallory"},
		{"other scheme", http.MethodGet, "/api/requisitions", "Basic YWxpY2U6"},
		{"no user", http.MethodGet, "/api/requisitions", "Bearer "},
		{"write, no header", http.MethodPost, "/api/requisitions", ""},
		{"write, unknown user", http.MethodPost, "/api/requisitions", "Bearer mallory"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, key := range []string{"", uuid.NewString()} {
				req, err := http.NewRequest(tc.method, api.url+tc.path, strings.NewReader(body))
				require.NoError(t, err)
				if tc.auth != "" {
					req.Header.Set("Authorization", tc.auth)
				}
				if key != "" {
					req.Header.Set("Idempotency-Key", key)
				}
				res, err := http.DefaultClient.Do(req)
				require.NoError(t, err)
				b, err := io.ReadAll(res.Body)
				require.NoError(t, err)
				require.NoError(t, res.Body.Close())
				response{res.StatusCode, res.Header, b}.exampleProblem(t, http.StatusUnauthorized, "unauthorized")
				assert.Contains(t, res.Header.Get("WWW-Authenticate"), "Bearer")
			}
		})
	}
	assert.Empty(t, api.list())
}

func TestSpec20_ForbiddenWinsOverKey(t *testing.T) {
	for _, idem := range []bool{true, false} {
		t.Run(map[bool]string{true: "idempotency on", false: "idempotency off"}[idem], func(t *testing.T) {
			cfg := defaultConfig(t)
			cfg.Idempotency = idem
			api := newTestAPI(t, cfg)
			req := api.create("alice", "")
			id := req.ID

			key := uuid.NewString()
			for _, tc := range []struct {
				user, path, key, body string
			}{
				{"dave", "/api/requisitions", "", `{"program":"p","facility":"f"}`},
				{"dave", "/api/requisitions", key, `{"program":"p","facility":"f"}`},
				// The same key with another body would be a mismatch (409)
				// had anything been stored for dave's first try.
				{"dave", "/api/requisitions", key, `{"program":"other","facility":"f"}`},
				{"carol", "/api/requisitions", key, `{"program":"p","facility":"f"}`},
				{"dave", "/api/requisitions/" + id + "/submit", "", ""},
				{"dave", "/api/requisitions/" + id + "/submit", key, ""},
				{"carol", "/api/requisitions/" + id + "/submit", key, ""},
				{"alice", "/api/requisitions/" + id + "/authorize", key, ""},
				{"bob", "/api/requisitions/" + id + "/approve", key, ""},
				{"dave", "/api/requisitions/" + id + "/reject", key, ""},
			} {
				res := api.do(http.MethodPost, tc.path, tc.user, tc.key, tc.body)
				res.exampleProblem(t, http.StatusForbidden, "forbidden")
			}

			// Nothing was created or moved by the forbidden requests.
			assert.Equal(t, []requisition{req}, api.list())
		})
	}
}

func TestCreateRequisition201(t *testing.T) {
	api := newTestAPI(t, defaultConfig(t))
	res := api.do(http.MethodPost, "/api/requisitions", "bob", "", `{"program":"Essential Meds","facility":"Balaka District Hospital"}`)
	require.Equal(t, http.StatusCreated, res.status, string(res.body))
	got := res.requisition(t)
	assert.Equal(t, "Essential Meds", got.Program)
	assert.Equal(t, "Balaka District Hospital", got.Facility)
	assert.Equal(t, statusInitiated, got.Status)
	_, err := uuid.Parse(got.ID)
	assert.NoError(t, err, "ids are UUIDs")
	assert.Equal(t, "/api/requisitions/"+got.ID, res.header.Get("Location"))
	assert.Empty(t, res.header.Get("Idempotent-Replayed"))

	var fields map[string]any
	require.NoError(t, json.Unmarshal(res.body, &fields))
	assert.Equal(t, map[string]any{
		"id": got.ID, "program": "Essential Meds", "facility": "Balaka District Hospital", "status": "INITIATED",
	}, fields)
}

func TestCreateRequisition400(t *testing.T) {
	api := newTestAPI(t, defaultConfig(t))
	for _, tc := range []struct{ name, body string }{
		{"no body", ""},
		{"not JSON", `program=p&facility=f`},
		{"not an object", `["p","f"]`},
		{"null", `null`},
		{"no program", `{"facility":"f"}`},
		{"no facility", `{"program":"p"}`},
		{"empty program", `{"program":"","facility":"f"}`},
		{"blank facility", `{"program":"p","facility":"  "}`},
		{"wrong type", `{"program":1,"facility":"f"}`},
		{"trailing data", `{"program":"p","facility":"f"} {}`},
		{"truncated", `{"program":"p","facility":`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			api.do(http.MethodPost, "/api/requisitions", "alice", "", tc.body).
				exampleProblem(t, http.StatusBadRequest, "invalid-request")
		})
	}
	t.Run("too large", func(t *testing.T) {
		body := `{"program":"` + strings.Repeat("p", maxBody) + `","facility":"f"}`
		api.do(http.MethodPost, "/api/requisitions", "alice", "", body).
			exampleProblem(t, http.StatusRequestEntityTooLarge, "body-too-large")
	})
	assert.Empty(t, api.list())
}

func TestWorkflowApprove(t *testing.T) {
	api := newTestAPI(t, defaultConfig(t))
	req := api.create("alice", "")
	for _, step := range []struct {
		user, action string
		want         status
	}{
		{"bob", "submit", statusSubmitted},
		{"carol", "authorize", statusAuthorized},
		{"carol", "approve", statusApproved},
	} {
		res := api.do(http.MethodPost, "/api/requisitions/"+req.ID+"/"+step.action, step.user, "", "")
		require.Equal(t, http.StatusOK, res.status, string(res.body))
		assert.Equal(t, "/api/requisitions/"+req.ID, res.header.Get("Location"))
		req.Status = step.want
		assert.Equal(t, req, res.requisition(t))
	}
	res := api.do(http.MethodGet, "/api/requisitions/"+req.ID, "dave", "", "")
	require.Equal(t, http.StatusOK, res.status)
	assert.Equal(t, req, res.requisition(t))
}

func TestWorkflowReject(t *testing.T) {
	api := newTestAPI(t, defaultConfig(t))
	submitted, authorized := api.create("alice", ""), api.create("bob", "")
	for _, r := range []requisition{submitted, authorized} {
		require.Equal(t, http.StatusOK, api.do(http.MethodPost, "/api/requisitions/"+r.ID+"/submit", "alice", "", "").status)
	}
	require.Equal(t, http.StatusOK, api.do(http.MethodPost, "/api/requisitions/"+authorized.ID+"/authorize", "carol", "", "").status)

	for _, r := range []requisition{submitted, authorized} {
		res := api.do(http.MethodPost, "/api/requisitions/"+r.ID+"/reject", "carol", "", "")
		require.Equal(t, http.StatusOK, res.status, string(res.body))
		assert.Equal(t, "/api/requisitions/"+r.ID, res.header.Get("Location"))
		assert.Equal(t, statusRejected, res.requisition(t).Status)
	}
}

func TestInvalidTransition409(t *testing.T) {
	api := newTestAPI(t, defaultConfig(t))
	req := api.create("alice", "")
	post := func(user, action string) response {
		return api.do(http.MethodPost, "/api/requisitions/"+req.ID+"/"+action, user, "", "")
	}
	for _, tc := range []struct{ user, action string }{
		{"carol", "authorize"}, {"carol", "approve"}, {"carol", "reject"}, // from INITIATED
	} {
		post(tc.user, tc.action).exampleProblem(t, http.StatusConflict, "invalid-transition")
	}
	require.Equal(t, http.StatusOK, post("alice", "submit").status)
	post("bob", "submit").exampleProblem(t, http.StatusConflict, "invalid-transition")
	post("carol", "approve").exampleProblem(t, http.StatusConflict, "invalid-transition")
	require.Equal(t, http.StatusOK, post("carol", "authorize").status)
	require.Equal(t, http.StatusOK, post("carol", "approve").status)
	post("carol", "reject").exampleProblem(t, http.StatusConflict, "invalid-transition") // from APPROVED

	res := api.do(http.MethodGet, "/api/requisitions/"+req.ID, "alice", "", "")
	assert.Equal(t, statusApproved, res.requisition(t).Status)
}

func TestNotFound404(t *testing.T) {
	api := newTestAPI(t, defaultConfig(t))
	unknown := uuid.NewString()
	api.do(http.MethodGet, "/api/requisitions/"+unknown, "dave", "", "").exampleProblem(t, http.StatusNotFound, "not-found")
	api.do(http.MethodPost, "/api/requisitions/"+unknown+"/submit", "alice", "", "").exampleProblem(t, http.StatusNotFound, "not-found")
	api.do(http.MethodPost, "/api/requisitions/"+unknown+"/approve", "carol", uuid.NewString(), "").exampleProblem(t, http.StatusNotFound, "not-found")
	api.do(http.MethodGet, "/api/nothing", "dave", "", "").exampleProblem(t, http.StatusNotFound, "not-found")
	api.do(http.MethodDelete, "/api/requisitions", "alice", "", "").exampleProblem(t, http.StatusMethodNotAllowed, "method-not-allowed")
}

func TestReadsByAnyKnownUser(t *testing.T) {
	api := newTestAPI(t, defaultConfig(t))
	want := []requisition{api.create("alice", ""), api.create("bob", ""), api.create("alice", "")}
	for _, user := range []string{"alice", "bob", "carol", "dave"} {
		res := api.do(http.MethodGet, "/api/requisitions", user, "", "")
		require.Equal(t, http.StatusOK, res.status)
		var got struct{ Items []requisition }
		require.NoError(t, json.Unmarshal(res.body, &got))
		assert.Equal(t, want, got.Items, "in creation order")

		res = api.do(http.MethodGet, "/api/requisitions/"+want[1].ID, user, "", "")
		require.Equal(t, http.StatusOK, res.status)
		assert.Equal(t, want[1], res.requisition(t))
	}
}

func TestListEmpty(t *testing.T) {
	api := newTestAPI(t, defaultConfig(t))
	res := api.do(http.MethodGet, "/api/requisitions", "dave", "", "")
	require.Equal(t, http.StatusOK, res.status)
	assert.JSONEq(t, `{"items":[]}`, string(res.body))
}

func TestSpec17_ReplayReturnsSameRequisition(t *testing.T) {
	api := newTestAPI(t, defaultConfig(t))
	key := uuid.NewString()
	body := `{"program":"Family Planning","facility":"Comfort Health Clinic"}`

	first := api.do(http.MethodPost, "/api/requisitions", "alice", key, body)
	require.Equal(t, http.StatusCreated, first.status, string(first.body))
	assert.Empty(t, first.header.Get("Idempotent-Replayed"))

	again := api.do(http.MethodPost, "/api/requisitions", "alice", key, body)
	require.Equal(t, http.StatusCreated, again.status, string(again.body))
	assert.Equal(t, "true", again.header.Get("Idempotent-Replayed"))
	assert.Equal(t, first.header.Get("Location"), again.header.Get("Location"))
	assert.Equal(t, first.body, again.body, "byte-identical replay")
	assert.Equal(t, first.requisition(t).ID, again.requisition(t).ID)

	assert.Len(t, api.list(), 1, "the replay created nothing")
}

func TestSpec17_ReplayedTransitionIsNotAConflict(t *testing.T) {
	api := newTestAPI(t, defaultConfig(t))
	req := api.create("alice", "")
	key := uuid.NewString()
	path := "/api/requisitions/" + req.ID + "/submit"

	first := api.do(http.MethodPost, path, "alice", key, "")
	require.Equal(t, http.StatusOK, first.status, string(first.body))
	// Without the key, a second submit is an invalid transition (409); with
	// it, the client gets the first answer again.
	again := api.do(http.MethodPost, path, "alice", key, "")
	require.Equal(t, http.StatusOK, again.status, string(again.body))
	assert.Equal(t, "true", again.header.Get("Idempotent-Replayed"))
	assert.Equal(t, first.body, again.body)
	api.do(http.MethodPost, path, "alice", "", "").exampleProblem(t, http.StatusConflict, "invalid-transition")
}

func TestSpec16_MismatchGets409Problem(t *testing.T) {
	api := newTestAPI(t, defaultConfig(t))
	key := uuid.NewString()
	first := api.create("alice", key)

	res := api.do(http.MethodPost, "/api/requisitions", "alice", key, `{"program":"Other","facility":"Comfort Health Clinic"}`)
	assert.Equal(t, idempotency.ProblemKeyMismatch, res.problem(t, http.StatusConflict).Type)
	assert.Empty(t, res.header.Get("Idempotent-Replayed"))
	assert.Equal(t, []requisition{first}, api.list())
}

func TestSpec7_KeyReusedOnAnotherRouteIsRefused(t *testing.T) {
	api := newTestAPI(t, defaultConfig(t))
	key := uuid.NewString()
	req := api.create("alice", key)

	res := api.do(http.MethodPost, "/api/requisitions/"+req.ID+"/submit", "alice", key, "")
	assert.Equal(t, idempotency.ProblemKeyMismatch, res.problem(t, http.StatusConflict).Type)
	got := api.do(http.MethodGet, "/api/requisitions/"+req.ID, "alice", "", "").requisition(t)
	assert.Equal(t, statusInitiated, got.Status, "the submit did not run")
}

func TestSpec6_KeysScopedPerUser(t *testing.T) {
	api := newTestAPI(t, defaultConfig(t))
	key := uuid.NewString()
	a := api.create("alice", key)
	b := api.create("bob", key)
	assert.NotEqual(t, a.ID, b.ID, "bob never gets alice's stored response")
	assert.Len(t, api.list(), 2)
}

func TestSpec2_NoKeyCreatesEachTime(t *testing.T) {
	api := newTestAPI(t, defaultConfig(t))
	a, b := api.create("alice", ""), api.create("alice", "")
	assert.NotEqual(t, a.ID, b.ID)
	assert.Len(t, api.list(), 2)
}

func TestSpec4_InvalidKey400(t *testing.T) {
	api := newTestAPI(t, defaultConfig(t))
	body := `{"program":"p","facility":"f"}`
	for _, key := range []string{"not-a-uuid", "{" + uuid.NewString() + "}" /* not the canonical form */} {
		res := api.do(http.MethodPost, "/api/requisitions", "alice", key, body)
		assert.Equal(t, idempotency.ProblemInvalidKey, res.problem(t, http.StatusBadRequest).Type)
	}
	assert.Empty(t, api.list())
}

func TestSpec18_InFlightDuplicateGets409(t *testing.T) {
	cfg := defaultConfig(t)
	entered, release := make(chan struct{}), make(chan struct{})
	var calls atomic.Int32
	cfg.hold = func() { // holds the first write handler only
		if calls.Add(1) == 1 {
			close(entered)
			<-release
		}
	}
	api := newTestAPI(t, cfg)
	key := uuid.NewString()

	first := make(chan requisition, 1)
	go func() { first <- api.create("alice", key) }()
	<-entered

	dup := api.do(http.MethodPost, "/api/requisitions", "alice", key, `{"program":"Family Planning","facility":"Comfort Health Clinic"}`)
	assert.Equal(t, idempotency.ProblemInFlight, dup.problem(t, http.StatusConflict).Type)
	assert.NotEmpty(t, dup.header.Get("Retry-After"))

	close(release)
	created := <-first
	assert.Equal(t, created, api.create("alice", key), "a retry after completion replays")
	assert.Equal(t, int32(1), calls.Load(), "the handler ran once")
	assert.Len(t, api.list(), 1)
}

func TestIdempotencyOff_SameKeyCreatesTwo(t *testing.T) {
	cfg := defaultConfig(t)
	cfg.Idempotency = false
	api := newTestAPI(t, cfg)
	key := uuid.NewString()
	a, b := api.create("alice", key), api.create("alice", key)
	assert.NotEqual(t, a.ID, b.ID)
	assert.Len(t, api.list(), 2)

	res := api.do(http.MethodPost, "/api/requisitions", "alice", "not-a-uuid", `{"program":"p","facility":"f"}`)
	assert.Equal(t, http.StatusCreated, res.status, "the key is not even looked at")
}
