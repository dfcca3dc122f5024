// Package pgstore is a Postgres store for the idempotency middleware
// (github.com/ginidem/idempotency), built on pgx and pgxpool: the store
// whose records live in the application's own database, so that a
// handler's writes and the record of its response commit in one
// transaction.
//
// # Setting up
//
//	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL"))
//	...
//	store := pgstore.New(pool)
//	if err := store.Migrate(ctx); err != nil { // CREATE TABLE IF NOT EXISTS ...
//		...
//	}
//	r.Use(idempotency.New(idempotency.WithStore(store)))
//
// [Store.Schema] returns the SQL that Migrate runs, for a migration tool
// of your own. Expired rows are free for the next request with their key;
// [Store.Sweep] deletes them, in bounded batches, from a ticker of yours:
// the store starts no goroutine.
//
// # What each kind of handler gets
//
// A handler that writes through the request's transaction, [Tx], gets
// exactly-once effects. Its writes and the completed record commit
// together, in one transaction, after the handler returns and before the
// client receives anything; the record is written by an UPDATE fenced by
// the key's token, and an UPDATE that finds the key no longer owned rolls
// everything back. A crash at any point, a lost lease or a failed commit
// leaves both or neither: a retry never repeats an effect that committed
// (it gets the committed response again), and no client is told of a
// success that rolled back (a failed commit is answered with a problem and
// the key is released, so the retry runs again). The response of such a
// request is held until the commit, up to the middleware's response cap;
// a larger one commits first, then streams, and is kept without a body.
//
// The transaction opens at the handler's first statement through [Tx], on
// a connection of the pool that it holds until the commit, and it holds
// the key by an advisory lock, so the lease needs no renewal meanwhile. At
// most all but one of the pool's connections hold request transactions at
// once (see [WithMaxTransactions]), so the store's own statements and the
// handler's reads through the pool always find one. A handler whose
// statement failed (a unique violation) answers as usual: its writes are
// rolled back and its answer is kept alone.
//
//	r.POST("/orders", idempotency.New(idempotency.WithStore(store), idempotency.RequireKey()),
//		func(c *gin.Context) {
//			tx := pgstore.Tx(c) // nil only without a key, which RequireKey refuses, or when failing open
//			if tx == nil {
//				c.AbortWithStatus(http.StatusServiceUnavailable)
//				return
//			}
//			if _, err := tx.Exec(c.Request.Context(), "INSERT INTO orders (id) VALUES ($1)", id); err != nil {
//				c.AbortWithStatus(http.StatusInternalServerError) // a 5xx: rolled back, key released
//				return
//			}
//			c.JSON(http.StatusCreated, gin.H{"id": id})
//		})
//
// A handler that does not use the transaction (it writes elsewhere, or
// through the pool) gets the same guarantee as with the other stores:
// duplicates never run concurrently and get the recorded response once it
// is stored, but a process that dies after the handler's effect and before
// the record is written leaves the key in flight, and a retry one lease
// later runs the handler again. Keep the key in a unique column
// (idempotency.Key) to close that window for such a handler.
//
// # Costs
//
// Acquiring a key is one statement (INSERT ... ON CONFLICT ... RETURNING),
// one round trip; so are Complete, Release, Extend and Delete. A
// transactional request adds BEGIN with the key's lock (one round trip, at
// the handler's first statement), and its record is written by an UPDATE
// and a COMMIT in the handler's transaction: four round trips besides the
// handler's own statements, where a handler that runs without the
// middleware and writes in autocommit makes one. A replay costs one round
// trip, or none when this process's bounded local cache holds the record
// (see [WithLocalCache]).
//
// # Time
//
// Leases and record lifetimes are computed by Postgres on the database's
// clock (statement_timestamp()), so the replicas of a service need not
// agree on the time; only the local cache reads the process's clock, for
// the remaining life of a record it read. [WithClock] shifts the database's
// clock for tests.
package pgstore
