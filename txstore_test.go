package idempotency_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	idem "github.com/ginidem/idempotency"
	"github.com/ginidem/idempotency/internal/suite"
)

// memoryTxStore is a TxStore over a MemoryStore, for the middleware's side
// of SPEC 31 without a database: a transaction collects the handler's
// effects and applies them to rows only when the record commits with them.
type memoryTxStore struct {
	*idem.MemoryStore
	mu         sync.Mutex
	rows       []string      // committed effects
	commitGate chan struct{} // when set, Commit waits for it
	inCommit   chan struct{} // Commit reports each entry
	failCommit error         // when set, Commit fails with it
}

type memoryTx struct {
	s          *memoryTxStore
	key, token string
	effects    []string
	done       bool
}

func (s *memoryTxStore) Begin(_ context.Context, key, token string) (idem.Tx, error) {
	return &memoryTx{s: s, key: key, token: token}, nil
}

// insert is the handler's write through the request's transaction.
func insert(c *gin.Context, row string) bool {
	tx, ok := idem.Transaction(c)
	if !ok {
		return false
	}
	mt := tx.(*memoryTx)
	mt.effects = append(mt.effects, row)
	return true
}

func (tx *memoryTx) Commit(ctx context.Context, rec *idem.Record, ttl time.Duration) error {
	s := tx.s
	if s.inCommit != nil {
		s.inCommit <- struct{}{}
	}
	if s.commitGate != nil {
		<-s.commitGate
	}
	tx.done = true
	if s.failCommit != nil {
		return s.failCommit
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.MemoryStore.Complete(ctx, tx.key, tx.token, rec, ttl); err != nil {
		return err // the effects are dropped with the transaction
	}
	s.rows = append(s.rows, tx.effects...)
	return nil
}

func (tx *memoryTx) Rollback(context.Context) error {
	tx.done = true
	return nil
}

func (tx *memoryTx) Release(ctx context.Context) error {
	tx.done = true
	return tx.s.MemoryStore.Release(ctx, tx.key, tx.token)
}

func (s *memoryTxStore) committed() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.rows...)
}

// txService serves POST /orders writing one row through the transaction,
// POST /fail writing a row and answering 500, POST /panic, and POST /plain
// that ignores the transaction.
func txService(t *testing.T, store *memoryTxStore, opts ...idem.Option) *suite.Served {
	return suite.Mount(t, func(r *gin.Engine, s *suite.Served) {
		r.Use(gin.CustomRecoveryWithWriter(io.Discard, func(c *gin.Context, _ any) { c.AbortWithStatus(500) }))
		r.Use(idem.New(append([]idem.Option{idem.WithStore(store)}, opts...)...))
		r.POST("/orders", func(c *gin.Context) {
			s.Calls.Add(1)
			require.True(t, insert(c, "order"), "the handler has the request's transaction")
			c.Header("Location", "/orders/1")
			c.String(http.StatusCreated, "created")
		})
		r.POST("/fail", func(c *gin.Context) {
			s.Calls.Add(1)
			insert(c, "half")
			c.String(http.StatusInternalServerError, "failed")
		})
		r.POST("/panic", func(c *gin.Context) {
			s.Calls.Add(1)
			insert(c, "half")
			c.Writer.WriteHeader(http.StatusCreated)
			panic("after a write")
		})
		r.POST("/plain", func(c *gin.Context) {
			s.Calls.Add(1)
			c.String(http.StatusCreated, "plain")
		})
	})
}

