package main

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
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

// requisitions is the in-memory state of the service, safe for concurrent use.
type requisitions struct {
	mu   sync.Mutex
	byID map[string]requisition
	ids  []string // in creation order
}

// create stores a new INITIATED requisition and returns it.
func (s *requisitions) create(program, facility string) requisition {
	r := requisition{ID: uuid.NewString(), Program: program, Facility: facility, Status: statusInitiated}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.byID[r.ID] = r
	s.ids = append(s.ids, r.ID)
	return r
}

// get returns the requisition with the given id.
func (s *requisitions) get(id string) (requisition, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.byID[id]
	return r, ok
}

// list returns all requisitions in creation order.
func (s *requisitions) list() []requisition {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]requisition, 0, len(s.ids))
	for _, id := range s.ids {
		out = append(out, s.byID[id])
	}
	return out
}

// apply moves the requisition id along t and returns it. It returns
// errNotFound for an unknown id, and an error that says why when t is not
// allowed from the requisition's status.
func (s *requisitions) apply(id string, t transition) (requisition, error) {
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
	return requisition{}, fmt.Errorf("cannot %s a requisition in status %s (allowed from %v)", t.action, r.Status, t.from)
}

// service holds the HTTP handlers of the requisition API.
type service struct {
	reqs *requisitions
	wait func() // the simulated backend latency of write handlers
}

// newService returns a service with no requisitions whose write handlers
// wait for cfg.Latency (or call cfg.hold, when set).
func newService(cfg config) *service {
	wait := cfg.hold
	if wait == nil {
		// A plain sleep, not cut short when the client goes away: a slow
		// backend finishes its write anyway, and the middleware records it.
		wait = func() { time.Sleep(cfg.Latency) }
	}
	return &service{reqs: &requisitions{byID: map[string]requisition{}}, wait: wait}
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
	r := s.reqs.create(in.Program, in.Facility)
	c.Header("Location", location(r.ID))
	c.JSON(http.StatusCreated, r)
}

// transition returns the handler of POST /api/requisitions/{id}/{t.action}.
func (s *service) transition(t transition) gin.HandlerFunc {
	return func(c *gin.Context) {
		s.wait()
		r, err := s.reqs.apply(c.Param("id"), t)
		switch {
		case errors.Is(err, errNotFound):
			abortProblem(c, http.StatusNotFound, "not-found", "no requisition with this id")
		case err != nil:
			abortProblem(c, http.StatusConflict, "invalid-transition", err.Error())
		default:
			c.Header("Location", location(r.ID))
			c.JSON(http.StatusOK, r)
		}
	}
}

// get handles GET /api/requisitions/{id}.
func (s *service) get(c *gin.Context) {
	r, ok := s.reqs.get(c.Param("id"))
	if !ok {
		abortProblem(c, http.StatusNotFound, "not-found", "no requisition with this id")
		return
	}
	c.JSON(http.StatusOK, r)
}

// list handles GET /api/requisitions.
func (s *service) list(c *gin.Context) {
	c.JSON(http.StatusOK, gin.H{"items": s.reqs.list()})
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
