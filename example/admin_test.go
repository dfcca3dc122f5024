package main

import (
	"encoding/json"
	"net/http"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestSpec29_SupportRunbook: the runbook of docs/operations.md on the
// example: alice's keyed create is looked up by her name and the key, as
// an admin (erin); forgetting it lets alice's retry create again; a key
// that matches nothing is 404; and only an admin may.
func TestSpec29_SupportRunbook(t *testing.T) {
	api := newTestAPI(t, defaultConfig(t))
	const key = "0b0b2e0c-5d5a-4c1e-9f3e-2f7b6b0c9a10"
	first := api.create("alice", key)
	path := "/api/admin/idempotency/alice/" + key

	res := api.do(http.MethodGet, path, "erin", "", "")
	require.Equal(t, http.StatusOK, res.status, string(res.body))
	var rec map[string]any
	require.NoError(t, json.Unmarshal(res.body, &rec))
	assert.Equal(t, "completed", rec["state"])
	assert.Equal(t, float64(http.StatusCreated), rec["status"])
	assert.Equal(t, "/api/requisitions/"+first.ID, rec["location"])
	assert.NotEmpty(t, rec["created_at"])

	assert.Equal(t, http.StatusForbidden, api.do(http.MethodGet, path, "alice", "", "").status, "only an admin")
	assert.Equal(t, http.StatusNotFound, api.do(http.MethodGet, "/api/admin/idempotency/bob/"+key, "erin", "", "").status,
		"bob never used the key")

	assert.Equal(t, http.StatusNoContent, api.do(http.MethodDelete, path, "erin", "", "").status)
	assert.Equal(t, http.StatusNotFound, api.do(http.MethodDelete, path, "erin", "", "").status, "forgotten already")
	second := api.create("alice", key)
	assert.NotEqual(t, first.ID, second.ID, "the retry ran again")
}
