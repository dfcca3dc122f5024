package idempotency

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
)

// A Codec turns a function's result into the bytes a [Runner] keeps, and
// those bytes back into a value, for [DoValue]. [JSONCodec] is one; a Codec
// of protobuf, gob or msgpack is a few lines.
type Codec interface {
	Marshal(v any) ([]byte, error)
	Unmarshal(data []byte, v any) error
}

// JSONCodec is the [Codec] of encoding/json.
type JSONCodec struct{}

// Marshal implements [Codec] with json.Marshal.
func (JSONCodec) Marshal(v any) ([]byte, error) { return json.Marshal(v) }

// Unmarshal implements [Codec] with json.Unmarshal.
func (JSONCodec) Unmarshal(data []byte, v any) error { return json.Unmarshal(data, v) }

// encodingError is a result the codec could not encode: the function ran,
// but [WithKeepError] never keeps this error, so the key is released.
type encodingError struct{ err error }

func (e *encodingError) Error() string {
	return "idempotency: encoding the call's result: " + e.err.Error()
}
func (e *encodingError) Unwrap() error { return e.err }

// ErrOmitted is returned by [DoValue] to a later call whose recorded
// result was larger than the cap ([WithMaxResponseBytes]) and was not
// kept: the function ran once, but its value cannot be given again.
var ErrOmitted = errors.New("idempotency: the recorded result was larger than the cap and was not kept")

// DoValue is [Runner.Do] for a function whose result is a value: fn's
// value is kept through codec (a nil codec is [JSONCodec]), and a later
// call with the key gets it back decoded, with replayed true. The errors
// are those of Do, and:
//   - a value codec cannot encode is an error from fn that [WithKeepError]
//     never keeps (the key is released and, on Postgres, its writes roll
//     back), wrapped with what failed;
//   - a recorded result codec cannot decode is an error wrapping codec's;
//   - a recorded result over the cap is [ErrOmitted].
//
// DoValue is a function, not a method, because Go methods cannot take
// type parameters.
//
//	order, replayed, err := idempotency.DoValue(ctx, runner, call, idempotency.JSONCodec{},
//		func(ctx context.Context, tx idempotency.Tx) (Order, error) { return place(ctx, msg) })
func DoValue[T any](ctx context.Context, r *Runner, call Call, codec Codec, fn func(ctx context.Context, tx Tx) (T, error)) (value T, replayed bool, err error) {
	if codec == nil {
		codec = JSONCodec{}
	}
	ran := false
	res, err := r.Do(ctx, call, func(ctx context.Context, tx Tx) ([]byte, error) {
		v, err := fn(ctx, tx)
		if err != nil {
			return nil, err
		}
		b, err := codec.Marshal(v)
		if err != nil {
			return nil, &encodingError{err}
		}
		value, ran = v, true
		return b, nil
	})
	switch {
	case err != nil: // replayed for an error kept by WithKeepError
		var zero T
		return zero, res.Replayed, err
	case ran: // run now: the value itself, kept or not
		return value, false, nil
	case res.Omitted:
		return value, true, ErrOmitted
	}
	if err := codec.Unmarshal(res.Value, &value); err != nil {
		var zero T
		return zero, true, fmt.Errorf("idempotency: decoding the recorded result: %w", err)
	}
	return value, true, nil
}
