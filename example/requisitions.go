package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/google/uuid"
)

// status is the state of a requisition in its workflow.
type status string

const (
	statusInitiated  status = "INITIATED"
	statusSubmitted  status = "SUBMITTED"
	statusAuthorized status = "AUTHORIZED"
	statusApproved   status = "APPROVED"
	statusRejected   status = "REJECTED"
)

// requisition is a request for supplies by a facility under a program.
type requisition struct {
	// ID is a random UUID, so that a replayed create visibly returns the
	// same requisition rather than the next one in a sequence.
	ID       string `json:"id"`
	Program  string `json:"program"`
	Facility string `json:"facility"`
	Status   status `json:"status"`
}

// transition is a workflow step: POST /api/requisitions/{id}/{action}, by a
// user with the right need, moves a requisition from one of the statuses
// from to the status to.
type transition struct {
	action string
	need   right
	from   []status
	to     status
}

// errNotFound reports an unknown requisition id.
var errNotFound = errors.New("requisition not found")

// transitionError says why a transition is not allowed from a requisition's
// status.
type transitionError struct {
	t  transition
	is status // the requisition's status
}

func (e *transitionError) Error() string {
	return fmt.Sprintf("cannot %s a requisition in status %s (allowed from %v)", e.t.action, e.is, e.t.from)
}

// repository keeps the requisitions: in memory (requisitions), or in
// Postgres with -postgres (pgRequisitions), where every replica of the
// service on one database sees the same ones. Writes take the request's
// context, which carries its transaction when the idempotency middleware
// runs one (pgstore.Tx).
type repository interface {
	// create stores a new INITIATED requisition and returns it.
	create(c *gin.Context, program, facility string) (requisition, error)
	// apply moves the requisition id along t and returns it. It returns
	// errNotFound for an unknown id, and a *transitionError when t is not
	// allowed from the requisition's status.
	apply(c *gin.Context, id string, t transition) (requisition, error)
	// get returns the requisition id, or errNotFound.
	get(ctx context.Context, id string) (requisition, error)
	// list returns all requisitions in creation order.
	list(ctx context.Context) ([]requisition, error)
}

// requisitions is the in-memory repository, safe for concurrent use.
type requisitions struct {
	mu   sync.Mutex
	byID map[string]requisition
	ids  []string // in creation order
}

// newRequisitions returns an empty in-memory repository.
func newRequisitions() *requisitions { return &requisitions{byID: map[string]requisition{}} }

func (s *requisitions) create(_ *gin.Context, program, facility string) (requisition, error) {
	r := requisition{ID: uuid.NewString(), Program: program, Facility: facility, Status: statusInitiated}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.byID[r.ID] = r
	s.ids = append(s.ids, r.ID)
	return r, nil
}

func (s *requisitions) get(_ context.Context, id string) (requisition, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.byID[id]
	if !ok {
		return requisition{}, errNotFound
	}
	return r, nil
}

func (s *requisitions) list(context.Context) ([]requisition, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]requisition, 0, len(s.ids))
	for _, id := range s.ids {
		out = append(out, s.byID[id])
	}
	return out, nil
}

func (s *requisitions) apply(_ *gin.Context, id string, t transition) (requisition, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.byID[id]
	if !ok {
		return requisition{}, errNotFound
	}
	for _, from := range t.from {
		if r.Status == from {
			r.Status = t.to
			s.byID[id] = r
			return r, nil
		}
	}
	return requisition{}, &transitionError{t: t, is: r.Status}
}

// service holds the HTTP handlers of the requisition API.
type service struct {
	reqs repository
	wait func() // the simulated backend latency of write handlers
}

// newService returns a service on reqs whose write handlers wait for
// cfg.Latency (or call cfg.hold, when set).
func newService(cfg config, reqs repository) *service {
	wait := cfg.hold
	if wait == nil {
		// A plain sleep, not cut short when the client goes away: a slow
		// backend finishes its write anyway, and the middleware records it.
		wait = func() { time.Sleep(cfg.Latency) }
	}
	return &service{reqs: reqs, wait: wait}
}