func TestSpec31_Transactions(t *testing.T) {
	auth := "Authorization: Bearer u"
	newStore := func() *memoryTxStore { return &memoryTxStore{MemoryStore: idem.NewMemoryStore()} }

	t.Run("spec31/the answer goes out only after the commit", func(t *testing.T) {
		store := newStore()
		store.commitGate, store.inCommit = make(chan struct{}), make(chan struct{}, 1)
		s := txService(t, store)
		// The engine writes into a recorder, which the test reads while the
		// server goroutine waits in Commit: nothing may have reached it.
		w := httptest.NewRecorder()
		req := httptest.NewRequest(http.MethodPost, "/orders", strings.NewReader("x"))
		req.Header.Set("Idempotency-Key", suite.Key1)
		req.Header.Set("Authorization", "Bearer u")
		served := make(chan struct{})
		go func() {
			defer close(served)
			s.Srv.Config.Handler.ServeHTTP(w, req)
		}()
		select {
		case <-store.inCommit:
		case <-served:
			t.Fatalf("answered without a commit: %d", w.Code)
		}
		assert.Zero(t, w.Body.Len(), "no byte of the body before the commit")
		assert.Equal(t, http.StatusOK, w.Code, "no status written before the commit (the recorder's default)")
		close(store.commitGate)
		<-served
		assert.Equal(t, http.StatusCreated, w.Code)
		assert.Equal(t, "created", w.Body.String())
		assert.Equal(t, []string{"order"}, store.committed())
		replay := s.Send(s.Client, "/orders", suite.Key1, "x", auth)
		assert.True(t, replay.Replayed())
		assert.Equal(t, "created", replay.Body)
		assert.Equal(t, int32(1), s.Calls.Load())
	})

	t.Run("spec31/a failed commit answers a problem, keeps nothing and frees the key", func(t *testing.T) {
		store := newStore()
		store.failCommit = errors.New("commit failed")
		s := txService(t, store)
		r := s.Send(s.Client, "/orders", suite.Key1, "x", auth)
		assert.Equal(t, http.StatusServiceUnavailable, r.Status)
		assert.Equal(t, idem.ProblemStoreUnavailable, r.Problem(t).Type)
		assert.Empty(t, r.Header.Get("Location"), "nothing of the rolled-back answer is sent")
		assert.Empty(t, store.committed())
		store.failCommit = nil
		assert.Equal(t, http.StatusCreated, s.Send(s.Client, "/orders", suite.Key1, "x", auth).Status, "the retry runs")
		assert.Equal(t, []string{"order"}, store.committed())
	})

	t.Run("spec31/a commit that lost the lease keeps nothing", func(t *testing.T) {
		store := newStore()
		store.failCommit = idem.ErrNotOwner
		s := txService(t, store)
		r := s.Send(s.Client, "/orders", suite.Key1, "x", auth)
		assert.Equal(t, http.StatusServiceUnavailable, r.Status)
		assert.Empty(t, store.committed())
	})

	t.Run("spec31/a 5xx and a panic roll back and free the key", func(t *testing.T) {
		store := newStore()
		s := txService(t, store)
		failed := s.Send(s.Client, "/fail", suite.Key1, "x", auth)
		assert.Equal(t, http.StatusInternalServerError, failed.Status)
		assert.Equal(t, "failed", failed.Body, "the handler's own answer")
		assert.Equal(t, http.StatusInternalServerError, s.Send(s.Client, "/fail", suite.Key1, "x", auth).Status)
		panicked := s.Send(s.Client, "/panic", suite.Key2, "x", auth)
		assert.Equal(t, http.StatusInternalServerError, panicked.Status, "not the half-written 201")
		assert.Empty(t, store.committed())
		assert.Equal(t, int32(3), s.Calls.Load(), "each retry ran: nothing was kept")
	})

	t.Run("spec31/a handler that ignores the transaction works as on any store", func(t *testing.T) {
		store := newStore()
		s := txService(t, store)
		first := s.Send(s.Client, "/plain", suite.Key1, "x", auth)
		assert.Equal(t, http.StatusCreated, first.Status)
		assert.True(t, s.Send(s.Client, "/plain", suite.Key1, "x", auth).Replayed())
		assert.Equal(t, int32(1), s.Calls.Load())
	})
}

// TestSpec31_AFlushedTransactionalResponseIsReplayed: on a TxStore the
// response is held until the commit, so a handler that flushes streams
// nothing, and its response is kept whole and replayed.
func TestSpec31_AFlushedTransactionalResponseIsReplayed(t *testing.T) {
	store := &memoryTxStore{MemoryStore: idem.NewMemoryStore()}
	s := suite.Mount(t, func(r *gin.Engine, s *suite.Served) {
		r.POST("/events", idem.New(idem.WithStore(store)), func(c *gin.Context) {
			s.Calls.Add(1)
			c.Header("Content-Type", "text/plain")
			c.Writer.WriteString("one ")
			c.Writer.Flush()
			c.Writer.WriteString("two")
		})
	})
	first := s.Send(s.Client, "/events", suite.Key1, "x", "Authorization: Bearer u")
	assert.Equal(t, "one two", first.Body)
	replay := s.Send(s.Client, "/events", suite.Key1, "x", "Authorization: Bearer u")
	assert.True(t, replay.Replayed())
	assert.Equal(t, "one two", replay.Body)
	assert.Equal(t, int32(1), s.Calls.Load())
}
