package wire

import (
	"bytes"
	"net/http"
	"testing"
)

// TestAppendHeaderIsDeterministic: a header encodes to the same bytes every
// time, whatever order the map yields its names in, so that a store can
// recognise a retried write of the same record.
func TestAppendHeaderIsDeterministic(t *testing.T) {
	h := http.Header{
		"Content-Type": {"application/json"}, "Location": {"/orders/1"},
		"Link": {"<a>", "<b>"}, "Vary": {"Accept-Encoding"}, "Etag": {`"x"`},
	}
	first := AppendHeader(nil, h)
	for range 100 {
		if got := AppendHeader(nil, h); !bytes.Equal(got, first) {
			t.Fatalf("encodings differ:\n%q\n%q", first, got)
		}
	}
	d := Decoder{Rest: string(first), Corrupt: errCorrupt}
	back := d.Header()
	if d.Err != nil || len(back) != len(h) || back.Get("Location") != "/orders/1" || len(back["Link"]) != 2 {
		t.Fatalf("round trip: %v %v", back, d.Err)
	}
}

var errCorrupt = bytes.ErrTooLarge // any sentinel
