package suite

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/google/uuid"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	idem "github.com/ginidem/idempotency"
)

// The controls of SPEC 34 (issue 19, items 6, 8, 9 and 10): a predicate
// that skips the middleware, a fingerprint part that reads the query string
// parsed, UUIDs of every RFC 9562 version as default keys, and store types
// whose zero value is refused when the middleware is built. SPEC 4 names
// the default validator too.

// skipHeader marks the requests the tests' skip predicate skips.
const skipHeader = "X-Skip-Idempotency"

func skipMarked(c *gin.Context) bool { return c.GetHeader(skipHeader) != "" }

// SkipPredicate (TestSpec34_SkipPredicate): a request the WithSkip predicate
// picks runs as if the middleware were absent: the handler runs each time,
// no store call, no event, no check of its key or caller, no body cap; the
// others keep their idempotency.
func SkipPredicate(t *testing.T, h Harness) {
	var cs *CountingStore
	ev := NewEvents()
	a := NewApp(t, Counted(h, &cs), idem.WithSkip(skipMarked), idem.WithMaxBodyBytes(16),
		idem.WithEventHook(ev.Hook))
	skipped := func(r Req) Req {
		r.Header = http.Header{skipHeader: {"1"}}
		return r
	}

	for i := range 2 {
		r := a.Do(skipped(Post("/things", Key1, "x")))
		assert.Equal(t, http.StatusCreated, r.Status, "run %d", i)
		assert.False(t, r.Replayed())
	}
	assert.Equal(t, int32(2), a.Calls.Load(), "the same key runs the handler again")

	invalid := a.Do(skipped(Post("/things", "not-a-uuid", "x")))
	assert.Equal(t, http.StatusCreated, invalid.Status, "the key is not checked")
	anonymous := skipped(Post("/things", Key1, "x"))
	anonymous.Anonymous = true
	assert.Equal(t, http.StatusCreated, a.Do(anonymous).Status, "nor the caller")
	big := strings.Repeat("b", 64)
	over := a.Do(skipped(Post("/things", Key1, big)))
	assert.Equal(t, http.StatusCreated, over.Status, "the body cap is the middleware's, and it is not there")
	assert.Contains(t, over.Body, big, "the handler read the whole body")

	acq, comp, rel, ext := cs.Counts()
	assert.Zero(t, acq+comp+rel+ext, "no store call for a skipped request")
	assert.Empty(t, ev.Kinds(), "no event for a skipped request")

	first := a.Do(Post("/things", Key2, "x"))
	require.Equal(t, http.StatusCreated, first.Status)
	again := a.Do(Post("/things", Key2, "x"))
	assert.True(t, again.Replayed(), "a request the predicate does not pick keeps its idempotency")
	assert.Equal(t, first.Body, again.Body)
	assert.Equal(t, http.StatusRequestEntityTooLarge, a.Do(Post("/things", uuid.NewString(), big)).Status)
	acq, _, _, _ = cs.Counts()
	assert.Equal(t, 2, acq, "the first request and its replay")
}

// SkipDoesNotBufferTheBody (TestSpec34_SkipDoesNotBufferTheBody): the
// handler of a skipped request reads the body as it arrives; the middleware
// would read it to the end first (SPEC 8, 9), so the handler would not start
// before the client finished. The handler also runs under no key.
func SkipDoesNotBufferTheBody(t *testing.T, h Harness) {
	store, _ := h.New(t)
	started := make(chan struct{})
	r := gin.New()
	r.Use(idem.New(idem.WithStore(store), idem.WithSkip(skipMarked)))
	r.POST("/upload", func(c *gin.Context) {
		head := make([]byte, 5)
		if _, err := io.ReadFull(c.Request.Body, head); err != nil {
			c.Status(http.StatusBadRequest)
			return
		}
		close(started)
		rest, _ := io.ReadAll(c.Request.Body)
		_, _, keyed := idem.Key(c)
		c.JSON(http.StatusOK, gin.H{"body": string(head) + string(rest), "keyed": keyed})
	})
	srv := httptest.NewServer(r)
	t.Cleanup(srv.Close)

	body, client := io.Pipe()
	hr, err := http.NewRequest(http.MethodPost, srv.URL+"/upload", body)
	require.NoError(t, err)
	hr.Header.Set("Authorization", DefaultAuth)
	hr.Header.Set("Idempotency-Key", Key1)
	hr.Header.Set(skipHeader, "1")
	done := make(chan *http.Response, 1)
	go func() {
		res, err := srv.Client().Do(hr)
		assert.NoError(t, err)
		done <- res
	}()
	_, err = client.Write([]byte("hello"))
	require.NoError(t, err)
	select {
	case <-started: // the handler has the first bytes while the client holds the rest
	case <-time.After(10 * time.Second):
		client.CloseWithError(io.ErrUnexpectedEOF)
		t.Fatal("the handler did not start before the body ended: the middleware buffered it")
	}
	_, err = client.Write([]byte(" world"))
	require.NoError(t, err)
	require.NoError(t, client.Close())
	res := <-done
	require.NotNil(t, res)
	defer res.Body.Close()
	got, err := io.ReadAll(res.Body)
	require.NoError(t, err)
	assert.Equal(t, http.StatusOK, res.StatusCode)
	assert.JSONEq(t, `{"body":"hello world","keyed":false}`, string(got))
}

