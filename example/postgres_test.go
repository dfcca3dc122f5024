package main

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ginidem/idempotency/internal/pgtest"
)

// newPostgresAPI serves one replica of the example with -postgres on the
// test's database (db.DSN): its own pool, requisitions and pgstore, as
// another process would have.
func newPostgresAPI(t *testing.T, cfg config, db *pgtest.DB) *testAPI {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pg, err := openPostgres(ctx, db.DSN, cfg.Idempotency)
	require.NoError(t, err)
	t.Cleanup(pg.close)
	srv := httptest.NewServer(newRouterOn(cfg, pg.store, pg.reqs))
	t.Cleanup(srv.Close)
	return &testAPI{t: t, url: srv.URL}
}

// writtenTogether reports whether the requisition id was last written by
// the transaction that wrote one of the idempotency records: Postgres
// stamps each row version with its transaction (xmin).
func writtenTogether(t *testing.T, db *pgtest.DB, id string) bool {
	t.Helper()
	return db.Count(t, "idempotency_records WHERE xmin::text = (SELECT xmin::text FROM requisitions WHERE id = '"+id+"')") == 1
}

// TestSpec31_TwoReplicasOnOnePostgres: two replicas of the example with
// -postgres on one database are one service. A create on A is replayed on
// B, with the same requisition, and B reads it; a transition on B is
// replayed on A. Each requisition write and the record of its answer were
// written by one transaction (pgstore.Tx).
func TestSpec31_TwoReplicasOnOnePostgres(t *testing.T) {
	db := pgtest.NewDB(t)
	cfg := defaultConfig(t)
	a, b := newPostgresAPI(t, cfg, db), newPostgresAPI(t, cfg, db)
	body := `{"program":"Family Planning","facility":"Comfort Health Clinic"}`

	createKey := uuid.NewString()
	first := a.do(http.MethodPost, "/api/requisitions", "alice", createKey, body)
	require.Equal(t, http.StatusCreated, first.status, string(first.body))
	created := first.requisition(t)
	replay := b.do(http.MethodPost, "/api/requisitions", "alice", createKey, body)
	require.Equal(t, http.StatusCreated, replay.status, string(replay.body))
	assert.Equal(t, "true", replay.header.Get("Idempotent-Replayed"))
	assert.Equal(t, string(first.body), string(replay.body))
	assert.Equal(t, first.header.Get("Location"), replay.header.Get("Location"))

	read := b.do(http.MethodGet, "/api/requisitions/"+created.ID, "dave", "", "")
	require.Equal(t, http.StatusOK, read.status, string(read.body))
	assert.Equal(t, created, read.requisition(t))
	assert.Equal(t, []requisition{created}, b.list(), "the replay created nothing")
	assert.True(t, writtenTogether(t, db, created.ID), "the requisition and the record committed in one transaction")

	submitKey := uuid.NewString()
	submit := b.do(http.MethodPost, "/api/requisitions/"+created.ID+"/submit", "alice", submitKey, "")
	require.Equal(t, http.StatusOK, submit.status, string(submit.body))
	assert.Equal(t, statusSubmitted, submit.requisition(t).Status)
	again := a.do(http.MethodPost, "/api/requisitions/"+created.ID+"/submit", "alice", submitKey, "")
	require.Equal(t, http.StatusOK, again.status, "a replay, not an invalid transition: %s", again.body)
	assert.Equal(t, "true", again.header.Get("Idempotent-Replayed"))
	assert.True(t, writtenTogether(t, db, created.ID), "the transition and its record committed in one transaction")
	assert.Equal(t, statusSubmitted, a.list()[0].Status)
	assert.Equal(t, 1, db.Count(t, "requisitions"))
}

// TestPostgresWorkflow: the workflow, its refusals and the writes without
// a key work on the Postgres repository as in memory.
func TestPostgresWorkflow(t *testing.T) {
	db := pgtest.NewDB(t)
	api := newPostgresAPI(t, defaultConfig(t), db)
	r := api.create("alice", "") // no key: a statement on the pool
	api.create("bob", "")
	assert.Len(t, api.list(), 2)
	assert.Equal(t, r.ID, api.list()[0].ID, "in creation order")

	path := "/api/requisitions/" + r.ID
	api.do(http.MethodPost, path+"/approve", "carol", uuid.NewString(), "").exampleProblem(t, http.StatusConflict, "invalid-transition")
	for _, step := range []struct {
		action, user string
		want         status
	}{{"submit", "alice", statusSubmitted}, {"authorize", "carol", statusAuthorized}, {"approve", "carol", statusApproved}} {
		res := api.do(http.MethodPost, path+"/"+step.action, step.user, uuid.NewString(), "")
		require.Equal(t, http.StatusOK, res.status, string(res.body))
		assert.Equal(t, step.want, res.requisition(t).Status)
	}
	api.do(http.MethodPost, path+"/reject", "carol", "", "").exampleProblem(t, http.StatusConflict, "invalid-transition")
	for _, id := range []string{uuid.NewString(), "not-a-uuid"} {
		api.do(http.MethodGet, "/api/requisitions/"+id, "dave", "", "").exampleProblem(t, http.StatusNotFound, "not-found")
		api.do(http.MethodPost, "/api/requisitions/"+id+"/submit", "alice", uuid.NewString(), "").exampleProblem(t, http.StatusNotFound, "not-found")
	}
}

// TestPostgresWithoutMiddleware: -postgres with -idempotency=false keeps
// the requisitions in Postgres and creates no idempotency table: the
// baseline of the load test's Postgres rows.
func TestPostgresWithoutMiddleware(t *testing.T) {
	db := pgtest.NewDB(t)
	cfg := defaultConfig(t)
	cfg.Idempotency = false
	api := newPostgresAPI(t, cfg, db)
	key := uuid.NewString()
	api.create("alice", key)
	api.create("alice", key)
	assert.Equal(t, 2, db.Count(t, "requisitions"), "no middleware: the same key creates two")
	assert.Zero(t, db.Count(t, "pg_tables WHERE schemaname = current_schema() AND tablename = 'idempotency_records'"))
}

// TestParseConfigPostgres: -postgres and POSTGRES_URL set the database, the
// flag wins, it excludes -redis, and logs never show its password.
func TestParseConfigPostgres(t *testing.T) {
	env := func(name string) string {
		if name == "POSTGRES_URL" {
			return "postgres://env@db/x"
		}
		return ""
	}
	cfg, err := parseConfig(nil, env)
	require.NoError(t, err)
	assert.Equal(t, "postgres://env@db/x", cfg.PostgresURL)
	cfg, err = parseConfig([]string{"-postgres", "postgres://app:secret@db:5432/app"}, env)
	require.NoError(t, err)
	assert.Equal(t, "postgres://app:secret@db:5432/app", cfg.PostgresURL)
	assert.Equal(t, "postgres://app:xxxxx@db:5432/app", cfg.storeName())
	cfg.PostgresURL = "host=db password=secret"
	assert.NotContains(t, cfg.storeName(), "secret")
	_, err = parseConfig([]string{"-postgres", "postgres://db/x", "-redis", "redis://r:6379/0"}, noEnv)
	assert.ErrorContains(t, err, "choose one")

	_, err = openPostgres(context.Background(), "postgres://app:secret@db:notaport/x", true)
	require.Error(t, err)
	assert.NotContains(t, err.Error(), "secret")
}
