package idempotency

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
)

// FuzzParseKeyLine: any header line is either refused or yields a non-empty
// key of printable ASCII that reads back the same from its RFC 8941 quoted
// form (spec3, spec27).
func FuzzParseKeyLine(f *testing.F) {
	for _, seed := range []string{
		"9b2f4b1e-0c1d-4f6a-8e2b-3c4d5e6f7a8b", `"9b2f4b1e-0c1d-4f6a-8e2b-3c4d5e6f7a8b"`,
		`"a\"b\\c"`, `"`, `""`, " ", "\t\"x\" ", `"x";p=1`, "caf\xc3\xa9", `\`, `"\`,
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, line string) {
		key, err := parseKeyLine(line)
		if err != nil {
			if key != "" {
				t.Fatalf("an error with a key: %q", key)
			}
			return
		}
		if key == "" {
			t.Fatal("an empty key without an error")
		}
		for i := 0; i < len(key); i++ {
			if key[i] < 0x20 || key[i] > 0x7e {
				t.Fatalf("key %q has byte %#x", key, key[i])
			}
		}
		quoted := `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(key) + `"`
		again, err := parseKeyLine(quoted)
		if err != nil || again != key {
			t.Fatalf("%q quoted as %q reads back as %q, %v", key, quoted, again, err)
		}
	})
}

// FuzzCanonicalJSON: canonicalisation never panics, accepts exactly what
// encoding/json accepts as one value, and gives one fingerprint for a value
// however it is spaced (spec8, spec27).
func FuzzCanonicalJSON(f *testing.F) {
	for _, seed := range []string{
		`{"a":1,"b":[1,2,{"c":"d"}]}`, `{ "b" : 2 , "a" : 1 }`, `[]`, `"x"`, `1e400`, `{"a":`,
		`{"a":1}{"b":2}`, strings.Repeat("[", 20000), `{"\u00e9":"\ud800"}`, `null`, ` 0.10 `,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		var canonical bytes.Buffer
		err := CanonicalJSON()(&canonical, nil, body)
		valid := json.Valid(body)
		if (err == nil) != valid {
			t.Fatalf("canonical JSON error %v, json.Valid %v", err, valid)
		}
		if err != nil {
			return
		}
		var spaced bytes.Buffer
		if json.Indent(&spaced, body, " ", "\t") != nil {
			return
		}
		var again bytes.Buffer
		if err := CanonicalJSON()(&again, nil, spaced.Bytes()); err != nil {
			t.Fatalf("indented form refused: %v", err)
		}
		if !bytes.Equal(canonical.Bytes(), again.Bytes()) {
			t.Fatalf("one value, two fingerprints:\n%q\n%q", canonical.Bytes(), again.Bytes())
		}
	})
}

// FuzzCanonicalQuery: the canonical query part never panics or fails, and
// a query string net/url can parse has the fingerprint of its re-encoded
// form, whose parameters are sorted and escaped anew (spec34, spec27).
func FuzzCanonicalQuery(f *testing.F) {
	for _, seed := range []string{
		"a=1&b=2", "b=2&a=1", "a=1&a=2", "q=a+b&q=a%20b", "%61=%31", "a", "a=", "=x", "&&=&",
		"a=%zz", "a=1;b=2", "", "e=%E2%82%AC&e=%ff", "a=1&b=2#frag",
	} {
		f.Add(seed)
	}
	part := CanonicalQuery()
	fp := func(t *testing.T, raw string) []byte {
		var b bytes.Buffer
		if err := part(&b, &http.Request{URL: &url.URL{RawQuery: raw}}, nil); err != nil {
			t.Fatalf("query %q: %v", raw, err)
		}
		return b.Bytes()
	}
	f.Fuzz(func(t *testing.T, raw string) {
		got := fp(t, raw)
		values, err := url.ParseQuery(raw)
		if err != nil {
			return
		}
		if again := fp(t, values.Encode()); !bytes.Equal(got, again) {
			t.Fatalf("%q and its re-encoded form %q differ:\n%q\n%q", raw, values.Encode(), got, again)
		}
	})
}
