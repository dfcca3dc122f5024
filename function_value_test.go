package idempotency_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	idem "github.com/ginidem/idempotency"
)

type shipment struct {
	Order string   `json:"order"`
	Items []string `json:"items"`
	Seq   int      `json:"seq"`
}

// TestSpec17_DoValueReplaysTheDecodedValue: DoValue gives the function's
// value to the first call and the same value, decoded, to a later one; the
// function runs once.
func TestSpec17_DoValueReplaysTheDecodedValue(t *testing.T) {
	runner := idem.NewRunner()
	runs := 0
	ship := func(context.Context, idem.Tx) (shipment, error) {
		runs++
		return shipment{Order: "o-1", Items: []string{"a", "b"}, Seq: runs}, nil
	}
	call := idem.Call{Scope: "shipping", Key: "msg-1", Payload: []byte("ship o-1")}
	first, replayed, err := idem.DoValue(context.Background(), runner, call, idem.JSONCodec{}, ship)
	require.NoError(t, err)
	assert.False(t, replayed)
	again, replayed, err := idem.DoValue(context.Background(), runner, call, idem.JSONCodec{}, ship)
	require.NoError(t, err)
	assert.True(t, replayed)
	assert.Equal(t, first, again)
	assert.Equal(t, shipment{Order: "o-1", Items: []string{"a", "b"}, Seq: 1}, again)
	assert.Equal(t, 1, runs)
}

// TestSpec15_DoValueOverTheCapIsOmittedOnReplay: a value whose encoding is
// over the cap goes to the first call in full; a later call gets
// ErrOmitted, and the function does not run again.
func TestSpec15_DoValueOverTheCapIsOmittedOnReplay(t *testing.T) {
	runner := idem.NewRunner(idem.WithMaxResponseBytes(16))
	runs := 0
	big := func(context.Context, idem.Tx) (string, error) { runs++; return strings.Repeat("x", 64), nil }
	call := idem.Call{Key: "k", Payload: []byte("p")}
	v, replayed, err := idem.DoValue(context.Background(), runner, call, idem.JSONCodec{}, big)
	require.NoError(t, err)
	assert.False(t, replayed)
	assert.Len(t, v, 64)
	v, replayed, err = idem.DoValue(context.Background(), runner, call, idem.JSONCodec{}, big)
	assert.ErrorIs(t, err, idem.ErrOmitted)
	assert.True(t, replayed)
	assert.Empty(t, v)
	assert.Equal(t, 1, runs)
}

// failingCodec encodes with JSON and refuses to decode.
type failingCodec struct{}

func (failingCodec) Marshal(v any) ([]byte, error) { return idem.JSONCodec{}.Marshal(v) }
func (failingCodec) Unmarshal([]byte, any) error   { return errors.New("corrupt") }

// TestSpec12_DoValueCodecErrors: a value the codec cannot encode is the
// function's error, so the key is released and a redelivery runs again; a
// recorded result it cannot decode is an error wrapping the codec's, and
// the function does not run again.
func TestSpec12_DoValueCodecErrors(t *testing.T) {
	runner := idem.NewRunner()
	runs := 0
	unencodable := func(context.Context, idem.Tx) (chan int, error) { runs++; return make(chan int), nil }
	call := idem.Call{Key: "k1", Payload: []byte("p")}
	_, _, err := idem.DoValue(context.Background(), runner, call, idem.JSONCodec{}, unencodable)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "idempotency: encoding the call's result")
	_, _, err = idem.DoValue(context.Background(), runner, call, idem.JSONCodec{}, unencodable)
	require.Error(t, err)
	assert.Equal(t, 2, runs, "the key was released: the second call ran")

	call = idem.Call{Key: "k2", Payload: []byte("p")}
	count := func(context.Context, idem.Tx) (int, error) { runs++; return 7, nil }
	v, _, err := idem.DoValue(context.Background(), runner, call, failingCodec{}, count)
	require.NoError(t, err)
	assert.Equal(t, 7, v)
	_, replayed, err := idem.DoValue(context.Background(), runner, call, failingCodec{}, count)
	assert.ErrorContains(t, err, "idempotency: decoding the recorded result: corrupt")
	assert.True(t, replayed)
	assert.Equal(t, 3, runs)
}

// TestSpec12_DoValueNeverKeepsAnEncodingError: a value the codec cannot
// encode releases the key even under a WithKeepError that keeps every
// error, and a nil codec is JSON.
func TestSpec12_DoValueNeverKeepsAnEncodingError(t *testing.T) {
	runner := idem.NewRunner(idem.WithKeepError(func(error) bool { return true }))
	runs := 0
	unencodable := func(context.Context, idem.Tx) (func(), error) { runs++; return func() {}, nil }
	call := idem.Call{Key: "k", Payload: []byte("p")}
	for range 2 {
		_, replayed, err := idem.DoValue(context.Background(), runner, call, nil, unencodable)
		assert.ErrorContains(t, err, "idempotency: encoding the call's result: json: unsupported type")
		assert.False(t, replayed)
	}
	assert.Equal(t, 2, runs, "released both times, never kept")
}

// TestSpec12_DoValueReplaysAKeptError: an error WithKeepError keeps is
// returned to the first call, and to a later one as a RecordedError, with
// replayed true; the function runs once.
func TestSpec12_DoValueReplaysAKeptError(t *testing.T) {
	refused := errors.New("refused: no such facility")
	runner := idem.NewRunner(idem.WithKeepError(func(err error) bool { return errors.Is(err, refused) }))
	runs := 0
	refuse := func(context.Context, idem.Tx) (int, error) { runs++; return 0, refused }
	call := idem.Call{Key: "k", Payload: []byte("p")}
	_, replayed, err := idem.DoValue(context.Background(), runner, call, idem.JSONCodec{}, refuse)
	assert.ErrorIs(t, err, refused)
	assert.False(t, replayed)
	_, replayed, err = idem.DoValue(context.Background(), runner, call, idem.JSONCodec{}, refuse)
	var recorded *idem.RecordedError
	require.ErrorAs(t, err, &recorded)
	assert.Equal(t, refused.Error(), recorded.Message)
	assert.True(t, replayed)
	assert.Equal(t, 1, runs)
}