// CanonicalQuery (TestSpec34_CanonicalQuery): with CanonicalQuery, the order
// of query parameters and their percent-encoding do not count, the order of
// a repeated parameter's values does, and a query net/url cannot parse
// counts as sent. The default, QueryString, still compares the raw query.
func CanonicalQuery(t *testing.T, h Harness) {
	a := NewApp(t, h, idem.WithFingerprint(idem.CanonicalQuery(), idem.RawBody()))
	first := a.Do(Post("/things?a=1&b=x+y&c=", Key1, "x"))
	require.Equal(t, http.StatusCreated, first.Status)
	for _, same := range []string{
		"/things?b=x+y&c=&a=1",             // reordered
		"/things?c&b=x%20y&a=%31",          // "c" is "c=", %20 and + are a space, %31 is 1
		"/things?b=x%20%79&a=1&&c=",        // an empty pair is no parameter
		"/things?%61=1&b=x+y&c=",           // an encoded name
		"/things?c=&a=1&b=x+y#fragment-is", // the client sends no fragment
	} {
		r := a.Do(Post(same, Key1, "x"))
		assert.True(t, r.Replayed(), same)
		assert.Equal(t, first.Body, r.Body, same)
	}
	for _, other := range []string{
		"/things?a=1&b=x+y",             // a parameter less
		"/things?a=1&b=x+y&c=&d=",       // a parameter more
		"/things?a=1&b=x+y&c=&a=1",      // a repeated value
		"/things?a=2&b=x+y&c=",          // another value
		"/things?a=1&b=x%2By&c=",        // "+" encoded is a plus, not a space
		"/things?a=1&b=x+y&c=;",         // net/url refuses it: compared as sent
		"/things?a=1&b=x+y&c=%zz",       // likewise
		"/things?A=1&b=x+y&c=",          // names are case-sensitive
		"/things?a=1&b=x+y&c=&b=x+y&b=", // more values
	} {
		r := a.Do(Post(other, Key1, "x"))
		assert.Equal(t, http.StatusConflict, r.Status, other)
		assert.Equal(t, idem.ProblemKeyMismatch, r.Problem(t).Type, other)
	}

	repeated := a.Do(Post("/things?tag=a&tag=b", Key2, "x"))
	require.Equal(t, http.StatusCreated, repeated.Status)
	assert.True(t, a.Do(Post("/things?tag=a&tag=b", Key2, "x")).Replayed())
	assert.Equal(t, http.StatusConflict, a.Do(Post("/things?tag=b&tag=a", Key2, "x")).Status,
		"the values of a repeated parameter keep their order")

	// An unparseable query is compared as sent: two bad escapes are two requests.
	k := uuid.NewString()
	require.Equal(t, http.StatusCreated, a.Do(Post("/things?a=%zz", k, "x")).Status)
	assert.True(t, a.Do(Post("/things?a=%zz", k, "x")).Replayed())
	assert.Equal(t, http.StatusConflict, a.Do(Post("/things?a=%zy", k, "x")).Status)
}

// DefaultQueryIsRaw (TestSpec8_DefaultQueryIsRaw): the default fingerprint
// keeps SPEC 8's raw query string, so reordered parameters are another
// request unless CanonicalQuery is chosen.
func DefaultQueryIsRaw(t *testing.T, h Harness) {
	a := NewApp(t, h)
	require.Equal(t, http.StatusCreated, a.Do(Post("/things?a=1&b=2", Key1, "x")).Status)
	assert.True(t, a.Do(Post("/things?a=1&b=2", Key1, "x")).Replayed())
	r := a.Do(Post("/things?b=2&a=1", Key1, "x"))
	assert.Equal(t, http.StatusConflict, r.Status)
	assert.Equal(t, idem.ProblemKeyMismatch, r.Problem(t).Type)
}

// uuidOfVersion returns a fresh UUID of version v (1 to 8) with the RFC 9562
// variant, as RFC 9562 lays it out.
func uuidOfVersion(t *testing.T, v int) string {
	t.Helper()
	var u uuid.UUID
	var err error
	switch v {
	case 1:
		u, err = uuid.NewUUID()
	case 3:
		u = uuid.NewMD5(uuid.NameSpaceURL, []byte(uuid.NewString()))
	case 4:
		u = uuid.New()
	case 5:
		u = uuid.NewSHA1(uuid.NameSpaceURL, []byte(uuid.NewString()))
	case 6:
		u, err = uuid.NewV6()
	case 7:
		u, err = uuid.NewV7()
	default: // 2 (DCE security) and 8 (custom): the layout of a random UUID with the version set
		u = uuid.New()
		u[6] = u[6]&0x0f | byte(v)<<4
	}
	require.NoError(t, err)
	require.Equal(t, uuid.Version(v), u.Version())
	require.Equal(t, uuid.RFC4122, u.Variant())
	return u.String()
}

