package idempotency_test

import (
	"context"
	"fmt"

	idem "github.com/ginidem/idempotency"
)

// A message consumer applies each message once: the queue delivers message
// 7 twice (a redelivery after a lost acknowledgement), and the second
// delivery gets the recorded result instead of a second payment.
func ExampleRunner_Do() {
	runner := idem.NewRunner() // an in-memory store; share a Redis or Postgres store between consumers
	payments := 0
	pay := func(ctx context.Context, _ idem.Tx) ([]byte, error) {
		payments++
		return []byte(fmt.Sprintf("payment %d", payments)), nil
	}
	for _, delivery := range []string{"7", "7", "8"} {
		call := idem.Call{Scope: "payments", Key: "msg-" + delivery, Payload: []byte("pay 10 EUR for order " + delivery)}
		res, err := runner.Do(context.Background(), call, pay)
		if err != nil {
			fmt.Println("error:", err)
			continue
		}
		fmt.Printf("message %s: %s replayed=%v\n", delivery, res.Value, res.Replayed)
	}
	fmt.Println("payments:", payments)
	// Output:
	// message 7: payment 1 replayed=false
	// message 7: payment 1 replayed=true
	// message 8: payment 2 replayed=false
	// payments: 2
}

// A job that reserves stock returns a value: DoValue keeps it as JSON and
// gives the same reservation, decoded, to the job's second start.
func ExampleDoValue() {
	type reservation struct {
		ID    string
		Items int
	}
	runner := idem.NewRunner()
	reserved := 0
	reserve := func(ctx context.Context, _ idem.Tx) (reservation, error) {
		reserved++
		return reservation{ID: fmt.Sprintf("r-%d", reserved), Items: 3}, nil
	}
	call := idem.Call{Scope: "jobs", Key: "nightly-2026-12-06", Payload: []byte("reserve 3")}
	for range 2 {
		r, replayed, err := idem.DoValue(context.Background(), runner, call, idem.JSONCodec{}, reserve)
		if err != nil {
			fmt.Println("error:", err)
			continue
		}
		fmt.Printf("%+v replayed=%v\n", r, replayed)
	}
	fmt.Println("reserved:", reserved)
	// Output:
	// {ID:r-1 Items:3} replayed=false
	// {ID:r-1 Items:3} replayed=true
	// reserved: 1
}
