package idempotency

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"net/http"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ginidem/idempotency/internal/wire"
)

// typicalRecord is a completed record for a typical JSON API response.
func typicalRecord() *Record {
	fp := sha256.Sum256([]byte("POST /requisitions {...}"))
	return &Record{
		State: Completed, Fingerprint: fp[:], Method: http.MethodPost, Path: "/api/requisitions",
		Status: http.StatusCreated,
		Header: http.Header{
			"Content-Type": {"application/json; charset=utf-8"},
			"Location":     {"/api/requisitions/8e03978e-40d5-43e8-bc93-6894a57f9324"},
		},
		Body: bytes.Repeat([]byte("x"), 200),
	}
}

func codecRecords() map[string]*Record {
	return map[string]*Record{
		"in flight claim": {State: InFlight, Fingerprint: []byte("fp"), Method: "POST", Path: "/things"},
		"typical":         typicalRecord(),
		"binary body and multi-valued headers": {
			State: Completed, Fingerprint: []byte{0, 1, 2, 0xff}, Method: "PATCH", Path: "/things/:id",
			Status: 200, Header: http.Header{"Link": {"<a>; rel=next", "<b>; rel=prev"}, "Etag": {`"x"`}, "X-Empty": {""}},
			Body: []byte("\x00\xff\r\n{\"id\":1}\x80"),
		},
		"body omitted": {State: Completed, Status: 202, Header: http.Header{"Location": {"/s"}}, BodyOmitted: true},
		"all empty":    {State: Completed},
		"largest status and a long path": {
			State: Completed, Status: maxStatus, Path: "/" + strings.Repeat("p", 300), Body: bytes.Repeat([]byte{7}, 70_000),
		},
	}
}

func TestRedisCodec_RoundTrip(t *testing.T) {
	for name, rec := range codecRecords() {
		t.Run(name, func(t *testing.T) {
			token := newRedisToken()
			value := encodeRecord(rec.State, token, rec)
			got, err := decodeRecord(string(value), DefaultRedisMaxRecordSize)
			require.NoError(t, err)
			want := *rec
			want.Token = token.String()
			if len(want.Fingerprint) == 0 {
				want.Fingerprint = nil
			}
			if len(want.Body) == 0 {
				want.Body = nil
			}
			assert.Equal(t, &want, got)
			assert.True(t, strings.HasPrefix(string(value), ownerHead(token)) == (rec.State == InFlight),
				"only an in-flight record starts with its owner's head")
		})
	}
}

func TestRedisCodec_BodyOmittedDropsTheBody(t *testing.T) {
	rec := &Record{State: Completed, Status: 200, Body: []byte("not kept"), BodyOmitted: true}
	got, err := decodeRecord(string(encodeRecord(Completed, newRedisToken(), rec)), DefaultRedisMaxRecordSize)
	require.NoError(t, err)
	assert.True(t, got.BodyOmitted)
	assert.Empty(t, got.Body)
}

// TestRedisCodec_TypicalRecordSize pins the size of a typical record: a 201
// with Content-Type, Location and a 200-byte JSON body.
func TestRedisCodec_TypicalRecordSize(t *testing.T) {
	value := encodeRecord(Completed, newRedisToken(), typicalRecord())
	t.Logf("typical completed record: %d bytes (body 200)", len(value))
	assert.Less(t, len(value), 400)
	claim := encodeRecord(InFlight, newRedisToken(), &Record{Fingerprint: make([]byte, 32), Method: "POST", Path: "/api/requisitions"})
	t.Logf("in-flight record: %d bytes", len(claim))
	assert.Less(t, len(claim), 100)
}

func TestSpec25_TruncatedRecordIsAnError(t *testing.T) {
	for name, rec := range codecRecords() {
		t.Run(name, func(t *testing.T) {
			value := string(encodeRecord(rec.State, newRedisToken(), rec))
			for n := range len(value) {
				_, err := decodeRecord(value[:n], DefaultRedisMaxRecordSize)
				require.ErrorIs(t, err, ErrCorruptRecord, "prefix of %d of %d bytes", n, len(value))
			}
			_, err := decodeRecord(value+"x", DefaultRedisMaxRecordSize)
			assert.ErrorIs(t, err, ErrCorruptRecord, "a trailing byte")
		})
	}
}

