package idempotency_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
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

	idem "github.com/ginidem/idempotency"
)

// behaviour is one SPEC.md point, proved over HTTP against one store.
type behaviour struct {
	name string
	run  func(t *testing.T, h storeHarness)
}

// TestBehaviour is the shared behaviour table: every case runs against
// every store (memory, real Redis, Cluster), so the stores cannot drift.
func TestBehaviour(t *testing.T) { runBehaviours(t, behaviours) }

var behaviours = []behaviour{
	// The key (1-5).
	{"spec1/the Idempotency-Key header is read", func(t *testing.T, h storeHarness) {
		a := newApp(t, h)
		first := a.do(post("/things", key1, `{"a":1}`))
		second := a.do(post("/things", key1, `{"a":1}`))
		assert.Equal(t, http.StatusCreated, first.status)
		assert.True(t, second.replayed())
		assert.Equal(t, int32(1), a.calls.Load())
	}},
	{"spec1/more header names are configurable", func(t *testing.T, h storeHarness) {
		a := newApp(t, h, idem.WithKeyHeaders("Idempotency-Key", "X-Idempotency-Key"))
		alt := req{method: "POST", path: "/things", body: "x", header: http.Header{"X-Idempotency-Key": {key1}}}
		a.do(alt)
		assert.True(t, a.do(alt).replayed())
		assert.True(t, a.do(post("/things", key1, "x")).replayed(), "both names name the same key")
		assert.Equal(t, int32(1), a.calls.Load())
	}},
	{"spec1/two different values get 400", func(t *testing.T, h storeHarness) {
		a := newApp(t, h, idem.WithKeyHeaders("Idempotency-Key", "X-Idempotency-Key"))
		twoLines := a.do(req{method: "POST", path: "/things", header: http.Header{"Idempotency-Key": {key1, key2}}})
		assert.Equal(t, http.StatusBadRequest, twoLines.status)
		assert.Equal(t, idem.ProblemInvalidKey, twoLines.problem(t).Type)
		twoNames := a.do(req{method: "POST", path: "/things", key: key1, header: http.Header{"X-Idempotency-Key": {key2}}})
		assert.Equal(t, http.StatusBadRequest, twoNames.status)
		same := a.do(req{method: "POST", path: "/things", header: http.Header{"Idempotency-Key": {key1, `"` + key1 + `"`}}})
		assert.Equal(t, http.StatusCreated, same.status, "the same key twice is one key")
		assert.Equal(t, int32(1), a.calls.Load())
	}},
	{"spec2/no key runs normally without a store call", func(t *testing.T, h storeHarness) {
		var cs *countingStore
		a := newApp(t, counted(h, &cs))
		for range 3 {
			r := a.do(post("/things", "", "x"))
			assert.Equal(t, http.StatusCreated, r.status)
			assert.False(t, r.replayed())
		}
		assert.Equal(t, int32(3), a.calls.Load())
		acq, comp, rel, ext := cs.counts()
		assert.Zero(t, acq+comp+rel+ext)
	}},
	{"spec2/a required key is missing: 400", func(t *testing.T, h storeHarness) {
		a := newApp(t, h, idem.RequireKey())
		r := a.do(post("/things", "", "x"))
		assert.Equal(t, http.StatusBadRequest, r.status)
		assert.Equal(t, idem.ProblemMissingKey, r.problem(t).Type)
		assert.Zero(t, a.calls.Load())
		assert.Equal(t, http.StatusCreated, a.do(post("/things", key1, "x")).status)
	}},
	{"spec3/bare and quoted forms name the same key", func(t *testing.T, h storeHarness) {
		a := newApp(t, h)
		first := a.do(post("/things", key1, "x"))
		quoted := a.do(post("/things", `"`+key1+`"`, "x"))
		assert.True(t, quoted.replayed())
		assert.Equal(t, first.body, quoted.body)
		assert.Equal(t, int32(1), a.calls.Load())
	}},
	{"spec3/malformed values get 400", func(t *testing.T, h storeHarness) {
		a := newApp(t, h, idem.WithKeyValidator(idem.KeyPrintable(255)))
		for _, bad := range []string{
			`"` + key1, `"abc"def`, `"a\x"`, `""`, `"tab\there"`, " ", "a b", `ab"c`, `a\b`,
			"caf\xc3\xa9", `"caf` + "\xc3\xa9" + `"`, `"abc";param=1`, `"abc"` + `"`, strings.Repeat("k", 10<<10),
		} {
			r := a.do(req{method: "POST", path: "/things", header: http.Header{"Idempotency-Key": {bad}}})
			assert.Equal(t, http.StatusBadRequest, r.status, "%q", bad)
			assert.Equal(t, idem.ProblemInvalidKey, r.problem(t).Type)
		}
		empty := a.do(req{method: "POST", path: "/things", header: http.Header{"Idempotency-Key": {""}}})
		assert.Equal(t, http.StatusBadRequest, empty.status, "an empty value")
		assert.Zero(t, a.calls.Load())
	}},
	{"spec3/quoted escapes are decoded", func(t *testing.T, h storeHarness) {
		a := newApp(t, h, idem.WithKeyValidator(idem.KeyPrintable(255)))
		a.do(post("/things", `"a\"b\\c d"`, "x"))
		same := a.do(req{method: "POST", path: "/things", body: "x", header: http.Header{"Idempotency-Key": {`"a\"b\\c d"`}}})
		assert.True(t, same.replayed())
		assert.Equal(t, int32(1), a.calls.Load())
	}},
	{"spec4/a canonical UUID by default, and the detail says so", func(t *testing.T, h storeHarness) {
		a := newApp(t, h)
		for _, bad := range []string{
			"order-42",
			"{9b2f4b1e-0c1d-4f6a-8e2b-3c4d5e6f7a8b}", // braces form
			"9b2f4b1e0c1d4f6a8e2b3c4d5e6f7a8b",       // no dashes
		} {
			r := a.do(post("/things", bad, "x"))
			assert.Equal(t, http.StatusBadRequest, r.status, bad)
			assert.Contains(t, r.problem(t).Detail, "UUID (RFC 9562, any version")
		}
		assert.Zero(t, a.calls.Load())
		// Every RFC 9562 version, v1 as v7: TestSpec4_DefaultAcceptsEveryUUIDVersion.
		assert.Equal(t, http.StatusCreated, a.do(post("/things", "6ba7b810-9dad-11d1-80b4-00c04fd430c8", "x")).status, "v1")
	}},
	{"spec4/other validators", func(t *testing.T, h storeHarness) {
		anyUUID := newApp(t, h, idem.WithKeyValidator(idem.KeyAnyUUID))
		assert.Equal(t, http.StatusCreated, anyUUID.do(post("/things", "6ba7b810-9dad-11d1-80b4-00c04fd430c8", "x")).status)
		assert.Equal(t, http.StatusBadRequest, anyUUID.do(post("/things", "order-42", "x")).status)

		printable := newApp(t, h, idem.WithKeyValidator(idem.KeyPrintable(10)))
		assert.Equal(t, http.StatusCreated, printable.do(post("/things", "order-42", "x")).status)
		long := printable.do(post("/things", "order-4242424242", "x"))
		assert.Equal(t, http.StatusBadRequest, long.status)
		assert.Contains(t, long.problem(t).Detail, "at most 10")

		custom := newApp(t, h, idem.WithKeyValidator(func(k string) error {
			if !strings.HasPrefix(k, "ord_") {
				return fmt.Errorf("the key must start with ord_")
			}
			return nil
		}))
		assert.Equal(t, http.StatusCreated, custom.do(post("/things", "ord_1", "x")).status)
		bad := custom.do(post("/things", "inv_1", "x"))
		assert.Equal(t, "the key must start with ord_", bad.problem(t).Detail)
	}},
	{"spec4/a UUID in upper, lower and mixed case is one key", func(t *testing.T, h storeHarness) {
		a := newApp(t, h)
		first := a.do(post("/things", strings.ToUpper(key1), "x"))
		require.Equal(t, http.StatusCreated, first.status)
		for _, k := range []string{key1, strings.ToUpper(key1[:18]) + key1[18:], `"` + strings.ToUpper(key1) + `"`} {
			r := a.do(post("/things", k, "x"))
			assert.True(t, r.replayed(), k)
			assert.Equal(t, first.body, r.body)
		}
		same := a.do(req{method: "POST", path: "/things", body: "x", header: http.Header{"Idempotency-Key": {key1, strings.ToUpper(key1)}}})
		assert.True(t, same.replayed(), "two lines with the same UUID in two cases are one key")
		assert.Equal(t, int32(1), a.calls.Load())
	}},
	{"spec5/POST and PATCH by default; other methods ignore the key", func(t *testing.T, h storeHarness) {
		a := newApp(t, h)
		a.do(req{method: "PATCH", path: "/things", key: key1, body: "x"})
		assert.True(t, a.do(req{method: "PATCH", path: "/things", key: key1, body: "x"}).replayed())
		put := req{method: "PUT", path: "/things", key: key2, body: "x"}
		assert.False(t, a.do(put).replayed())
		assert.False(t, a.do(put).replayed())
		bad := a.do(req{method: "PUT", path: "/things", key: "not-a-uuid", body: "x"})
		assert.Equal(t, http.StatusCreated, bad.status, "a key on an ignored method is not even validated")
		assert.Equal(t, int32(4), a.calls.Load())
	}},
	{"spec5/methods are configurable", func(t *testing.T, h storeHarness) {
		a := newApp(t, h, idem.WithMethods(http.MethodPut))
		put := req{method: "PUT", path: "/things", key: key1, body: "x"}
		a.do(put)
		assert.True(t, a.do(put).replayed())
		a.do(post("/things", key2, "x"))
		assert.False(t, a.do(post("/things", key2, "x")).replayed())
		assert.Equal(t, int32(3), a.calls.Load())
	}},

	// Scope and fingerprint (6-9).
	{"spec6/the same key from another caller is another record", func(t *testing.T, h storeHarness) {
		a := newApp(t, h)
		alice := post("/things", key1, "x")
		alice.auth = "Bearer alice"
		bob := alice
		bob.auth = "Bearer bob"
		ra, rb := a.do(alice), a.do(bob)
		assert.False(t, rb.replayed())
		assert.NotEqual(t, ra.body, rb.body)
		assert.Equal(t, ra.body, a.do(alice).body)
		assert.Equal(t, rb.body, a.do(bob).body)
		assert.Equal(t, int32(2), a.calls.Load())
	}},
	{"spec6/a scope function", func(t *testing.T, h storeHarness) {
		a := newApp(t, h, idem.WithScope(func(c *gin.Context) string { return c.GetHeader("X-Tenant") }))
		one := post("/things", key1, "x")
		one.header = http.Header{"X-Tenant": {"t1"}}
		one.auth = "Bearer a"
		sameTenant := one
		sameTenant.auth = "Bearer b"
		other := post("/things", key1, "x")
		other.header = http.Header{"X-Tenant": {"t2"}}
		a.do(one)
		assert.True(t, a.do(sameTenant).replayed(), "scope is the tenant, not the Authorization header")
		assert.False(t, a.do(other).replayed())
		assert.Equal(t, int32(2), a.calls.Load())
	}},
	{"spec7/a key reused on another route or method is refused", func(t *testing.T, h storeHarness) {
		a := newApp(t, h)
		a.do(post("/things", key1, "x"))
		route := a.do(post("/other", key1, "x"))
		assert.Equal(t, http.StatusConflict, route.status)
		p := route.problem(t)
		assert.Equal(t, idem.ProblemKeyMismatch, p.Type)
		assert.Contains(t, p.Detail, "another method or resource path")
		method := a.do(req{method: "PATCH", path: "/things", key: key1, body: "x"})
		assert.Equal(t, http.StatusConflict, method.status)
		assert.Equal(t, int32(1), a.calls.Load())
	}},
	{"spec8/query string and body are fingerprinted by default", func(t *testing.T, h storeHarness) {
		a := newApp(t, h)
		a.do(post("/things?x=1", key1, "body"))
		assert.Equal(t, http.StatusConflict, a.do(post("/things?x=2", key1, "body")).status)
		assert.Equal(t, http.StatusConflict, a.do(post("/things?x=1", key1, "body!")).status)
		assert.True(t, a.do(post("/things?x=1", key1, "body")).replayed())
		assert.Equal(t, int32(1), a.calls.Load())
	}},
	{"spec8/canonical JSON ignores key order and whitespace", func(t *testing.T, h storeHarness) {
		a := newApp(t, h, idem.WithFingerprint(idem.CanonicalJSON()))
		first := a.do(post("/things", key1, `{"a":1,"b":[1,2,{"c":"d"}]}`))
		same := a.do(post("/things", key1, "{ \"b\" : [1, 2, {\"c\": \"d\"}],\n \"a\": 1 }"))
		assert.True(t, same.replayed())
		assert.Equal(t, first.body, same.body, "the replay is the first response, not the second payload")
		assert.Equal(t, http.StatusConflict, a.do(post("/things", key1, `{"a":2,"b":[1,2,{"c":"d"}]}`)).status)
		invalid := a.do(post("/things", key2, `{"a":`))
		assert.Equal(t, http.StatusBadRequest, invalid.status)
		assert.Equal(t, idem.ProblemInvalidBody, invalid.problem(t).Type)
		assert.Equal(t, int32(1), a.calls.Load())
	}},
	{"spec8/canonical JSON can fall back to the raw body", func(t *testing.T, h storeHarness) {
		a := newApp(t, h, idem.WithFingerprint(idem.CanonicalJSONOrRaw()))
		a.do(post("/things", key1, `not json`))
		assert.True(t, a.do(post("/things", key1, `not json`)).replayed())
		assert.Equal(t, http.StatusConflict, a.do(post("/things", key1, `not json!`)).status)
		assert.Equal(t, int32(1), a.calls.Load())
	}},
	{"spec8/selected JSON fields", func(t *testing.T, h storeHarness) {
		a := newApp(t, h, idem.WithFingerprint(idem.JSONFields("amount", "to.iban")))
		a.do(post("/things", key1, `{"amount":10,"to":{"iban":"X1"},"note":"a"}`))
		assert.True(t, a.do(post("/things", key1, `{"note":"b","to":{"iban":"X1","name":"n"},"amount":10}`)).replayed())
		assert.Equal(t, http.StatusConflict, a.do(post("/things", key1, `{"amount":11,"to":{"iban":"X1"}}`)).status)
		assert.Equal(t, http.StatusConflict, a.do(post("/things", key1, `{"amount":10}`)).status, "an absent field differs")
		assert.Equal(t, http.StatusBadRequest, a.do(post("/things", key2, `[`)).status)
		assert.Equal(t, int32(1), a.calls.Load())
	}},
	{"spec8/chosen headers and a custom part compose", func(t *testing.T, h storeHarness) {
		custom := func(w io.Writer, r *http.Request, _ []byte) error {
			_, err := io.WriteString(w, r.URL.Query().Get("v"))
			return err
		}
		a := newApp(t, h, idem.WithFingerprint(idem.Headers("X-Account"), idem.FingerprintPart(custom)))
		r := req{method: "POST", path: "/things?v=1&noise=1", key: key1, body: "a", header: http.Header{"X-Account": {"acc-1"}}}
		a.do(r)
		r.body, r.path = "body is not in this policy", "/things?v=1&noise=2"
		assert.True(t, a.do(r).replayed())
		r.header = http.Header{"X-Account": {"acc-2"}}
		assert.Equal(t, http.StatusConflict, a.do(r).status)
		r.header, r.path = http.Header{"X-Account": {"acc-1"}}, "/things?v=2"
		assert.Equal(t, http.StatusConflict, a.do(r).status)
		assert.Equal(t, int32(1), a.calls.Load())
	}},
	{"spec8/the handler reads the full original body", func(t *testing.T, h storeHarness) {
		a := newApp(t, h, idem.WithFingerprint(idem.CanonicalJSON()))
		body := "{\"b\": 2,\n  \"a\": \"\\u00e9\"}"
		var got struct{ Echo string }
		require.NoError(t, json.Unmarshal([]byte(a.do(post("/things", key1, body)).body), &got))
		assert.Equal(t, body, got.Echo)
	}},
	{"spec9/a body over the cap gets 413 and the handler does not run", func(t *testing.T, h storeHarness) {
		a := newApp(t, h, idem.WithMaxBodyBytes(16))
		assert.Equal(t, http.StatusCreated, a.do(post("/things", key1, strings.Repeat("a", 16))).status)
		big := a.do(post("/things", key2, strings.Repeat("a", 17)))
		assert.Equal(t, http.StatusRequestEntityTooLarge, big.status)
		assert.Equal(t, idem.ProblemBodyTooLarge, big.problem(t).Type)
		assert.Equal(t, http.StatusCreated, a.do(post("/things", "", strings.Repeat("a", 100))).status, "no key, no cap")
		assert.Equal(t, int32(2), a.calls.Load())
	}},
	{"spec9/a chunked body over the cap gets 413", func(t *testing.T, h storeHarness) {
		a := newApp(t, h, idem.WithMaxBodyBytes(1024))
		hr, err := http.NewRequest("POST", a.srv.URL+"/things", io.MultiReader(strings.NewReader(strings.Repeat("a", 1000)), strings.NewReader(strings.Repeat("b", 1000))))
		require.NoError(t, err)
		hr.ContentLength = -1
		hr.Header.Set("Idempotency-Key", key1)
		hr.Header.Set("Authorization", defaultAuth)
		res, err := a.srv.Client().Do(hr)
		require.NoError(t, err)
		res.Body.Close()
		assert.Equal(t, http.StatusRequestEntityTooLarge, res.StatusCode)
		assert.Zero(t, a.calls.Load())
	}},

	// The first request (10-15).
	{"spec10/100 concurrent requests with one key run the handler once", func(t *testing.T, h storeHarness) {
		a := newApp(t, h)
		var wg sync.WaitGroup
		results := make(chan resp, 100)
		for range 100 {
			wg.Go(func() { results <- a.do(post("/things", key1, "x")) })
		}
		wg.Wait()
		close(results)
		var first string
		for r := range results {
			switch {
			case r.status == http.StatusCreated && !r.replayed():
				first = r.body
			case r.status == http.StatusCreated:
			case r.status == http.StatusConflict:
				assert.Equal(t, idem.ProblemInFlight, r.problem(t).Type)
				assert.Equal(t, "1", r.header.Get("Retry-After"))
			default:
				t.Errorf("unexpected answer %d %s", r.status, r.body)
			}
		}
		assert.Equal(t, int32(1), a.calls.Load())
		assert.NotEmpty(t, first)
	}},
	{"spec10/a fast handler costs one acquire and one complete", func(t *testing.T, h storeHarness) {
		var cs *countingStore
		a := newApp(t, counted(h, &cs))
		a.do(post("/things", key1, "x"))
		acq, comp, rel, ext := cs.counts()
		assert.Equal(t, []int{1, 1, 0, 0}, []int{acq, comp, rel, ext})
		a.do(post("/things", key1, "x"))
		acq, comp, _, _ = cs.counts()
		assert.Equal(t, []int{2, 1}, []int{acq, comp}, "a replay is one acquire")
	}},
	{"spec10/a handler slower than its lease keeps the key", func(t *testing.T, h storeHarness) {
		var cs *countingStore
		const lease = 1200 * time.Millisecond
		a := newApp(t, counted(h, &cs), idem.WithLease(lease))
		extended := make(chan struct{}, 100)
		cs.onExtend = func() {
			select {
			case extended <- struct{}{}:
			default:
			}
		}
		first := a.async(post("/slow", key1, "x"))
		a.waitEntered(1)
		// Five renewals, each followed by a quarter of a lease on the store's
		// clock: past the first lease, so only the renewals hold the key. (On
		// Redis real time passes too; the quarter leaves a margin of a quarter
		// lease before a late renewal.)
		for range 5 {
			select {
			case <-extended:
			case <-time.After(10 * time.Second):
				t.Fatal("the lease was not renewed")
			}
			a.advance(lease / 4)
		}
		dup := a.doBounded(post("/slow", key1, "x"))
		assert.Equal(t, http.StatusConflict, dup.status)
		assert.Equal(t, idem.ProblemInFlight, dup.problem(t).Type)
		a.open()
		assert.Equal(t, http.StatusCreated, recv(t, first).status)
		assert.True(t, a.do(post("/slow", key1, "x")).replayed())
		assert.Equal(t, int32(1), a.calls.Load())
	}},
	{"spec10/a crashed owner's key is free one lease later", func(t *testing.T, h storeHarness) {
		ev := newEvents()
		a := newApp(t, h, idem.WithEventHook(ev.hook))
		// The "crashed" owner: it stops renewing because its lease is far longer
		// than the time we move the store's clock forward.
		first := a.async(post("/slow", key1, "x"))
		a.waitEntered(1)
		assert.Equal(t, http.StatusConflict, a.doBounded(post("/slow", key1, "x")).status, "before the lease ends")
		a.advance(time.Minute + time.Second)
		second := a.async(post("/slow", key1, "x"))
		a.waitEntered(1)
		a.gate <- struct{}{} // one of the two finishes
		a.gate <- struct{}{}
		r1, r2 := recv(t, first), recv(t, second)
		assert.Equal(t, http.StatusCreated, r1.status, "its own answer, unrecorded: %s", r1.body) // its handler used no transaction
		assert.Equal(t, http.StatusCreated, r2.status)
		assert.Equal(t, int32(2), a.calls.Load())
		// spec23: the old owner could not overwrite the newer record.
		replay := a.do(post("/slow", key1, "x"))
		assert.True(t, replay.replayed())
		assert.Equal(t, r2.body, replay.body)
		assert.Contains(t, ev.kinds(), idem.EventLostLease)
	}},
	{"spec11/replayable headers only, snapshotted when written", func(t *testing.T, h storeHarness) {
		a := newApp(t, h)
		first := a.do(post("/things", key1, "x"))
		assert.NotEmpty(t, first.header.Get("Set-Cookie"))
		replay := a.do(post("/things", key1, "x"))
		assert.Equal(t, first.status, replay.status)
		assert.Equal(t, first.header.Get("Location"), replay.header.Get("Location"))
		assert.Equal(t, first.header.Get("Content-Type"), replay.header.Get("Content-Type"))
		assert.Empty(t, replay.header.Get("Set-Cookie"))
		assert.Empty(t, replay.header.Get("X-Not-Replayed"))
		more := newApp(t, h, idem.WithReplayHeaders("X-Not-Replayed", "Set-Cookie"))
		more.do(post("/things", key1, "x"))
		replay = more.do(post("/things", key1, "x"))
		assert.Equal(t, "yes", replay.header.Get("X-Not-Replayed"))
		assert.Contains(t, replay.header.Get("Set-Cookie"), "session=secret")
	}},
	{"spec12/5xx, 408, 425 and 429 release the key", func(t *testing.T, h storeHarness) {
		a := newApp(t, h)
		for i, code := range []int{500, 503, 408, 425, 429} {
			key := fmt.Sprintf("9b2f4b1e-0c1d-4f6a-8e2b-3c4d5e6f7a%02d", i)
			assert.Equal(t, code, a.do(post(fmt.Sprintf("/status/%d", code), key, "x")).status)
			again := a.do(post(fmt.Sprintf("/status/%d", code), key, "x"))
			assert.False(t, again.replayed(), "%d", code)
		}
		assert.Equal(t, int32(10), a.calls.Load())
	}},
	{"spec12/4xx and 2xx are kept", func(t *testing.T, h storeHarness) {
		a := newApp(t, h)
		for i, code := range []int{200, 202, 400, 404, 409, 422} {
			key := fmt.Sprintf("9b2f4b1e-0c1d-4f6a-8e2b-3c4d5e6f7a%02d", i)
			a.do(post(fmt.Sprintf("/status/%d", code), key, "x"))
			again := a.do(post(fmt.Sprintf("/status/%d", code), key, "x"))
			assert.True(t, again.replayed(), "%d", code)
			assert.Equal(t, code, again.status)
		}
		assert.Equal(t, int32(6), a.calls.Load())
	}},
	{"spec12/a keep function decides", func(t *testing.T, h storeHarness) {
		a := newApp(t, h, idem.WithKeep(func(int) bool { return true }))
		a.do(post("/status/500", key1, "x"))
		again := a.do(post("/status/500", key1, "x"))
		assert.True(t, again.replayed())
		assert.Equal(t, 500, again.status)
		assert.Equal(t, int32(1), a.calls.Load())
	}},
	{"spec12/a panic releases the key and reaches recovery", func(t *testing.T, h storeHarness) {
		ev := newEvents()
		a := newApp(t, h, idem.WithEventHook(ev.hook))
		assert.Equal(t, http.StatusInternalServerError, a.do(post("/panic", key1, "x")).status)
		assert.Equal(t, http.StatusInternalServerError, a.do(post("/panic", key1, "x")).status)
		assert.Equal(t, int32(2), a.calls.Load(), "the retry ran the handler again")
		assert.Equal(t, []idem.EventKind{idem.EventAcquired, idem.EventReleased, idem.EventAcquired, idem.EventReleased}, ev.kinds())
	}},
	{"spec12/a handler that wrote nothing releases the key", func(t *testing.T, h storeHarness) {
		a := newApp(t, h)
		assert.Equal(t, http.StatusOK, a.do(post("/nothing", key1, "x")).status)
		a.do(post("/nothing", key1, "x"))
		assert.Equal(t, int32(2), a.calls.Load())
	}},
	{"spec12/a status without a body is kept", func(t *testing.T, h storeHarness) {
		a := newApp(t, h)
		first := a.do(post("/nocontent", key1, "x"))
		assert.Equal(t, http.StatusNoContent, first.status)
		again := a.do(post("/nocontent", key1, "x"))
		assert.True(t, again.replayed())
		assert.Equal(t, http.StatusNoContent, again.status)
		assert.Equal(t, "/things/done", again.header.Get("Location"))
		assert.Equal(t, int32(1), a.calls.Load())
	}},
	{"spec13/a client that goes away still gets its result stored", func(t *testing.T, h storeHarness) {
		ev := newEvents()
		a := newApp(t, h, idem.WithEventHook(ev.hook))
		ctx, cancel := context.WithCancel(context.Background())
		gone := make(chan error, 1)
		go func() {
			hr, _ := http.NewRequestWithContext(ctx, "POST", a.srv.URL+"/slow", strings.NewReader("x"))
			hr.Header.Set("Idempotency-Key", key1)
			hr.Header.Set("Authorization", defaultAuth)
			_, err := a.srv.Client().Do(hr)
			gone <- err
		}()
		a.waitEntered(1)
		cancel()
		require.Error(t, <-gone)
		a.open()
		ev.waitFor(t, idem.EventCompleted)
		replay := a.do(post("/slow", key1, "x"))
		assert.True(t, replay.replayed())
		assert.Equal(t, http.StatusCreated, replay.status)
		assert.Equal(t, int32(1), a.calls.Load())
	}},
	{"spec14/a streamed response passes through and is not replayed", func(t *testing.T, h storeHarness) {
		a := newApp(t, h)
		first := a.do(post("/stream", key1, "x"))
		assert.Equal(t, "data: 0\n\ndata: 1\n\ndata: 2\n\n", first.body)
		dup := a.do(post("/stream", key1, "x"))
		if h.tx { // SPEC 31: a transactional response is held whole until the commit, so it is kept and replayed
			assert.True(t, dup.replayed())
			assert.Equal(t, first.body, dup.body)
			assert.Equal(t, int32(1), a.calls.Load())
			return
		}
		assert.Equal(t, http.StatusConflict, dup.status)
		assert.Equal(t, idem.ProblemAlreadyCompleted, dup.problem(t).Type)
		assert.Equal(t, "/streams/1", dup.header.Get("Location"))
		assert.Equal(t, int32(1), a.calls.Load())
	}},
	{"spec15/a response over the cap passes through and is not replayed", func(t *testing.T, h storeHarness) {
		a := newApp(t, h, idem.WithMaxResponseBytes(1024))
		first := a.do(post("/big", key1, "x"))
		assert.Len(t, first.body, 4096)
		dup := a.do(post("/big", key1, "x"))
		assert.Equal(t, http.StatusConflict, dup.status)
		assert.Equal(t, idem.ProblemAlreadyCompleted, dup.problem(t).Type)
		assert.Equal(t, "/big/1", dup.header.Get("Location"))
		assert.Equal(t, int32(1), a.calls.Load())
	}},

	// Duplicates (16-20).
	{"spec16/another payload is refused with 409", func(t *testing.T, h storeHarness) {
		a := newApp(t, h)
		a.do(post("/things", key1, "one"))
		r := a.do(post("/things", key1, "two"))
		assert.Equal(t, http.StatusConflict, r.status)
		p := r.problem(t)
		assert.Equal(t, idem.ProblemKeyMismatch, p.Type)
		assert.Contains(t, p.Detail, "different request payload")
		assert.Empty(t, r.header.Get("Retry-After"), "a mismatch is not worth retrying")
		assert.Equal(t, int32(1), a.calls.Load())
	}},
	{"spec16/422 as an option", func(t *testing.T, h storeHarness) {
		a := newApp(t, h, idem.WithMismatchStatus(http.StatusUnprocessableEntity))
		a.do(post("/things", key1, "one"))
		r := a.do(post("/things", key1, "two"))
		assert.Equal(t, http.StatusUnprocessableEntity, r.status)
		assert.Equal(t, idem.ProblemKeyMismatch, r.problem(t).Type)
	}},
	{"spec16/a mismatch while in flight is a mismatch", func(t *testing.T, h storeHarness) {
		a := newApp(t, h)
		first := a.async(post("/slow", key1, "one"))
		a.waitEntered(1)
		r := a.doBounded(post("/slow", key1, "two"))
		assert.Equal(t, http.StatusConflict, r.status)
		assert.Equal(t, idem.ProblemKeyMismatch, r.problem(t).Type)
		a.open()
		recv(t, first)
	}},
	{"spec17/a replay is byte-identical and marked", func(t *testing.T, h storeHarness) {
		a := newApp(t, h)
		first := a.do(post("/things", key1, "x"))
		replay := a.do(post("/things", key1, "x"))
		assert.False(t, first.replayed())
		assert.True(t, replay.replayed())
		assert.Equal(t, first.status, replay.status)
		assert.Equal(t, first.body, replay.body)
		assert.Equal(t, int32(1), a.calls.Load())
	}},
	{"spec17/the replay header name is configurable", func(t *testing.T, h storeHarness) {
		a := newApp(t, h, idem.WithReplayedHeader("x-served-from-cache"))
		a.do(post("/things", key1, "x"))
		r := a.do(post("/things", key1, "x"))
		assert.Equal(t, "true", r.header.Get("X-Served-From-Cache"))
		assert.Empty(t, r.header.Get("Idempotent-Replayed"))
	}},
	{"spec17/conflict mode answers 409 with the stored Location", func(t *testing.T, h storeHarness) {
		a := newApp(t, h, idem.WithConflictOnReplay())
		first := a.do(post("/things", key1, "x"))
		r := a.do(post("/things", key1, "x"))
		assert.Equal(t, http.StatusConflict, r.status)
		assert.Equal(t, idem.ProblemAlreadyCompleted, r.problem(t).Type)
		assert.Equal(t, first.header.Get("Location"), r.header.Get("Location"))
		assert.Equal(t, int32(1), a.calls.Load())
	}},
	{"spec18/a duplicate in flight gets 409 with Retry-After", func(t *testing.T, h storeHarness) {
		a := newApp(t, h)
		first := a.async(post("/slow", key1, "x"))
		a.waitEntered(1)
		r := a.doBounded(post("/slow", key1, "x"))
		assert.Equal(t, http.StatusConflict, r.status)
		assert.Equal(t, "1", r.header.Get("Retry-After"))
		assert.Equal(t, idem.ProblemInFlight, r.problem(t).Type)
		a.open()
		assert.Equal(t, http.StatusCreated, recv(t, first).status)
		assert.Equal(t, int32(1), a.calls.Load())
	}},
	{"spec18/the wait option replays when the first finishes", func(t *testing.T, h storeHarness) {
		var cs *countingStore
		a := newApp(t, counted(h, &cs), idem.WithWaitInFlight(10*time.Second))
		waiting := make(chan struct{}, 100)
		cs.onAcquire = func(held *idem.Record) {
			if held != nil && held.State == idem.InFlight {
				waiting <- struct{}{}
			}
		}
		first := a.async(post("/slow", key1, "x"))
		a.waitEntered(1)
		dup := a.async(post("/slow", key1, "x"))
		<-waiting // the duplicate saw the key in flight and waits
		a.open()
		r1, r2 := recv(t, first), recv(t, dup)
		assert.True(t, r2.replayed())
		assert.Equal(t, r1.body, r2.body)
		assert.Equal(t, int32(1), a.calls.Load())
	}},
	{"spec18/the wait is bounded", func(t *testing.T, h storeHarness) {
		a := newApp(t, h, idem.WithWaitInFlight(50*time.Millisecond))
		first := a.async(post("/slow", key1, "x"))
		a.waitEntered(1)
		r := a.doBounded(post("/slow", key1, "x"))
		assert.Equal(t, http.StatusConflict, r.status)
		assert.Equal(t, idem.ProblemInFlight, r.problem(t).Type)
		a.open()
		recv(t, first)
	}},
	{"spec19/records expire after the TTL", func(t *testing.T, h storeHarness) {
		a := newApp(t, h, idem.WithTTL(time.Hour))
		a.do(post("/things", key1, "x"))
		a.advance(59 * time.Minute)
		assert.True(t, a.do(post("/things", key1, "x")).replayed())
		a.advance(2 * time.Minute)
		assert.False(t, a.do(post("/things", key1, "x")).replayed())
		assert.Equal(t, int32(2), a.calls.Load())
	}},
	{"spec19/the default TTL is 24 hours", func(t *testing.T, h storeHarness) {
		a := newApp(t, h)
		a.do(post("/things", key1, "x"))
		a.advance(24*time.Hour - time.Minute)
		assert.True(t, a.do(post("/things", key1, "x")).replayed())
		a.advance(2 * time.Minute)
		assert.False(t, a.do(post("/things", key1, "x")).replayed())
	}},
	{"spec20/authorization runs first", func(t *testing.T, h storeHarness) {
		var cs *countingStore
		store, _ := counted(h, &cs).new(t)
		r := gin.New()
		auth := func(c *gin.Context) {
			if c.GetHeader("Authorization") != "Bearer admin" {
				c.AbortWithStatus(http.StatusForbidden)
			}
		}
		var calls int
		r.POST("/things", auth, idem.New(idem.WithStore(store)), func(c *gin.Context) {
			calls++
			c.String(http.StatusCreated, "made")
		})
		srv := httptest.NewServer(r)
		defer srv.Close()
		send := func(user string) int {
			hr, _ := http.NewRequest("POST", srv.URL+"/things", strings.NewReader("x"))
			hr.Header.Set("Idempotency-Key", key1)
			hr.Header.Set("Authorization", "Bearer "+user)
			res, err := srv.Client().Do(hr)
			require.NoError(t, err)
			res.Body.Close()
			return res.StatusCode
		}
		assert.Equal(t, http.StatusForbidden, send("eve"), "key unused")
		acq, _, _, _ := cs.counts()
		assert.Zero(t, acq, "nothing is stored for a forbidden request")
		assert.Equal(t, http.StatusCreated, send("admin"))
		assert.Equal(t, http.StatusForbidden, send("eve"), "key used")
		assert.Equal(t, 1, calls)
	}},

	// Errors and failures (21-27).
	{"spec21/problems are RFC 9457 and echo nothing", func(t *testing.T, h storeHarness) {
		a := newApp(t, h, idem.WithKeyValidator(idem.KeyPrintable(64)))
		r := a.do(req{method: "POST", path: "/things", header: http.Header{"Idempotency-Key": {`"<script>alert(1)</script>`}}})
		assert.Equal(t, http.StatusBadRequest, r.status)
		p := r.problem(t)
		assert.True(t, strings.HasPrefix(p.Type, "https://"))
		assert.NotContains(t, r.body, "<script>")
		assert.NotContains(t, r.body, "alert")
	}},
	{"spec21/the problem writer is replaceable", func(t *testing.T, h storeHarness) {
		a := newApp(t, h, idem.WithProblemWriter(func(c *gin.Context, p idem.Problem) {
			c.String(p.Status, "custom:"+p.Type)
		}))
		r := a.do(post("/things", "bad", "x"))
		assert.Equal(t, http.StatusBadRequest, r.status)
		assert.Equal(t, "custom:"+idem.ProblemInvalidKey, r.body)
	}},
	{"spec22/a failing store fails closed with 503", func(t *testing.T, h storeHarness) {
		var cs *countingStore
		a := newApp(t, counted(h, &cs))
		cs.fail.Store(true)
		r := a.do(post("/things", key1, "x"))
		assert.Equal(t, http.StatusServiceUnavailable, r.status)
		assert.Equal(t, "1", r.header.Get("Retry-After"))
		assert.Equal(t, idem.ProblemStoreUnavailable, r.problem(t).Type)
		assert.Zero(t, a.calls.Load())
		cs.fail.Store(false)
		assert.Equal(t, http.StatusCreated, a.do(post("/things", key1, "x")).status, "works again when the store is back")
		assert.True(t, a.do(post("/things", key1, "x")).replayed())
	}},
	{"spec22/fail open runs the handler and logs", func(t *testing.T, h storeHarness) {
		var cs *countingStore
		var logs bytes.Buffer
		logger := slog.New(slog.NewTextHandler(&logs, nil))
		a := newApp(t, counted(h, &cs), idem.WithFailOpen(), idem.WithLogger(logger))
		cs.fail.Store(true)
		r := a.do(post("/things", key1, "x"))
		assert.Equal(t, http.StatusCreated, r.status)
		assert.Equal(t, int32(1), a.calls.Load())
		assert.Contains(t, logs.String(), "running without idempotency")
		assert.Contains(t, logs.String(), "idempotency_key="+key1, "the client's key, to find a ticket's request (SPEC 33)")
		assert.NotContains(t, logs.String(), defaultAuth, "never the caller's identity")
	}},
	{"spec22/a slow store meets the deadline", func(t *testing.T, h storeHarness) {
		store, _ := h.new(t)
		slow := &slowStore{Store: store}
		a := newApp(t, storeHarness{new: func(*testing.T) (idem.Store, func(time.Duration)) { return slow, nil }},
			idem.WithStoreTimeout(50*time.Millisecond))
		slow.hang.Store(true)
		r := a.do(post("/things", key1, "x"))
		assert.Equal(t, http.StatusServiceUnavailable, r.status)
		slow.hang.Store(false)
		assert.Equal(t, http.StatusCreated, a.do(post("/things", key1, "x")).status)
	}},
	{"spec25/an invalid record from the store is a store failure", func(t *testing.T, h storeHarness) {
		store, _ := h.new(t)
		bogus := &bogusStore{Store: store}
		a := newApp(t, storeHarness{new: func(*testing.T) (idem.Store, func(time.Duration)) { return bogus, nil }})
		for _, rec := range []*idem.Record{{State: 9}, {State: idem.Completed, Status: 0}, {State: idem.Completed, Status: 1000}} {
			bogus.held = rec
			r := a.do(post("/things", key1, "x"))
			assert.Equal(t, http.StatusServiceUnavailable, r.status)
		}
		assert.Zero(t, a.calls.Load())
	}},
	{"spec26/events carry each outcome and only hashes", func(t *testing.T, h storeHarness) {
		ev := newEvents()
		a := newApp(t, h, idem.WithEventHook(ev.hook))
		auth := "Bearer alice-secret"
		send := func(path, key, body string) resp {
			r := post(path, key, body)
			r.auth = auth
			return a.do(r)
		}
		send("/things", key1, "x")
		send("/things", key1, "x")
		send("/things", key1, "y")
		send("/status/500", key2, "x")
		inflight := a.async(req{method: "POST", path: "/slow", key: "2a8c6e2a-7b3f-4c5d-9e1f-2a3b4c5d6e7f", body: "x", auth: auth})
		a.waitEntered(1)
		send("/slow", "2a8c6e2a-7b3f-4c5d-9e1f-2a3b4c5d6e7f", "x")
		a.open()
		recv(t, inflight)
		ev.waitFor(t, idem.EventCompleted)
		kinds := ev.kinds()
		for _, k := range []idem.EventKind{idem.EventAcquired, idem.EventCompleted, idem.EventReplayed,
			idem.EventMismatch, idem.EventReleased, idem.EventConflict} {
			assert.Contains(t, kinds, k)
		}
		scope := sha256.Sum256([]byte(auth))
		for _, e := range ev.all() {
			assert.Equal(t, hex.EncodeToString(scope[:]), e.ScopeHash)
			assert.NotContains(t, e.Key, key1)
			assert.Len(t, e.Key, 64)
			assert.Equal(t, "POST", e.Method)
		}
	}},
	{"spec26/store errors and lost leases are events", func(t *testing.T, h storeHarness) {
		ev := newEvents()
		var cs *countingStore
		a := newApp(t, counted(h, &cs), idem.WithEventHook(ev.hook))
		cs.fail.Store(true)
		a.do(post("/things", key1, "x"))
		e := ev.waitFor(t, idem.EventStoreError)
		assert.ErrorIs(t, e.Err, errStoreDown)
	}},
	{"spec27/no bad input panics the server or corrupts another record", func(t *testing.T, h storeHarness) {
		a := newApp(t, h, idem.WithFingerprint(idem.CanonicalJSON()))
		good := a.do(post("/things", key1, `{"a":1}`))
		deep := strings.Repeat("[", 100000) + strings.Repeat("]", 100000)
		for _, r := range []req{
			post("/things", key2, deep),
			post("/things", key2, "\x00\xff"),
			{method: "POST", path: "/things", header: http.Header{"Idempotency-Key": {strings.Repeat(`\`, 5000)}}},
			{method: "POST", path: "/things", header: http.Header{"Idempotency-Key": {"\"" + strings.Repeat(`\"`, 400) + "\""}}},
			post("/things", key1, `{"a":2}`),
		} {
			got := a.do(r)
			assert.Less(t, got.status, 500, "%.40q", r.body)
			assert.GreaterOrEqual(t, got.status, 400)
			got.problem(t)
		}
		again := a.do(post("/things", key1, `{"a":1}`))
		assert.True(t, again.replayed())
		assert.Equal(t, good.body, again.body)
		assert.Equal(t, int32(1), a.calls.Load())
	}},
}

// slowStore hangs every call until its context ends while hang is set.
type slowStore struct {
	idem.Store
	hang atomic.Bool
}

func (s *slowStore) Acquire(ctx context.Context, key string, claim *idem.Record, lease time.Duration) (string, *idem.Record, error) {
	if s.hang.Load() {
		<-ctx.Done()
		return "", nil, ctx.Err()
	}
	return s.Store.Acquire(ctx, key, claim, lease)
}

// bogusStore returns held for every Acquire.
type bogusStore struct {
	idem.Store
	held *idem.Record
}

func (s *bogusStore) Acquire(context.Context, string, *idem.Record, time.Duration) (string, *idem.Record, error) {
	return "", s.held, nil
}

// TestSpec2_OptionsPerGroupAndRoute: each group or route has its own
// middleware and options: one requires keys and answers 422 on a mismatch,
// one keeps the defaults, one route takes any printable key.
func TestSpec2_OptionsPerGroupAndRoute(t *testing.T) {
	r := gin.New()
	handler := func(c *gin.Context) { c.String(http.StatusCreated, "ok") }
	strict := r.Group("/strict", idem.New(idem.RequireKey(), idem.WithMismatchStatus(http.StatusUnprocessableEntity)))
	strict.POST("/x", handler)
	relaxed := r.Group("/relaxed", idem.New())
	relaxed.POST("/x", handler)
	r.POST("/route", idem.New(idem.WithKeyValidator(idem.KeyPrintable(32))), handler)
	srv := httptest.NewServer(r)
	defer srv.Close()
	send := func(path, key, body string) int {
		hr, _ := http.NewRequest("POST", srv.URL+path, strings.NewReader(body))
		if key != "" {
			hr.Header.Set("Idempotency-Key", key)
		}
		hr.Header.Set("Authorization", defaultAuth)
		res, err := srv.Client().Do(hr)
		require.NoError(t, err)
		res.Body.Close()
		return res.StatusCode
	}
	assert.Equal(t, http.StatusBadRequest, send("/strict/x", "", "a"))
	assert.Equal(t, http.StatusCreated, send("/relaxed/x", "", "a"))
	assert.Equal(t, http.StatusCreated, send("/strict/x", key1, "a"))
	assert.Equal(t, http.StatusUnprocessableEntity, send("/strict/x", key1, "b"))
	assert.Equal(t, http.StatusCreated, send("/relaxed/x", key1, "a"), "another middleware, another store")
	assert.Equal(t, http.StatusConflict, send("/relaxed/x", key1, "b"))
	assert.Equal(t, http.StatusCreated, send("/route", "order-1", "a"))
	assert.Equal(t, http.StatusBadRequest, send("/relaxed/x", "order-1", "a"))
}

// TestSpec2_NestedMiddlewares: a global middleware and a group's own one on
// the same route. The inner one handles the key, keyed or not (SPEC 28): the
// outer one steps aside rather than hold the key the inner one would find
// in flight, and a request without a key meets the inner one's RequireKey.
func TestSpec2_NestedMiddlewares(t *testing.T) {
	store := idem.NewMemoryStore() // shared, as a Redis store would be
	r := gin.New()
	r.Use(idem.New(idem.WithStore(store)))
	calls := 0
	strict := r.Group("/strict", idem.New(idem.WithStore(store), idem.RequireKey()))
	strict.POST("/x", func(c *gin.Context) { calls++; c.String(http.StatusCreated, "ok") })
	srv := httptest.NewServer(r)
	defer srv.Close()
	send := func(key string) *http.Response {
		hr, _ := http.NewRequest("POST", srv.URL+"/strict/x", strings.NewReader("a"))
		if key != "" {
			hr.Header.Set("Idempotency-Key", key)
		}
		hr.Header.Set("Authorization", defaultAuth)
		res, err := srv.Client().Do(hr)
		require.NoError(t, err)
		res.Body.Close()
		return res
	}
	assert.Equal(t, http.StatusCreated, send(key1).StatusCode)
	replay := send(key1)
	assert.Equal(t, http.StatusCreated, replay.StatusCode)
	assert.Equal(t, "true", replay.Header.Get("Idempotent-Replayed"))
	assert.Equal(t, http.StatusBadRequest, send("").StatusCode)
	assert.Equal(t, 1, calls)
}

// TestNewPanicsOnBadOptions: configuration errors are caught once, at
// construction, with the package prefix.
func TestNewPanicsOnBadOptions(t *testing.T) {
	for name, opt := range map[string]func(){
		"ttl":      func() { idem.WithTTL(0) },
		"lease":    func() { idem.WithLease(-time.Second) },
		"mismatch": func() { idem.WithMismatchStatus(400) },
		"store":    func() { idem.WithStore(nil) },
		"headers":  func() { idem.WithKeyHeaders() },
		"scope":    func() { idem.WithScope(nil) },
	} {
		assert.PanicsWithValue(t, panicValue(opt), opt, name)
		assert.True(t, strings.HasPrefix(panicValue(opt), "idempotency: "), name)
	}
}

func panicValue(f func()) (v string) {
	defer func() { v = fmt.Sprint(recover()) }()
	f()
	return ""
}
