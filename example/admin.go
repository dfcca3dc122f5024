package main

import (
	"errors"
	"net/http"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/ginidem/idempotency"
)

// adminRoutes serves the support runbook's two steps on store (see
// docs/operations.md): look up the record a user's idempotency key left,
// and forget it so that the user's retry runs again. Only users with
// rightAdmin may.
//
//	GET    /api/admin/idempotency/:user/:key
//	DELETE /api/admin/idempotency/:user/:key
func adminRoutes(api *gin.RouterGroup, store idempotency.Store) {
	admin := api.Group("/admin/idempotency/:user/:key", allow(rightAdmin))
	admin.GET("", func(c *gin.Context) {
		rec, err := idempotency.Lookup(c.Request.Context(), store, c.Param("user"), c.Param("key"))
		if !adminFound(c, err) {
			return
		}
		state := "in flight"
		if rec.State == idempotency.Completed {
			state = "completed"
		}
		out := gin.H{"state": state, "method": rec.Method, "path": rec.Path, "expires_at": rec.ExpiresAt.UTC().Format(time.RFC3339)}
		if rec.State == idempotency.Completed {
			out["status"] = rec.Status
			out["location"] = rec.Header.Get("Location")
		}
		if !rec.CreatedAt.IsZero() {
			out["created_at"] = rec.CreatedAt.UTC().Format(time.RFC3339)
		}
		c.JSON(http.StatusOK, out)
	})
	admin.DELETE("", func(c *gin.Context) {
		if adminFound(c, idempotency.Forget(c.Request.Context(), store, c.Param("user"), c.Param("key"))) {
			c.Status(http.StatusNoContent)
		}
	})
}

// adminFound answers a failed lookup or forget and reports whether err was
// nil.
func adminFound(c *gin.Context, err error) bool {
	switch {
	case errors.Is(err, idempotency.ErrNoRecord):
		abortProblem(c, http.StatusNotFound, "no-record", "no record for this user and key: never used, expired, or forgotten")
	case err != nil:
		abortProblem(c, http.StatusServiceUnavailable, "store-unavailable", "the idempotency store did not answer; retry later")
	default:
		return true
	}
	return false
}