func TestSpec25_CorruptByteNeverPanics(t *testing.T) {
	value := encodeRecord(Completed, newRedisToken(), codecRecords()["binary body and multi-valued headers"])
	for i := range value {
		for _, c := range []byte{0x00, 0x01, 0x7f, 0x80, 0xff, value[i] + 1} {
			corrupt := bytes.Clone(value)
			corrupt[i] = c
			assert.NotPanics(t, func() { _, _ = decodeRecord(string(corrupt), DefaultRedisMaxRecordSize) })
		}
	}
}

// craft builds a value with a valid head followed by tail.
func craft(tail ...[]byte) string {
	b := []byte{recordVersion, byte(Completed)}
	b = append(b, make([]byte, tokenLen)...)
	for _, p := range tail {
		b = append(b, p...)
	}
	return string(b)
}

func uv(x uint64) []byte { return binary.AppendUvarint(nil, x) }

func TestSpec25_CorruptValueIsADecodeError(t *testing.T) {
	empty := uv(0)
	cases := map[string]string{
		"empty":                   "",
		"foreign text":            "hello, world",
		"foreign json":            `{"status":200,"body":"x"}`,
		"unknown version":         "\x02" + craft()[1:],
		"unknown state":           craft()[:1] + "\x03" + craft()[2:],
		"head only":               craft(),
		"huge fingerprint length": craft(uv(1 << 62)),
		"varint overflow":         craft(bytes.Repeat([]byte{0xff}, 11)),
		"fingerprint past end":    craft(uv(5), []byte("abc")),
		"status out of range":     craft(empty, empty, empty, uv(1000), []byte{0}, empty, empty),
		"unknown flags":           craft(empty, empty, empty, uv(200), []byte{0x82}, empty, empty),
		"huge header count":       craft(empty, empty, empty, uv(200), []byte{0}, uv(1<<40)),
		"huge header value count": craft(empty, empty, empty, uv(200), []byte{0}, uv(1), uv(1), []byte("A"), uv(1<<50), empty),
		"huge body length":        craft(empty, empty, empty, uv(200), []byte{0}, empty, uv(1<<62)),
		"body on a bodiless record": craft(empty, empty, empty, uv(200), []byte{flagBodyOmitted}, empty,
			uv(1), []byte("b")),
		"trailing bytes": craft(empty, empty, empty, uv(200), []byte{0}, empty, empty, []byte("junk")),
	}
	for name, value := range cases {
		t.Run(name, func(t *testing.T) {
			var err error
			require.NotPanics(t, func() { _, err = decodeRecord(value, DefaultRedisMaxRecordSize) })
			assert.ErrorIs(t, err, ErrCorruptRecord)
		})
	}
	t.Run("over the maximum size", func(t *testing.T) {
		value := string(encodeRecord(Completed, newRedisToken(), typicalRecord()))
		_, err := decodeRecord(value, len(value)-1)
		assert.ErrorIs(t, err, ErrCorruptRecord)
		_, err = decodeRecord(value, len(value))
		assert.NoError(t, err)
	})
}

// TestSpec25_ForgottenMarkerIsNoRecord: the marker that Delete leaves in
// place of an in-flight record decodes as no record, not a corrupt one;
// anything longer that starts like it is corrupt.
func TestSpec25_ForgottenMarkerIsNoRecord(t *testing.T) {
	var err error
	require.NotPanics(t, func() { _, err = decodeRecord(forgottenValue, DefaultRedisMaxRecordSize) })
	assert.ErrorIs(t, err, ErrNoRecord)
	assert.NotErrorIs(t, err, ErrCorruptRecord)
	for _, value := range []string{forgottenValue + "x", forgottenValue + strings.Repeat("\x00", tokenLen), forgottenValue[:1]} {
		_, err := decodeRecord(value, DefaultRedisMaxRecordSize)
		assert.ErrorIs(t, err, ErrCorruptRecord, "%q", value)
	}
}