// create handles POST /api/requisitions.
func (s *service) create(c *gin.Context) {
	var in struct {
		Program  string `json:"program"`
		Facility string `json:"facility"`
	}
	if !decodeJSON(c, &in) {
		return
	}
	if strings.TrimSpace(in.Program) == "" || strings.TrimSpace(in.Facility) == "" {
		abortProblem(c, http.StatusBadRequest, "invalid-request", "program and facility are required and must not be empty")
		return
	}
	s.wait()
	r, err := s.reqs.create(c, in.Program, in.Facility)
	if err != nil {
		databaseFailed(c, err)
		return
	}
	c.Header("Location", location(r.ID))
	c.JSON(http.StatusCreated, r)
}

// transition returns the handler of POST /api/requisitions/{id}/{t.action}.
func (s *service) transition(t transition) gin.HandlerFunc {
	return func(c *gin.Context) {
		s.wait()
		r, err := s.reqs.apply(c, c.Param("id"), t)
		var invalid *transitionError
		switch {
		case errors.Is(err, errNotFound):
			abortProblem(c, http.StatusNotFound, "not-found", "no requisition with this id")
		case errors.As(err, &invalid):
			abortProblem(c, http.StatusConflict, "invalid-transition", invalid.Error())
		case err != nil:
			databaseFailed(c, err)
		default:
			c.Header("Location", location(r.ID))
			c.JSON(http.StatusOK, r)
		}
	}
}

// get handles GET /api/requisitions/{id}.
func (s *service) get(c *gin.Context) {
	r, err := s.reqs.get(c.Request.Context(), c.Param("id"))
	switch {
	case errors.Is(err, errNotFound):
		abortProblem(c, http.StatusNotFound, "not-found", "no requisition with this id")
	case err != nil:
		databaseFailed(c, err)
	default:
		c.JSON(http.StatusOK, r)
	}
}

// list handles GET /api/requisitions.
func (s *service) list(c *gin.Context) {
	items, err := s.reqs.list(c.Request.Context())
	if err != nil {
		databaseFailed(c, err)
		return
	}
	c.JSON(http.StatusOK, gin.H{"items": items})
}

// databaseFailed logs err and answers 503: a 5xx, so the idempotency
// middleware keeps nothing (and rolls back the request's transaction), and
// a retry with the same key runs again.
func databaseFailed(c *gin.Context, err error) {
	slog.ErrorContext(c.Request.Context(), "requisitions: database failed", "err", err)
	c.Header("Retry-After", "1")
	abortProblem(c, http.StatusServiceUnavailable, "unavailable", "the database did not answer; retry")
}

// location is the URL path of the requisition id.
func location(id string) string { return "/api/requisitions/" + id }

// maxBody bounds the request bodies the service reads.
const maxBody = 64 << 10

// decodeJSON reads one JSON value from the request body into v. On failure
// it answers 400 (or 413 for a body over maxBody) and returns false.
func decodeJSON(c *gin.Context, v any) bool {
	dec := json.NewDecoder(http.MaxBytesReader(c.Writer, c.Request.Body, maxBody))
	err := dec.Decode(v)
	if err == nil {
		if extra := dec.Decode(&struct{}{}); extra != io.EOF {
			err = cmp.Or(extra, errors.New("trailing data after the JSON object"))
		}
	}
	var tooLarge *http.MaxBytesError
	switch {
	case errors.As(err, &tooLarge):
		abortProblem(c, http.StatusRequestEntityTooLarge, "body-too-large", fmt.Sprintf("the body must not exceed %d bytes", maxBody))
	case err != nil:
		abortProblem(c, http.StatusBadRequest, "invalid-request", "the body must be a JSON object with program and facility")
	default:
		return true
	}
	return false
}
