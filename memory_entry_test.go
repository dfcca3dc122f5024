package idempotency

import (
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestSpec17_MemoryEntryKeepsEveryField: a record kept encoded reads back
// field for field, multi-valued headers and an omitted body included.
func TestSpec17_MemoryEntryKeepsEveryField(t *testing.T) {
	expires := time.Now().Add(time.Hour)
	for _, rec := range []*Record{
		{Fingerprint: []byte{1, 2, 3}, Method: http.MethodPost, Path: "/orders/7/submit", Status: http.StatusCreated,
			Header: http.Header{"Location": {"/orders/7"}, "Link": {"<a>", "<b>"}}, Body: []byte(`{"id":7}`)},
		{Fingerprint: []byte{4}, Method: http.MethodPatch, Path: "/s", Status: http.StatusOK,
			Header: http.Header{"Location": {"/s"}}, BodyOmitted: true},
		{Method: http.MethodPost, Path: "/empty", Status: http.StatusNoContent},
	} {
		e := newMemoryEntry("k", Completed, "tok", rec, expires)
		got := e.decode()
		want := *rec
		want.State, want.Token, want.ExpiresAt = Completed, "tok", expires
		assert.Equal(t, &want, got)
		assert.True(t, e.ownedBy("tok"))
		assert.False(t, e.ownedBy("to"))
	}
}

// TestSpec25_MemoryEntryTruncatedNeverPanics: the reader stops at the end of the
// bytes whatever the lengths it reads say.
func TestSpec25_MemoryEntryTruncatedNeverPanics(t *testing.T) {
	rec := &Record{Fingerprint: []byte{1, 2}, Method: "POST", Path: "/p", Status: 201,
		Header: http.Header{"Location": {"/p/1"}, "Vary": {"Accept", "Origin"}}, Body: []byte("body")}
	blob := encodeMemoryRecord("token", rec)
	for n := range len(blob) {
		e := &memoryEntry{state: Completed, blob: blob[:n]}
		require.NotPanics(t, func() { e.decode(); e.ownedBy("token") }, "truncated at %d", n)
	}
	corrupt := append([]byte{0xff, 0xff, 0xff, 0xff, 0x0f}, blob...)
	require.NotPanics(t, func() { (&memoryEntry{blob: corrupt}).decode() })
}

// TestSpec27_MemoryEntryBodyHasNoSpareCapacity: a decoded body is a view of
// the blob that every replay shares. It ends where the blob's bytes end, so
// that an append by one reader copies instead of writing into bytes past
// the body that another reader's append also uses.
func TestSpec27_MemoryEntryBodyHasNoSpareCapacity(t *testing.T) {
	rec := &Record{Fingerprint: []byte{1}, Method: http.MethodPost, Path: "/p", Status: http.StatusCreated,
		Header: http.Header{"Location": {"/p/1"}}, Body: []byte(`{"id":1}`)}
	e := newMemoryEntry("k", Completed, "token", rec, time.Now().Add(time.Hour))
	require.Greater(t, cap(e.blob), len(e.blob), "the blob is sized by an estimate")
	got := e.decode()
	assert.Equal(t, len(got.Body), cap(got.Body))
	a := append(got.Body, " a"...)
	b := append(got.Body, " b"...)
	assert.Equal(t, `{"id":1} a`, string(a), "another reader's append wrote over this one")
	assert.Equal(t, `{"id":1} b`, string(b))
	assert.Equal(t, rec.Body, e.decode().Body, "the record reads back unchanged")
}