// DefaultAcceptsEveryUUIDVersion (TestSpec4_DefaultAcceptsEveryUUIDVersion):
// New() accepts a UUID of each RFC 9562 version, v7 included, in its
// canonical form and in any case (one key in upper and lower case); it
// refuses other forms and non-UUIDs with a detail that says what a valid key
// is and does not echo the key.
func DefaultAcceptsEveryUUIDVersion(t *testing.T, h Harness) {
	a := NewApp(t, h)
	for v := 1; v <= 8; v++ {
		key := uuidOfVersion(t, v)
		first := a.Do(Post("/things", key, "x"))
		require.Equal(t, http.StatusCreated, first.Status, "version %d: %s", v, key)
		upper := a.Do(Post("/things", strings.ToUpper(key), "x"))
		assert.True(t, upper.Replayed(), "version %d in upper case is the same key", v)
		assert.Equal(t, first.Body, upper.Body)
	}
	assert.Equal(t, int32(8), a.Calls.Load())

	v7 := uuidOfVersion(t, 7)
	bare := strings.ReplaceAll(v7, "-", "")
	for _, bad := range []string{
		"order-42",
		"{" + v7 + "}",   // braces
		"urn:uuid:" + v7, // URN
		bare,             // no hyphens
		bare[:8] + "-" + bare[8:12] + "-" + bare[12:16] + "-" + bare[16:20] + bare[20:] + "-", // hyphens misplaced
		"00000000-0000-0000-0000-000000000000",                                                // Nil
		"ffffffff-ffff-ffff-ffff-ffffffffffff",                                                // Max
		"9b2f4b1e-0c1d-0f6a-8e2b-3c4d5e6f7a8b",                                                // version 0
		"9b2f4b1e-0c1d-9f6a-8e2b-3c4d5e6f7a8b",                                                // version 9
		"9b2f4b1e-0c1d-7f6a-ce2b-3c4d5e6f7a8b",                                                // Microsoft's variant
		"9b2f4b1e-0c1d-7f6a-8e2b-3c4d5e6f7a8g",                                                // not hex
	} {
		r := a.Do(Post("/things", bad, "x"))
		require.Equal(t, http.StatusBadRequest, r.Status, bad)
		p := r.Problem(t)
		assert.Equal(t, idem.ProblemInvalidKey, p.Type, bad)
		assert.Contains(t, p.Detail, "UUID (RFC 9562, any version", bad)
		assert.Contains(t, p.Detail, "8-4-4-4-12", bad)
		assert.NotContains(t, p.Detail, bad)
	}
	assert.Equal(t, int32(8), a.Calls.Load())
}

// UUIDv4Only (TestSpec4_UUIDv4Only): KeyUUIDv4, the option SPEC 4 lists,
// refuses v7 and the other versions and says so.
func UUIDv4Only(t *testing.T, h Harness) {
	a := NewApp(t, h, idem.WithKeyValidator(idem.KeyUUIDv4))
	assert.Equal(t, http.StatusCreated, a.Do(Post("/things", uuidOfVersion(t, 4), "x")).Status)
	for _, v := range []int{1, 6, 7, 8} {
		r := a.Do(Post("/things", uuidOfVersion(t, v), "x"))
		assert.Equal(t, http.StatusBadRequest, r.Status, "version %d", v)
		assert.Contains(t, r.Problem(t).Detail, "UUID version 4")
	}
	assert.Equal(t, int32(1), a.Calls.Load())
}

// ZeroStoresAreRefused (TestSpec34_ZeroStoresAreRefused): a zero MemoryStore
// or RedisStore, or a nil one, is refused when the middleware is built, with
// a panic that says how to make one, instead of failing every keyed request
// (a zero MemoryStore panicked in Acquire and answered 500; a zero
// RedisStore answered 503). The store of h, made by its constructor, is
// accepted and serves.
func ZeroStoresAreRefused(t *testing.T, h Harness) {
	for _, tc := range []struct {
		store idem.Store
		panic string
	}{
		{&idem.MemoryStore{}, "idempotency: WithStore with an unusable store: a nil or zero MemoryStore: make it with NewMemoryStore"},
		{(*idem.MemoryStore)(nil), "idempotency: WithStore with an unusable store: a nil or zero MemoryStore: make it with NewMemoryStore"},
		{&idem.RedisStore{}, "idempotency: WithStore with an unusable store: a nil or zero RedisStore (no client): make it with NewRedisStore"},
		{(*idem.RedisStore)(nil), "idempotency: WithStore with an unusable store: a nil or zero RedisStore (no client): make it with NewRedisStore"},
		{nil, "idempotency: WithStore(nil)"},
	} {
		assert.PanicsWithValue(t, tc.panic, func() { idem.New(idem.WithStore(tc.store)) })
	}

	a := NewApp(t, h) // WithStore of the store the harness made with its constructor
	require.Equal(t, http.StatusCreated, a.Do(Post("/things", Key1, "x")).Status)
	assert.True(t, a.Do(Post("/things", Key1, "x")).Replayed())
}
