package suite

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

// Behaviour is the shared behaviour table (TestBehaviour): every case runs
// on the store of h, and every store runs them all, so the stores cannot
// drift.
func Behaviour(t *testing.T, h Harness) { runBehaviours(t, h, behaviours) }

var behaviours = []behaviour{
	// The key (1-5).
	{"spec1/the Idempotency-Key header is read", func(t *testing.T, h Harness) {
		a := NewApp(t, h)
		first := a.Do(Post("/things", Key1, `{"a":1}`))
		second := a.Do(Post("/things", Key1, `{"a":1}`))
		assert.Equal(t, http.StatusCreated, first.Status)
		assert.True(t, second.Replayed())
		assert.Equal(t, int32(1), a.Calls.Load())
	}},
	{"spec1/more header names are configurable", func(t *testing.T, h Harness) {
		a := NewApp(t, h, idem.WithKeyHeaders("Idempotency-Key", "X-Idempotency-Key"))
		alt := Req{Method: "POST", Path: "/things", Body: "x", Header: http.Header{"X-Idempotency-Key": {Key1}}}
		a.Do(alt)
		assert.True(t, a.Do(alt).Replayed())
		assert.True(t, a.Do(Post("/things", Key1, "x")).Replayed(), "both names name the same key")
		assert.Equal(t, int32(1), a.Calls.Load())
	}},
	{"spec1/two different values get 400", func(t *testing.T, h Harness) {
		a := NewApp(t, h, idem.WithKeyHeaders("Idempotency-Key", "X-Idempotency-Key"))
		twoLines := a.Do(Req{Method: "POST", Path: "/things", Header: http.Header{"Idempotency-Key": {Key1, Key2}}})
		assert.Equal(t, http.StatusBadRequest, twoLines.Status)
		assert.Equal(t, idem.ProblemInvalidKey, twoLines.Problem(t).Type)
		twoNames := a.Do(Req{Method: "POST", Path: "/things", Key: Key1, Header: http.Header{"X-Idempotency-Key": {Key2}}})
		assert.Equal(t, http.StatusBadRequest, twoNames.Status)
		same := a.Do(Req{Method: "POST", Path: "/things", Header: http.Header{"Idempotency-Key": {Key1, `"` + Key1 + `"`}}})
		assert.Equal(t, http.StatusCreated, same.Status, "the same key twice is one key")
		assert.Equal(t, int32(1), a.Calls.Load())
	}},
	{"spec2/no key runs normally without a store call", func(t *testing.T, h Harness) {
		var cs *CountingStore
		a := NewApp(t, Counted(h, &cs))
		for range 3 {
			r := a.Do(Post("/things", "", "x"))
			assert.Equal(t, http.StatusCreated, r.Status)
			assert.False(t, r.Replayed())
		}
		assert.Equal(t, int32(3), a.Calls.Load())
		acq, comp, rel, ext := cs.Counts()
		assert.Zero(t, acq+comp+rel+ext)
	}},
	{"spec2/a required key is missing: 400", func(t *testing.T, h Harness) {
		a := NewApp(t, h, idem.RequireKey())
		r := a.Do(Post("/things", "", "x"))
		assert.Equal(t, http.StatusBadRequest, r.Status)
		assert.Equal(t, idem.ProblemMissingKey, r.Problem(t).Type)
		assert.Zero(t, a.Calls.Load())
		assert.Equal(t, http.StatusCreated, a.Do(Post("/things", Key1, "x")).Status)
	}},
	{"spec3/bare and quoted forms name the same key", func(t *testing.T, h Harness) {
		a := NewApp(t, h)
		first := a.Do(Post("/things", Key1, "x"))
		quoted := a.Do(Post("/things", `"`+Key1+`"`, "x"))
		assert.True(t, quoted.Replayed())
		assert.Equal(t, first.Body, quoted.Body)
		assert.Equal(t, int32(1), a.Calls.Load())
	}},
	{"spec3/malformed values get 400", func(t *testing.T, h Harness) {
		a := NewApp(t, h, idem.WithKeyValidator(idem.KeyPrintable(255)))
		for _, bad := range []string{
			`"` + Key1, `"abc"def`, `"a\x"`, `""`, `"tab\there"`, " ", "a b", `ab"c`, `a\b`,
			"caf\xc3\xa9", `"caf` + "\xc3\xa9" + `"`, `"abc";param=1`, `"abc"` + `"`, strings.Repeat("k", 10<<10),
		} {
			r := a.Do(Req{Method: "POST", Path: "/things", Header: http.Header{"Idempotency-Key": {bad}}})
			assert.Equal(t, http.StatusBadRequest, r.Status, "%q", bad)
			assert.Equal(t, idem.ProblemInvalidKey, r.Problem(t).Type)
		}
		empty := a.Do(Req{Method: "POST", Path: "/things", Header: http.Header{"Idempotency-Key": {""}}})
		assert.Equal(t, http.StatusBadRequest, empty.Status, "an empty value")
		assert.Zero(t, a.Calls.Load())
	}},
	{"spec3/quoted escapes are decoded", func(t *testing.T, h Harness) {
		a := NewApp(t, h, idem.WithKeyValidator(idem.KeyPrintable(255)))
		a.Do(Post("/things", `"a\"b\\c d"`, "x"))
		same := a.Do(Req{Method: "POST", Path: "/things", Body: "x", Header: http.Header{"Idempotency-Key": {`"a\"b\\c d"`}}})
		assert.True(t, same.Replayed())
		assert.Equal(t, int32(1), a.Calls.Load())
	}},
	{"spec4/a canonical UUID by default, and the detail says so", func(t *testing.T, h Harness) {
		a := NewApp(t, h)
		for _, bad := range []string{
			"order-42",
			"{9b2f4b1e-0c1d-4f6a-8e2b-3c4d5e6f7a8b}", // braces form
			"9b2f4b1e0c1d4f6a8e2b3c4d5e6f7a8b",       // no dashes
		} {
			r := a.Do(Post("/things", bad, "x"))
			assert.Equal(t, http.StatusBadRequest, r.Status, bad)
			assert.Contains(t, r.Problem(t).Detail, "UUID (RFC 9562, any version")
		}
		assert.Zero(t, a.Calls.Load())
		// Every RFC 9562 version, v1 as v7: TestSpec4_DefaultAcceptsEveryUUIDVersion.
		assert.Equal(t, http.StatusCreated, a.Do(Post("/things", "6ba7b810-9dad-11d1-80b4-00c04fd430c8", "x")).Status, "v1")
	}},
	{"spec4/other validators", func(t *testing.T, h Harness) {
		anyUUID := NewApp(t, h, idem.WithKeyValidator(idem.KeyAnyUUID))
		assert.Equal(t, http.StatusCreated, anyUUID.Do(Post("/things", "6ba7b810-9dad-11d1-80b4-00c04fd430c8", "x")).Status)
		assert.Equal(t, http.StatusBadRequest, anyUUID.Do(Post("/things", "order-42", "x")).Status)

		printable := NewApp(t, h, idem.WithKeyValidator(idem.KeyPrintable(10)))
		assert.Equal(t, http.StatusCreated, printable.Do(Post("/things", "order-42", "x")).Status)
		long := printable.Do(Post("/things", "order-4242424242", "x"))
		assert.Equal(t, http.StatusBadRequest, long.Status)
		assert.Contains(t, long.Problem(t).Detail, "at most 10")

		custom := NewApp(t, h, idem.WithKeyValidator(func(k string) error {
			if !strings.HasPrefix(k, "ord_") {
				return fmt.Errorf("the key must start with ord_")
			}
			return nil
		}))
		assert.Equal(t, http.StatusCreated, custom.Do(Post("/things", "ord_1", "x")).Status)
		bad := custom.Do(Post("/things", "inv_1", "x"))
		assert.Equal(t, "the key must start with ord_", bad.Problem(t).Detail)
	}},
	{"spec4/a UUID in upper, lower and mixed case is one key", func(t *testing.T, h Harness) {
		a := NewApp(t, h)
		first := a.Do(Post("/things", strings.ToUpper(Key1), "x"))
		require.Equal(t, http.StatusCreated, first.Status)
		for _, k := range []string{Key1, strings.ToUpper(Key1[:18]) + Key1[18:], `"` + strings.ToUpper(Key1) + `"`} {
			r := a.Do(Post("/things", k, "x"))
			assert.True(t, r.Replayed(), k)
			assert.Equal(t, first.Body, r.Body)
		}
		same := a.Do(Req{Method: "POST", Path: "/things", Body: "x", Header: http.Header{"Idempotency-Key": {Key1, strings.ToUpper(Key1)}}})
		assert.True(t, same.Replayed(), "two lines with the same UUID in two cases are one key")
		assert.Equal(t, int32(1), a.Calls.Load())
	}},
	{"spec5/POST and PATCH by default; other methods ignore the key", func(t *testing.T, h Harness) {
		a := NewApp(t, h)
		a.Do(Req{Method: "PATCH", Path: "/things", Key: Key1, Body: "x"})
		assert.True(t, a.Do(Req{Method: "PATCH", Path: "/things", Key: Key1, Body: "x"}).Replayed())
		put := Req{Method: "PUT", Path: "/things", Key: Key2, Body: "x"}
		assert.False(t, a.Do(put).Replayed())
		assert.False(t, a.Do(put).Replayed())
		bad := a.Do(Req{Method: "PUT", Path: "/things", Key: "not-a-uuid", Body: "x"})
		assert.Equal(t, http.StatusCreated, bad.Status, "a key on an ignored method is not even validated")
		assert.Equal(t, int32(4), a.Calls.Load())
	}},
	{"spec5/methods are configurable", func(t *testing.T, h Harness) {
		a := NewApp(t, h, idem.WithMethods(http.MethodPut))
		put := Req{Method: "PUT", Path: "/things", Key: Key1, Body: "x"}
		a.Do(put)
		assert.True(t, a.Do(put).Replayed())
		a.Do(Post("/things", Key2, "x"))
		assert.False(t, a.Do(Post("/things", Key2, "x")).Replayed())
		assert.Equal(t, int32(3), a.Calls.Load())
	}},

	// Scope and fingerprint (6-9).
	{"spec6/the same key from another caller is another record", func(t *testing.T, h Harness) {
		a := NewApp(t, h)
		alice := Post("/things", Key1, "x")
		alice.Auth = "Bearer alice"
		bob := alice
		bob.Auth = "Bearer bob"
		ra, rb := a.Do(alice), a.Do(bob)
		assert.False(t, rb.Replayed())
		assert.NotEqual(t, ra.Body, rb.Body)
		assert.Equal(t, ra.Body, a.Do(alice).Body)
		assert.Equal(t, rb.Body, a.Do(bob).Body)
		assert.Equal(t, int32(2), a.Calls.Load())
	}},
	{"spec6/a scope function", func(t *testing.T, h Harness) {
		a := NewApp(t, h, idem.WithScope(func(c *gin.Context) string { return c.GetHeader("X-Tenant") }))
		one := Post("/things", Key1, "x")
		one.Header = http.Header{"X-Tenant": {"t1"}}
		one.Auth = "Bearer a"
		sameTenant := one
		sameTenant.Auth = "Bearer b"
		other := Post("/things", Key1, "x")
		other.Header = http.Header{"X-Tenant": {"t2"}}
		a.Do(one)
		assert.True(t, a.Do(sameTenant).Replayed(), "scope is the tenant, not the Authorization header")
		assert.False(t, a.Do(other).Replayed())
		assert.Equal(t, int32(2), a.Calls.Load())
	}},
	{"spec7/a key reused on another route or method is refused", func(t *testing.T, h Harness) {
		a := NewApp(t, h)
		a.Do(Post("/things", Key1, "x"))
		route := a.Do(Post("/other", Key1, "x"))
		assert.Equal(t, http.StatusConflict, route.Status)
		p := route.Problem(t)
		assert.Equal(t, idem.ProblemKeyMismatch, p.Type)
		assert.Contains(t, p.Detail, "another method or resource path")
		method := a.Do(Req{Method: "PATCH", Path: "/things", Key: Key1, Body: "x"})
		assert.Equal(t, http.StatusConflict, method.Status)
		assert.Equal(t, int32(1), a.Calls.Load())
	}},
	{"spec8/query string and body are fingerprinted by default", func(t *testing.T, h Harness) {
		a := NewApp(t, h)
		a.Do(Post("/things?x=1", Key1, "body"))
		assert.Equal(t, http.StatusConflict, a.Do(Post("/things?x=2", Key1, "body")).Status)
		assert.Equal(t, http.StatusConflict, a.Do(Post("/things?x=1", Key1, "body!")).Status)
		assert.True(t, a.Do(Post("/things?x=1", Key1, "body")).Replayed())
		assert.Equal(t, int32(1), a.Calls.Load())
	}},
	{"spec8/canonical JSON ignores key order and whitespace", func(t *testing.T, h Harness) {
		a := NewApp(t, h, idem.WithFingerprint(idem.CanonicalJSON()))
		first := a.Do(Post("/things", Key1, `{"a":1,"b":[1,2,{"c":"d"}]}`))
		same := a.Do(Post("/things", Key1, "{ \"b\" : [1, 2, {\"c\": \"d\"}],\n \"a\": 1 }"))
		assert.True(t, same.Replayed())
		assert.Equal(t, first.Body, same.Body, "the replay is the first response, not the second payload")
		assert.Equal(t, http.StatusConflict, a.Do(Post("/things", Key1, `{"a":2,"b":[1,2,{"c":"d"}]}`)).Status)
		invalid := a.Do(Post("/things", Key2, `{"a":`))
		assert.Equal(t, http.StatusBadRequest, invalid.Status)
		assert.Equal(t, idem.ProblemInvalidBody, invalid.Problem(t).Type)
		assert.Equal(t, int32(1), a.Calls.Load())
	}},
	{"spec8/canonical JSON can fall back to the raw body", func(t *testing.T, h Harness) {
		a := NewApp(t, h, idem.WithFingerprint(idem.CanonicalJSONOrRaw()))
		a.Do(Post("/things", Key1, `not json`))
		assert.True(t, a.Do(Post("/things", Key1, `not json`)).Replayed())
		assert.Equal(t, http.StatusConflict, a.Do(Post("/things", Key1, `not json!`)).Status)
		assert.Equal(t, int32(1), a.Calls.Load())
	}},
	{"spec8/selected JSON fields", func(t *testing.T, h Harness) {
		a := NewApp(t, h, idem.WithFingerprint(idem.JSONFields("amount", "to.iban")))
		a.Do(Post("/things", Key1, `{"amount":10,"to":{"iban":"X1"},"note":"a"}`))
		assert.True(t, a.Do(Post("/things", Key1, `{"note":"b","to":{"iban":"X1","name":"n"},"amount":10}`)).Replayed())
		assert.Equal(t, http.StatusConflict, a.Do(Post("/things", Key1, `{"amount":11,"to":{"iban":"X1"}}`)).Status)
		assert.Equal(t, http.StatusConflict, a.Do(Post("/things", Key1, `{"amount":10}`)).Status, "an absent field differs")
		assert.Equal(t, http.StatusBadRequest, a.Do(Post("/things", Key2, `[`)).Status)
		assert.Equal(t, int32(1), a.Calls.Load())
	}},
	{"spec8/chosen headers and a custom part compose", func(t *testing.T, h Harness) {
		custom := func(w io.Writer, r *http.Request, _ []byte) error {
			_, err := io.WriteString(w, r.URL.Query().Get("v"))
			return err
		}
		a := NewApp(t, h, idem.WithFingerprint(idem.Headers("X-Account"), idem.FingerprintPart(custom)))
		r := Req{Method: "POST", Path: "/things?v=1&noise=1", Key: Key1, Body: "a", Header: http.Header{"X-Account": {"acc-1"}}}
		a.Do(r)
		r.Body, r.Path = "body is not in this policy", "/things?v=1&noise=2"
		assert.True(t, a.Do(r).Replayed())
		r.Header = http.Header{"X-Account": {"acc-2"}}
		assert.Equal(t, http.StatusConflict, a.Do(r).Status)
		r.Header, r.Path = http.Header{"X-Account": {"acc-1"}}, "/things?v=2"
		assert.Equal(t, http.StatusConflict, a.Do(r).Status)
		assert.Equal(t, int32(1), a.Calls.Load())
	}},
	{"spec8/the handler reads the full original body", func(t *testing.T, h Harness) {
		a := NewApp(t, h, idem.WithFingerprint(idem.CanonicalJSON()))
		body := "{\"b\": 2,\n  \"a\": \"\\u00e9\"}"
		var got struct{ Echo string }
		require.NoError(t, json.Unmarshal([]byte(a.Do(Post("/things", Key1, body)).Body), &got))
		assert.Equal(t, body, got.Echo)
	}},
	{"spec9/a body over the cap gets 413 and the handler does not run", func(t *testing.T, h Harness) {
		a := NewApp(t, h, idem.WithMaxBodyBytes(16))
		assert.Equal(t, http.StatusCreated, a.Do(Post("/things", Key1, strings.Repeat("a", 16))).Status)
		big := a.Do(Post("/things", Key2, strings.Repeat("a", 17)))
		assert.Equal(t, http.StatusRequestEntityTooLarge, big.Status)
		assert.Equal(t, idem.ProblemBodyTooLarge, big.Problem(t).Type)
		assert.Equal(t, http.StatusCreated, a.Do(Post("/things", "", strings.Repeat("a", 100))).Status, "no key, no cap")
		assert.Equal(t, int32(2), a.Calls.Load())
	}},
	{"spec9/a chunked body over the cap gets 413", func(t *testing.T, h Harness) {
		a := NewApp(t, h, idem.WithMaxBodyBytes(1024))
		hr, err := http.NewRequest("POST", a.Srv.URL+"/things", io.MultiReader(strings.NewReader(strings.Repeat("a", 1000)), strings.NewReader(strings.Repeat("b", 1000))))
		require.NoError(t, err)
		hr.ContentLength = -1
		hr.Header.Set("Idempotency-Key", Key1)
		hr.Header.Set("Authorization", DefaultAuth)
		res, err := a.Srv.Client().Do(hr)
		require.NoError(t, err)
		res.Body.Close()
		assert.Equal(t, http.StatusRequestEntityTooLarge, res.StatusCode)
		assert.Zero(t, a.Calls.Load())
	}},

	// The first request (10-15).
	{"spec10/100 concurrent requests with one key run the handler once", func(t *testing.T, h Harness) {
		a := NewApp(t, h)
		var wg sync.WaitGroup
		results := make(chan Resp, 100)
		for range 100 {
			wg.Go(func() { results <- a.Do(Post("/things", Key1, "x")) })
		}
		wg.Wait()
		close(results)
		var first string
		for r := range results {
			switch {
			case r.Status == http.StatusCreated && !r.Replayed():
				first = r.Body
			case r.Status == http.StatusCreated:
			case r.Status == http.StatusConflict:
				assert.Equal(t, idem.ProblemInFlight, r.Problem(t).Type)
				assert.Equal(t, "1", r.Header.Get("Retry-After"))
			default:
				t.Errorf("unexpected answer %d %s", r.Status, r.Body)
			}
		}
		assert.Equal(t, int32(1), a.Calls.Load())
		assert.NotEmpty(t, first)
	}},
	{"spec10/a fast handler costs one acquire and one complete", func(t *testing.T, h Harness) {
		var cs *CountingStore
		a := NewApp(t, Counted(h, &cs))
		a.Do(Post("/things", Key1, "x"))
		acq, comp, rel, ext := cs.Counts()
		assert.Equal(t, []int{1, 1, 0, 0}, []int{acq, comp, rel, ext})
		a.Do(Post("/things", Key1, "x"))
		acq, comp, _, _ = cs.Counts()
		assert.Equal(t, []int{2, 1}, []int{acq, comp}, "a replay is one acquire")
	}},
	{"spec10/a handler slower than its lease keeps the key", func(t *testing.T, h Harness) {
		var cs *CountingStore
		const lease = 1200 * time.Millisecond
		a := NewApp(t, Counted(h, &cs), idem.WithLease(lease))
		extended := make(chan struct{}, 100)
		cs.OnExtend = func() {
			select {
			case extended <- struct{}{}:
			default:
			}
		}
		first := a.Async(Post("/slow", Key1, "x"))
		a.WaitEntered(1)
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
			a.Advance(lease / 4)
		}
		dup := a.DoBounded(Post("/slow", Key1, "x"))
		assert.Equal(t, http.StatusConflict, dup.Status)
		assert.Equal(t, idem.ProblemInFlight, dup.Problem(t).Type)
		a.Open()
		assert.Equal(t, http.StatusCreated, Recv(t, first).Status)
		assert.True(t, a.Do(Post("/slow", Key1, "x")).Replayed())
		assert.Equal(t, int32(1), a.Calls.Load())
	}},
	{"spec10/a crashed owner's key is free one lease later", func(t *testing.T, h Harness) {
		ev := NewEvents()
		a := NewApp(t, h, idem.WithEventHook(ev.Hook))
		// The "crashed" owner: it stops renewing because its lease is far longer
		// than the time we move the store's clock forward.
		first := a.Async(Post("/slow", Key1, "x"))
		a.WaitEntered(1)
		assert.Equal(t, http.StatusConflict, a.DoBounded(Post("/slow", Key1, "x")).Status, "before the lease ends")
		a.Advance(time.Minute + time.Second)
		second := a.Async(Post("/slow", Key1, "x"))
		a.WaitEntered(1)
		a.gate <- struct{}{} // one of the two finishes
		a.gate <- struct{}{}
		r1, r2 := Recv(t, first), Recv(t, second)
		assert.Equal(t, http.StatusCreated, r1.Status, "its own answer, unrecorded: %s", r1.Body) // its handler used no transaction
		assert.Equal(t, http.StatusCreated, r2.Status)
		assert.Equal(t, int32(2), a.Calls.Load())
		// spec23: the old owner could not overwrite the newer record.
		replay := a.Do(Post("/slow", Key1, "x"))
		assert.True(t, replay.Replayed())
		assert.Equal(t, r2.Body, replay.Body)
		assert.Contains(t, ev.Kinds(), idem.EventLostLease)
	}},
	{"spec11/replayable headers only, snapshotted when written", func(t *testing.T, h Harness) {
		a := NewApp(t, h)
		first := a.Do(Post("/things", Key1, "x"))
		assert.NotEmpty(t, first.Header.Get("Set-Cookie"))
		replay := a.Do(Post("/things", Key1, "x"))
		assert.Equal(t, first.Status, replay.Status)
		assert.Equal(t, first.Header.Get("Location"), replay.Header.Get("Location"))
		assert.Equal(t, first.Header.Get("Content-Type"), replay.Header.Get("Content-Type"))
		assert.Empty(t, replay.Header.Get("Set-Cookie"))
		assert.Empty(t, replay.Header.Get("X-Not-Replayed"))
		more := NewApp(t, h, idem.WithReplayHeaders("X-Not-Replayed", "Set-Cookie"))
		more.Do(Post("/things", Key1, "x"))
		replay = more.Do(Post("/things", Key1, "x"))
		assert.Equal(t, "yes", replay.Header.Get("X-Not-Replayed"))
		assert.Contains(t, replay.Header.Get("Set-Cookie"), "session=secret")
	}},
	{"spec12/5xx, 408, 425 and 429 release the key", func(t *testing.T, h Harness) {
		a := NewApp(t, h)
		for i, code := range []int{500, 503, 408, 425, 429} {
			key := fmt.Sprintf("9b2f4b1e-0c1d-4f6a-8e2b-3c4d5e6f7a%02d", i)
			assert.Equal(t, code, a.Do(Post(fmt.Sprintf("/status/%d", code), key, "x")).Status)
			again := a.Do(Post(fmt.Sprintf("/status/%d", code), key, "x"))
			assert.False(t, again.Replayed(), "%d", code)
		}
		assert.Equal(t, int32(10), a.Calls.Load())
	}},
	{"spec12/4xx and 2xx are kept", func(t *testing.T, h Harness) {
		a := NewApp(t, h)
		for i, code := range []int{200, 202, 400, 404, 409, 422} {
			key := fmt.Sprintf("9b2f4b1e-0c1d-4f6a-8e2b-3c4d5e6f7a%02d", i)
			a.Do(Post(fmt.Sprintf("/status/%d", code), key, "x"))
			again := a.Do(Post(fmt.Sprintf("/status/%d", code), key, "x"))
			assert.True(t, again.Replayed(), "%d", code)
			assert.Equal(t, code, again.Status)
		}
		assert.Equal(t, int32(6), a.Calls.Load())
	}},
	{"spec12/a keep function decides", func(t *testing.T, h Harness) {
		a := NewApp(t, h, idem.WithKeep(func(int) bool { return true }))
		a.Do(Post("/status/500", Key1, "x"))
		again := a.Do(Post("/status/500", Key1, "x"))
		assert.True(t, again.Replayed())
		assert.Equal(t, 500, again.Status)
		assert.Equal(t, int32(1), a.Calls.Load())
	}},
	{"spec12/a panic releases the key and reaches recovery", func(t *testing.T, h Harness) {
		ev := NewEvents()
		a := NewApp(t, h, idem.WithEventHook(ev.Hook))
		assert.Equal(t, http.StatusInternalServerError, a.Do(Post("/panic", Key1, "x")).Status)
		assert.Equal(t, http.StatusInternalServerError, a.Do(Post("/panic", Key1, "x")).Status)
		assert.Equal(t, int32(2), a.Calls.Load(), "the retry ran the handler again")
		assert.Equal(t, []idem.EventKind{idem.EventAcquired, idem.EventReleased, idem.EventAcquired, idem.EventReleased}, ev.Kinds())
	}},
	{"spec12/a handler that wrote nothing releases the key", func(t *testing.T, h Harness) {
		a := NewApp(t, h)
		assert.Equal(t, http.StatusOK, a.Do(Post("/nothing", Key1, "x")).Status)
		a.Do(Post("/nothing", Key1, "x"))
		assert.Equal(t, int32(2), a.Calls.Load())
	}},
	{"spec12/a status without a body is kept", func(t *testing.T, h Harness) {
		a := NewApp(t, h)
		first := a.Do(Post("/nocontent", Key1, "x"))
		assert.Equal(t, http.StatusNoContent, first.Status)
		again := a.Do(Post("/nocontent", Key1, "x"))
		assert.True(t, again.Replayed())
		assert.Equal(t, http.StatusNoContent, again.Status)
		assert.Equal(t, "/things/done", again.Header.Get("Location"))
		assert.Equal(t, int32(1), a.Calls.Load())
	}},
	{"spec13/a client that goes away still gets its result stored", func(t *testing.T, h Harness) {
		ev := NewEvents()
		a := NewApp(t, h, idem.WithEventHook(ev.Hook))
		ctx, cancel := context.WithCancel(context.Background())
		gone := make(chan error, 1)
		go func() {
			hr, _ := http.NewRequestWithContext(ctx, "POST", a.Srv.URL+"/slow", strings.NewReader("x"))
			hr.Header.Set("Idempotency-Key", Key1)
			hr.Header.Set("Authorization", DefaultAuth)
			_, err := a.Srv.Client().Do(hr)
			gone <- err
		}()
		a.WaitEntered(1)
		cancel()
		require.Error(t, <-gone)
		a.Open()
		ev.WaitFor(t, idem.EventCompleted)
		replay := a.Do(Post("/slow", Key1, "x"))
		assert.True(t, replay.Replayed())
		assert.Equal(t, http.StatusCreated, replay.Status)
		assert.Equal(t, int32(1), a.Calls.Load())
	}},
	{"spec14/a streamed response passes through and is not replayed", func(t *testing.T, h Harness) {
		a := NewApp(t, h)
		first := a.Do(Post("/stream", Key1, "x"))
		assert.Equal(t, "data: 0\n\ndata: 1\n\ndata: 2\n\n", first.Body)
		dup := a.Do(Post("/stream", Key1, "x"))
		if h.Tx { // SPEC 31: a transactional response is held whole until the commit, so it is kept and replayed
			assert.True(t, dup.Replayed())
			assert.Equal(t, first.Body, dup.Body)
			assert.Equal(t, int32(1), a.Calls.Load())
			return
		}
		assert.Equal(t, http.StatusConflict, dup.Status)
		assert.Equal(t, idem.ProblemAlreadyCompleted, dup.Problem(t).Type)
		assert.Equal(t, "/streams/1", dup.Header.Get("Location"))
		assert.Equal(t, int32(1), a.Calls.Load())
	}},
	{"spec15/a response over the cap passes through and is not replayed", func(t *testing.T, h Harness) {
		a := NewApp(t, h, idem.WithMaxResponseBytes(1024))
		first := a.Do(Post("/big", Key1, "x"))
		assert.Len(t, first.Body, 4096)
		dup := a.Do(Post("/big", Key1, "x"))
		assert.Equal(t, http.StatusConflict, dup.Status)
		assert.Equal(t, idem.ProblemAlreadyCompleted, dup.Problem(t).Type)
		assert.Equal(t, "/big/1", dup.Header.Get("Location"))
		assert.Equal(t, int32(1), a.Calls.Load())
	}},

	// Duplicates (16-20).
	{"spec16/another payload is refused with 409", func(t *testing.T, h Harness) {
		a := NewApp(t, h)
		a.Do(Post("/things", Key1, "one"))
		r := a.Do(Post("/things", Key1, "two"))
		assert.Equal(t, http.StatusConflict, r.Status)
		p := r.Problem(t)
		assert.Equal(t, idem.ProblemKeyMismatch, p.Type)
		assert.Contains(t, p.Detail, "different request payload")
		assert.Empty(t, r.Header.Get("Retry-After"), "a mismatch is not worth retrying")
		assert.Equal(t, int32(1), a.Calls.Load())
	}},
	{"spec16/422 as an option", func(t *testing.T, h Harness) {
		a := NewApp(t, h, idem.WithMismatchStatus(http.StatusUnprocessableEntity))
		a.Do(Post("/things", Key1, "one"))
		r := a.Do(Post("/things", Key1, "two"))
		assert.Equal(t, http.StatusUnprocessableEntity, r.Status)
		assert.Equal(t, idem.ProblemKeyMismatch, r.Problem(t).Type)
	}},
	{"spec16/a mismatch while in flight is a mismatch", func(t *testing.T, h Harness) {
		a := NewApp(t, h)
		first := a.Async(Post("/slow", Key1, "one"))
		a.WaitEntered(1)
		r := a.DoBounded(Post("/slow", Key1, "two"))
		assert.Equal(t, http.StatusConflict, r.Status)
		assert.Equal(t, idem.ProblemKeyMismatch, r.Problem(t).Type)
		a.Open()
		Recv(t, first)
	}},
	{"spec17/a replay is byte-identical and marked", func(t *testing.T, h Harness) {
		a := NewApp(t, h)
		first := a.Do(Post("/things", Key1, "x"))
		replay := a.Do(Post("/things", Key1, "x"))
		assert.False(t, first.Replayed())
		assert.True(t, replay.Replayed())
		assert.Equal(t, first.Status, replay.Status)
		assert.Equal(t, first.Body, replay.Body)
		assert.Equal(t, int32(1), a.Calls.Load())
	}},
	{"spec17/the replay header name is configurable", func(t *testing.T, h Harness) {
		a := NewApp(t, h, idem.WithReplayedHeader("x-served-from-cache"))
		a.Do(Post("/things", Key1, "x"))
		r := a.Do(Post("/things", Key1, "x"))
		assert.Equal(t, "true", r.Header.Get("X-Served-From-Cache"))
		assert.Empty(t, r.Header.Get("Idempotent-Replayed"))
	}},
	{"spec17/conflict mode answers 409 with the stored Location", func(t *testing.T, h Harness) {
		a := NewApp(t, h, idem.WithConflictOnReplay())
		first := a.Do(Post("/things", Key1, "x"))
		r := a.Do(Post("/things", Key1, "x"))
		assert.Equal(t, http.StatusConflict, r.Status)
		assert.Equal(t, idem.ProblemAlreadyCompleted, r.Problem(t).Type)
		assert.Equal(t, first.Header.Get("Location"), r.Header.Get("Location"))
		assert.Equal(t, int32(1), a.Calls.Load())
	}},
	{"spec18/a duplicate in flight gets 409 with Retry-After", func(t *testing.T, h Harness) {
		a := NewApp(t, h)
		first := a.Async(Post("/slow", Key1, "x"))
		a.WaitEntered(1)
		r := a.DoBounded(Post("/slow", Key1, "x"))
		assert.Equal(t, http.StatusConflict, r.Status)
		assert.Equal(t, "1", r.Header.Get("Retry-After"))
		assert.Equal(t, idem.ProblemInFlight, r.Problem(t).Type)
		a.Open()
		assert.Equal(t, http.StatusCreated, Recv(t, first).Status)
		assert.Equal(t, int32(1), a.Calls.Load())
	}},
	{"spec18/the wait option replays when the first finishes", func(t *testing.T, h Harness) {
		var cs *CountingStore
		a := NewApp(t, Counted(h, &cs), idem.WithWaitInFlight(10*time.Second))
		waiting := make(chan struct{}, 100)
		cs.OnAcquire = func(held *idem.Record) {
			if held != nil && held.State == idem.InFlight {
				waiting <- struct{}{}
			}
		}
		first := a.Async(Post("/slow", Key1, "x"))
		a.WaitEntered(1)
		dup := a.Async(Post("/slow", Key1, "x"))
		<-waiting // the duplicate saw the key in flight and waits
		a.Open()
		r1, r2 := Recv(t, first), Recv(t, dup)
		assert.True(t, r2.Replayed())
		assert.Equal(t, r1.Body, r2.Body)
		assert.Equal(t, int32(1), a.Calls.Load())
	}},
	{"spec18/the wait is bounded", func(t *testing.T, h Harness) {
		a := NewApp(t, h, idem.WithWaitInFlight(50*time.Millisecond))
		first := a.Async(Post("/slow", Key1, "x"))
		a.WaitEntered(1)
		r := a.DoBounded(Post("/slow", Key1, "x"))
		assert.Equal(t, http.StatusConflict, r.Status)
		assert.Equal(t, idem.ProblemInFlight, r.Problem(t).Type)
		a.Open()
		Recv(t, first)
	}},
	{"spec19/records expire after the TTL", func(t *testing.T, h Harness) {
		a := NewApp(t, h, idem.WithTTL(time.Hour))
		a.Do(Post("/things", Key1, "x"))
		a.Advance(59 * time.Minute)
		assert.True(t, a.Do(Post("/things", Key1, "x")).Replayed())
		a.Advance(2 * time.Minute)
		assert.False(t, a.Do(Post("/things", Key1, "x")).Replayed())
		assert.Equal(t, int32(2), a.Calls.Load())
	}},
	{"spec19/the default TTL is 24 hours", func(t *testing.T, h Harness) {
		a := NewApp(t, h)
		a.Do(Post("/things", Key1, "x"))
		a.Advance(24*time.Hour - time.Minute)
		assert.True(t, a.Do(Post("/things", Key1, "x")).Replayed())
		a.Advance(2 * time.Minute)
		assert.False(t, a.Do(Post("/things", Key1, "x")).Replayed())
	}},
	{"spec20/authorization runs first", func(t *testing.T, h Harness) {
		var cs *CountingStore
		store, _ := Counted(h, &cs).New(t)
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
			hr.Header.Set("Idempotency-Key", Key1)
			hr.Header.Set("Authorization", "Bearer "+user)
			res, err := srv.Client().Do(hr)
			require.NoError(t, err)
			res.Body.Close()
			return res.StatusCode
		}
		assert.Equal(t, http.StatusForbidden, send("eve"), "key unused")
		acq, _, _, _ := cs.Counts()
		assert.Zero(t, acq, "nothing is stored for a forbidden request")
		assert.Equal(t, http.StatusCreated, send("admin"))
		assert.Equal(t, http.StatusForbidden, send("eve"), "key used")
		assert.Equal(t, 1, calls)
	}},

	// Errors and failures (21-27).
	{"spec21/problems are RFC 9457 and echo nothing", func(t *testing.T, h Harness) {
		a := NewApp(t, h, idem.WithKeyValidator(idem.KeyPrintable(64)))
		r := a.Do(Req{Method: "POST", Path: "/things", Header: http.Header{"Idempotency-Key": {`"<script>alert(1)</script>`}}})
		assert.Equal(t, http.StatusBadRequest, r.Status)
		p := r.Problem(t)
		assert.True(t, strings.HasPrefix(p.Type, "https://"))
		assert.NotContains(t, r.Body, "<script>")
		assert.NotContains(t, r.Body, "alert")
	}},
	{"spec21/the problem writer is replaceable", func(t *testing.T, h Harness) {
		a := NewApp(t, h, idem.WithProblemWriter(func(c *gin.Context, p idem.Problem) {
			c.String(p.Status, "custom:"+p.Type)
		}))
		r := a.Do(Post("/things", "bad", "x"))
		assert.Equal(t, http.StatusBadRequest, r.Status)
		assert.Equal(t, "custom:"+idem.ProblemInvalidKey, r.Body)
	}},
	{"spec22/a failing store fails closed with 503", func(t *testing.T, h Harness) {
		var cs *CountingStore
		a := NewApp(t, Counted(h, &cs))
		cs.Fail.Store(true)
		r := a.Do(Post("/things", Key1, "x"))
		assert.Equal(t, http.StatusServiceUnavailable, r.Status)
		assert.Equal(t, "1", r.Header.Get("Retry-After"))
		assert.Equal(t, idem.ProblemStoreUnavailable, r.Problem(t).Type)
		assert.Zero(t, a.Calls.Load())
		cs.Fail.Store(false)
		assert.Equal(t, http.StatusCreated, a.Do(Post("/things", Key1, "x")).Status, "works again when the store is back")
		assert.True(t, a.Do(Post("/things", Key1, "x")).Replayed())
	}},
	{"spec22/fail open runs the handler and logs", func(t *testing.T, h Harness) {
		var cs *CountingStore
		var logs bytes.Buffer
		logger := slog.New(slog.NewTextHandler(&logs, nil))
		a := NewApp(t, Counted(h, &cs), idem.WithFailOpen(), idem.WithLogger(logger))
		cs.Fail.Store(true)
		r := a.Do(Post("/things", Key1, "x"))
		assert.Equal(t, http.StatusCreated, r.Status)
		assert.Equal(t, int32(1), a.Calls.Load())
		assert.Contains(t, logs.String(), "running without idempotency")
		assert.Contains(t, logs.String(), "idempotency_key="+Key1, "the client's key, to find a ticket's request (SPEC 33)")
		assert.NotContains(t, logs.String(), DefaultAuth, "never the caller's identity")
	}},
	{"spec22/a slow store meets the deadline", func(t *testing.T, h Harness) {
		store, _ := h.New(t)
		slow := &slowStore{Store: store}
		a := NewApp(t, Harness{New: func(*testing.T) (idem.Store, func(time.Duration)) { return slow, nil }},
			idem.WithStoreTimeout(50*time.Millisecond))
		slow.hang.Store(true)
		r := a.Do(Post("/things", Key1, "x"))
		assert.Equal(t, http.StatusServiceUnavailable, r.Status)
		slow.hang.Store(false)
		assert.Equal(t, http.StatusCreated, a.Do(Post("/things", Key1, "x")).Status)
	}},
	{"spec25/an invalid record from the store is a store failure", func(t *testing.T, h Harness) {
		store, _ := h.New(t)
		bogus := &bogusStore{Store: store}
		a := NewApp(t, Harness{New: func(*testing.T) (idem.Store, func(time.Duration)) { return bogus, nil }})
		for _, rec := range []*idem.Record{{State: 9}, {State: idem.Completed, Status: 0}, {State: idem.Completed, Status: 1000}} {
			bogus.held = rec
			r := a.Do(Post("/things", Key1, "x"))
			assert.Equal(t, http.StatusServiceUnavailable, r.Status)
		}
		assert.Zero(t, a.Calls.Load())
	}},
	{"spec26/events carry each outcome and only hashes", func(t *testing.T, h Harness) {
		ev := NewEvents()
		a := NewApp(t, h, idem.WithEventHook(ev.Hook))
		auth := "Bearer alice-secret"
		send := func(path, key, body string) Resp {
			r := Post(path, key, body)
			r.Auth = auth
			return a.Do(r)
		}
		send("/things", Key1, "x")
		send("/things", Key1, "x")
		send("/things", Key1, "y")
		send("/status/500", Key2, "x")
		inflight := a.Async(Req{Method: "POST", Path: "/slow", Key: "2a8c6e2a-7b3f-4c5d-9e1f-2a3b4c5d6e7f", Body: "x", Auth: auth})
		a.WaitEntered(1)
		send("/slow", "2a8c6e2a-7b3f-4c5d-9e1f-2a3b4c5d6e7f", "x")
		a.Open()
		Recv(t, inflight)
		ev.WaitFor(t, idem.EventCompleted)
		kinds := ev.Kinds()
		for _, k := range []idem.EventKind{idem.EventAcquired, idem.EventCompleted, idem.EventReplayed,
			idem.EventMismatch, idem.EventReleased, idem.EventConflict} {
			assert.Contains(t, kinds, k)
		}
		scope := sha256.Sum256([]byte(auth))
		for _, e := range ev.All() {
			assert.Equal(t, hex.EncodeToString(scope[:]), e.ScopeHash)
			assert.NotContains(t, e.Key, Key1)
			assert.Len(t, e.Key, 64)
			assert.Equal(t, "POST", e.Method)
		}
	}},
	{"spec26/store errors and lost leases are events", func(t *testing.T, h Harness) {
		ev := NewEvents()
		var cs *CountingStore
		a := NewApp(t, Counted(h, &cs), idem.WithEventHook(ev.Hook))
		cs.Fail.Store(true)
		a.Do(Post("/things", Key1, "x"))
		e := ev.WaitFor(t, idem.EventStoreError)
		assert.ErrorIs(t, e.Err, ErrStoreDown)
	}},
	{"spec27/no bad input panics the server or corrupts another record", func(t *testing.T, h Harness) {
		a := NewApp(t, h, idem.WithFingerprint(idem.CanonicalJSON()))
		good := a.Do(Post("/things", Key1, `{"a":1}`))
		deep := strings.Repeat("[", 100000) + strings.Repeat("]", 100000)
		for _, r := range []Req{
			Post("/things", Key2, deep),
			Post("/things", Key2, "\x00\xff"),
			{Method: "POST", Path: "/things", Header: http.Header{"Idempotency-Key": {strings.Repeat(`\`, 5000)}}},
			{Method: "POST", Path: "/things", Header: http.Header{"Idempotency-Key": {"\"" + strings.Repeat(`\"`, 400) + "\""}}},
			Post("/things", Key1, `{"a":2}`),
		} {
			got := a.Do(r)
			assert.Less(t, got.Status, 500, "%.40q", r.Body)
			assert.GreaterOrEqual(t, got.Status, 400)
			got.Problem(t)
		}
		again := a.Do(Post("/things", Key1, `{"a":1}`))
		assert.True(t, again.Replayed())
		assert.Equal(t, good.Body, again.Body)
		assert.Equal(t, int32(1), a.Calls.Load())
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