// TestSpec25_HugeLengthsAllocateNothing checks that lengths and counts are
// checked against the bytes left before anything is allocated.
func TestSpec25_HugeLengthsAllocateNothing(t *testing.T) {
	empty := uv(0)
	values := []string{
		craft(uv(1 << 62)),
		craft(empty, empty, empty, uv(200), []byte{0}, uv(1<<40)),
		craft(empty, empty, empty, uv(200), []byte{0}, uv(1), uv(1), []byte("A"), uv(1<<50)),
		craft(empty, empty, empty, uv(200), []byte{0}, empty, uv(1<<40)),
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	const runs = 100
	for range runs {
		for _, v := range values {
			_, _ = decodeRecord(v, DefaultRedisMaxRecordSize)
		}
	}
	runtime.ReadMemStats(&after)
	perDecode := (after.TotalAlloc - before.TotalAlloc) / uint64(runs*len(values))
	assert.Less(t, perDecode, uint64(2048), "bytes allocated per rejected decode")
}

func TestRedisCodec_ParseToken(t *testing.T) {
	token := newRedisToken()
	got, ok := parseRedisToken(token.String())
	assert.True(t, ok)
	assert.Equal(t, token, got)
	for _, bad := range []string{"", "not-" + token.String(), token.String()[:30], strings.Repeat("z", 32), token.String() + "00"} {
		_, ok := parseRedisToken(bad)
		assert.False(t, ok, "%q", bad)
	}
}

// FuzzDecodeRecord checks that no stored value panics the decoder, and that
// whatever it accepts encodes back to a value it decodes the same way.
func FuzzDecodeRecord(f *testing.F) {
	for _, rec := range codecRecords() {
		f.Add(encodeRecord(rec.State, newRedisToken(), rec))
	}
	f.Add([]byte("hello"))
	f.Add([]byte(forgottenValue))
	f.Fuzz(func(t *testing.T, value []byte) {
		rec, err := decodeRecord(string(value), 1<<16)
		if errors.Is(err, ErrNoRecord) {
			require.Equal(t, forgottenValue, string(value), "only the marker of a deleted key is no record")
			return
		}
		if err != nil {
			require.ErrorIs(t, err, ErrCorruptRecord)
			return
		}
		token, ok := parseRedisToken(rec.Token)
		require.True(t, ok)
		again, err := decodeRecord(string(encodeRecord(rec.State, token, rec)), 1<<17)
		require.NoError(t, err)
		require.Equal(t, rec, again)
	})
}

// TestSpec25_LyingCountsAllocateLittle: a value under the size bound whose
// header and value counts claim as much as the bytes left allow, followed by
// garbage, costs a small multiple of its size to refuse, not a map and
// slices sized by the counts.
func TestSpec25_LyingCountsAllocateLittle(t *testing.T) {
	empty := uv(0)
	garbage := strings.Repeat("\xff", 1<<20)
	values := []string{
		craft(empty, empty, empty, uv(200), []byte{0}, uv(uint64(len(garbage)/2)), []byte(garbage)),
		craft(empty, empty, empty, uv(200), []byte{0}, uv(1), uv(1), []byte("A"), uv(uint64(len(garbage)-8)), []byte(garbage)),
	}
	for _, v := range values {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		_, err := decodeRecord(v, DefaultRedisMaxRecordSize)
		runtime.ReadMemStats(&after)
		assert.ErrorIs(t, err, ErrCorruptRecord)
		assert.Less(t, after.TotalAlloc-before.TotalAlloc, uint64(4*len(v)), "bytes allocated to refuse %d bytes", len(v))
	}
}

// TestSpec25_ManyTinyHeadersAreRefused: a value under the size bound made of
// a great many tiny headers is refused, at a cost far below its size, rather
// than decoded into a map of that many headers.
func TestSpec25_ManyTinyHeadersAreRefused(t *testing.T) {
	rec := &Record{State: Completed, Status: 200, Header: http.Header{}}
	for i := 0; len(encodeRecord(Completed, newRedisToken(), rec)) < 1<<20-64; i += 1000 {
		for j := i; j < i+1000; j++ {
			rec.Header["X"+strconv.FormatInt(int64(j), 36)] = []string{""}
		}
	}
	value := string(encodeRecord(Completed, newRedisToken(), rec))
	require.LessOrEqual(t, len(value), DefaultRedisMaxRecordSize)
	t.Logf("%d headers in %d bytes", len(rec.Header), len(value))

	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	_, err := decodeRecord(value, DefaultRedisMaxRecordSize)
	runtime.ReadMemStats(&after)
	assert.ErrorIs(t, err, ErrCorruptRecord)
	assert.Less(t, after.TotalAlloc-before.TotalAlloc, uint64(len(value)), "bytes allocated to refuse %d bytes", len(value))
	allocs := testing.AllocsPerRun(10, func() { _, _ = decodeRecord(value, DefaultRedisMaxRecordSize) })
	assert.Less(t, allocs, 32.0, "allocations to refuse it")
}

// TestSpec25_HeaderBounds: the headers of a record are bounded in number,
// values and bytes, and hold only valid, canonical names and valid values.
func TestSpec25_HeaderBounds(t *testing.T) {
	many := func(names, valuesEach int, value string) http.Header {
		h := http.Header{}
		for i := range names {
			h[fmt.Sprintf("X-H%d", i)] = slices.Repeat([]string{value}, valuesEach)
		}
		return h
	}
	refused := map[string]http.Header{
		"too many names":            many(wire.MaxHeaderNames+1, 1, "v"),
		"too many values":           many(2, wire.MaxHeaderValues/2+1, "v"),
		"too many values, one name": {"Link": slices.Repeat([]string{"<a>"}, wire.MaxHeaderValues+1)},
		"too many bytes":            {"X-Big": {strings.Repeat("v", wire.MaxHeaderBytes-len("X-Big")+1)}},
		"empty name":                {"": {"v"}},
		"space in name":             {"X Bad": {"v"}},
		"colon in name":             {"X:Bad": {"v"}},
		"non-ASCII name":            {"X-Caf\u00e9": {"v"}},
		"lower-case name":           {"content-type": {"text/plain"}},
		"upper-case name":           {"X-FOO": {"v"}},
		"CR LF in value":            {"Location": {"/a\r\nSet-Cookie: x=1"}},
		"LF in value":               {"Location": {"/a\nb"}},
		"NUL in value":              {"X-V": {"a\x00b"}},
	}
	for name, h := range refused {
		t.Run("refused/"+name, func(t *testing.T) {
			rec := &Record{State: Completed, Status: 200, Header: h}
			assert.False(t, wire.HeaderWithinBounds(h))
			_, err := decodeRecord(string(encodeRecord(Completed, newRedisToken(), rec)), DefaultRedisMaxRecordSize)
			assert.ErrorIs(t, err, ErrCorruptRecord)
		})
	}
	accepted := map[string]http.Header{
		"as many names as allowed":  many(wire.MaxHeaderNames, 1, "v"),
		"as many values as allowed": many(4, wire.MaxHeaderValues/4, "v"),
		"as many bytes as allowed":  {"X-Big": {strings.Repeat("v", wire.MaxHeaderBytes-len("X-Big"))}},
		"a few headers and a Link": {
			"Content-Type": {"application/json"}, "Etag": {`"abc"`}, "X-Empty": {""}, "X-Tab": {"a\tb"},
			"Link": {"</p/2>; rel=next", "</p/9>; rel=last", "</p/1>; rel=first"},
		},
	}
	for name, h := range accepted {
		t.Run("accepted/"+name, func(t *testing.T) {
			rec := &Record{State: Completed, Status: 200, Header: h, Body: []byte("ok")}
			assert.True(t, wire.HeaderWithinBounds(h))
			got, err := decodeRecord(string(encodeRecord(Completed, newRedisToken(), rec)), DefaultRedisMaxRecordSize)
			require.NoError(t, err)
			assert.Equal(t, h, got.Header)
			assert.Equal(t, rec.Body, got.Body)
		})
	}
}
