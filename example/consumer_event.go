package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/redis/go-redis/v9"

	"github.com/ginidem/idempotency"
	"github.com/ginidem/idempotency/pgstore"
)

// The fields of a requisition event, an entry of the consumed stream. A
// producer adds one with
//
//	XADD requisition-events * event_id <uuid> type create program <program> facility <facility>
//
// and adds it again, with the same fields, when it does not know whether
// its first XADD landed: the event id, not the entry id, names the event.
const (
	fieldEventID  = "event_id" // the producer's id of the event: the idempotency key
	fieldType     = "type"     // what the event asks for: eventCreate
	fieldProgram  = "program"
	fieldFacility = "facility"
)

// eventCreate is the only event type: initiate a requisition for program
// at facility. It is not idempotent by itself: each run creates a new
// requisition with a new id.
const eventCreate = "create"

// requisitionEvent is a stream entry read as an event.
type requisitionEvent struct {
	id       string // fieldEventID
	kind     string // fieldType
	program  string
	facility string
	payload  []byte // every field of the entry, in a canonical order
}

// readEvent reads an entry's fields. An entry without an event id cannot
// be told from its duplicates, so it is an error; the other fields are
// checked when the event is applied (see refusedEventError).
func readEvent(msg redis.XMessage) (requisitionEvent, error) {
	field := func(name string) string { s, _ := msg.Values[name].(string); return s }
	ev := requisitionEvent{id: field(fieldEventID), kind: field(fieldType), program: field(fieldProgram), facility: field(fieldFacility)}
	if strings.TrimSpace(ev.id) == "" {
		return requisitionEvent{}, fmt.Errorf("entry %s has no %s field", msg.ID, fieldEventID)
	}
	// encoding/json writes a map's keys in sorted order: the same fields
	// give the same bytes whatever order the producer sent them in.
	payload, err := json.Marshal(msg.Values)
	if err != nil {
		return requisitionEvent{}, fmt.Errorf("entry %s: %w", msg.ID, err)
	}
	ev.payload = payload
	return ev, nil
}

// refusedEventError is an event that can never be applied: an unknown type
// or a missing field. The consumer's Runner keeps it (idempotency.WithKeepError),
// so that a redelivery is refused again without running.
type refusedEventError struct{ reason string }

func (e *refusedEventError) Error() string { return "event refused: " + e.reason }

// isRefusedEvent reports whether err is a refusedEventError, which the
// consumer's Runner keeps as the event's result.
func isRefusedEvent(err error) bool {
	var refused *refusedEventError
	return errors.As(err, &refused)
}

// check returns a *refusedEventError when ev cannot be applied.
func (ev requisitionEvent) check() error {
	switch {
	case ev.kind != eventCreate:
		return &refusedEventError{reason: fmt.Sprintf("unknown %s %q (want %q)", fieldType, ev.kind, eventCreate)}
	case strings.TrimSpace(ev.program) == "" || strings.TrimSpace(ev.facility) == "":
		return &refusedEventError{reason: fieldProgram + " and " + fieldFacility + " are required and must not be empty"}
	}
	return nil
}

// requisitionCreator is what the consumer applies events to: the
// requisitions of the service, in memory or in Postgres.
type requisitionCreator interface {
	// createInCall stores a new INITIATED requisition and returns it. tx
	// is the transaction of the Runner's call (nil on a store that has
	// none); the write goes through it when it is Postgres', and commits
	// with the call's record.
	createInCall(ctx context.Context, tx idempotency.Tx, program, facility string) (requisition, error)
}

var (
	_ requisitionCreator = (*requisitions)(nil)
	_ requisitionCreator = (*pgRequisitions)(nil)
)

// createInCall implements requisitionCreator in memory: a write that no
// transaction can hold back, as with the Redis store.
func (s *requisitions) createInCall(_ context.Context, _ idempotency.Tx, program, facility string) (requisition, error) {
	return s.create(nil, program, facility) // the in-memory create reads nothing from its *gin.Context
}

// createInCall implements requisitionCreator in Postgres: through the
// call's transaction (pgstore.TxOf), so that the requisition and the
// record of the event commit together or not at all; on the pool only when
// the call has no Postgres transaction (a store other than pgstore).
func (s *pgRequisitions) createInCall(ctx context.Context, tx idempotency.Tx, program, facility string) (requisition, error) {
	var q querier = s.pool
	if t := pgstore.TxOf(tx); t != nil {
		q = t
	}
	return insertRequisition(ctx, q, program, facility)
}
