package pgstore_test

import (
	"context"
	"fmt"
	"log"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ginidem/idempotency"
	"github.com/ginidem/idempotency/pgstore"
)

// A service whose orders and idempotency records live in one Postgres
// database: the handler inserts the order through the request's
// transaction, so the order and the recorded response commit together.
func Example() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL"))
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()
	store := pgstore.New(pool)
	if err := store.Migrate(ctx); err != nil {
		log.Fatal(err)
	}

	r := gin.New()
	r.Use(gin.Recovery())
	r.Use(idempotency.New(idempotency.WithStore(store), idempotency.RequireKey()))
	r.POST("/orders", func(c *gin.Context) {
		tx := pgstore.Tx(c) // the request's transaction
		if tx == nil {      // only when the store failed and WithFailOpen let the request run
			c.AbortWithStatus(http.StatusServiceUnavailable)
			return
		}
		var id int64
		err := tx.QueryRow(c.Request.Context(), "INSERT INTO orders (item) VALUES ($1) RETURNING id", c.PostForm("item")).Scan(&id)
		if err != nil {
			c.AbortWithStatus(http.StatusInternalServerError) // a 5xx: rolled back, the key released
			return
		}
		c.Header("Location", fmt.Sprintf("/orders/%d", id))
		c.JSON(http.StatusCreated, gin.H{"id": id}) // sent once the order and its record have committed
	})
	_ = r.Run("127.0.0.1:8080")
}

// The SQL that Migrate runs, for a migration tool of your own. Building a
// pool does not connect, so this example runs without a server.
func ExampleStore_Schema() {
	pool, err := pgxpool.New(context.Background(), "postgres://app@127.0.0.1:5432/app")
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()
	fmt.Print(pgstore.New(pool).Schema())
	// Output:
	// CREATE TABLE IF NOT EXISTS "idempotency_records" (
	//     key          text        PRIMARY KEY,
	//     state        smallint    NOT NULL,
	//     token        uuid        NOT NULL,
	//     fingerprint  bytea       NOT NULL,
	//     method       text        NOT NULL,
	//     path         text        NOT NULL,
	//     status       integer     NOT NULL DEFAULT 0,
	//     header       bytea,
	//     body         bytea,
	//     body_omitted boolean     NOT NULL DEFAULT false,
	//     expires_at   timestamptz NOT NULL,
	//     created_at   timestamptz NOT NULL DEFAULT statement_timestamp()
	// );
	// CREATE INDEX IF NOT EXISTS "idempotency_records_expires_at_idx" ON "idempotency_records" (expires_at);
}

// A table name of your own must be a plain identifier; New panics on any
// other.
func ExampleWithTable() {
	pool, err := pgxpool.New(context.Background(), "postgres://app@127.0.0.1:5432/app")
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()
	schema := pgstore.New(pool, pgstore.WithTable("orders_idempotency")).Schema()
	fmt.Println(schema[:strings.Index(schema, "\n")])

	defer func() { fmt.Println(recover()) }()
	pgstore.New(pool, pgstore.WithTable("orders; DROP TABLE orders"))
	// Output:
	// CREATE TABLE IF NOT EXISTS "orders_idempotency" (
	// pgstore: table name "orders; DROP TABLE orders" is not a plain identifier (lower-case letters, digits, underscores)
}

// Expired rows are free for the next request with their key already;
// Sweep reclaims their space. The store starts no goroutine: this one is
// yours, and stops with its context.
func ExampleStore_Sweep() {
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL"))
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()
	store := pgstore.New(pool)

	go func() {
		tick := time.NewTicker(time.Minute)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			for { // batches of 1,000 until none is left
				n, err := store.Sweep(ctx, 1000)
				if err != nil {
					log.Printf("idempotency sweep: %v", err)
					break
				}
				if n < 1000 {
					break
				}
			}
		}
	}()
}

// A handler that runs with or without a key: with one, it writes through
// the request's transaction, which the middleware commits with the record;
// without, through a transaction of its own.
func ExampleTx() {
	var pool *pgxpool.Pool // your pool
	debit := func(ctx context.Context, tx pgx.Tx, account string) error {
		_, err := tx.Exec(ctx, "UPDATE accounts SET balance = balance - 10 WHERE id = $1", account)
		return err
	}
	r := gin.New()
	r.POST("/accounts/:id/debit", idempotency.New(idempotency.WithStore(pgstore.New(pool))), func(c *gin.Context) {
		ctx := c.Request.Context()
		if tx := pgstore.Tx(c); tx != nil {
			if err := debit(ctx, tx, c.Param("id")); err != nil {
				c.AbortWithStatus(http.StatusInternalServerError) // rolled back, the key released
				return
			}
			c.Status(http.StatusNoContent) // sent after the middleware's commit
			return
		}
		own, err := pool.Begin(ctx) // no key: nothing to commit with
		if err != nil {
			c.AbortWithStatus(http.StatusServiceUnavailable)
			return
		}
		defer own.Rollback(ctx) // does nothing after Commit
		if err := debit(ctx, own, c.Param("id")); err != nil {
			c.AbortWithStatus(http.StatusInternalServerError)
			return
		}
		if err := own.Commit(ctx); err != nil {
			c.AbortWithStatus(http.StatusServiceUnavailable)
			return
		}
		c.Status(http.StatusNoContent)
	})
}
