package idempotency_test

import (
	"context"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/redis/go-redis/v9"
)

// commandCounter is a go-redis hook that counts what a client sends: round
// trips (one per command sent alone, one per pipeline) and the commands in
// them, by name. It counts on the client's side, so it works on every
// Redis kind; evalDelta (redis_helpers_test.go) counts the scripts that a
// real redis-server ran.
type commandCounter struct {
	mu    sync.Mutex
	trips int
	names map[string]int
}

// countCommands adds a counter to client. Add it before the client sends
// anything that a test counts.
func countCommands(client *redis.Client) *commandCounter {
	c := &commandCounter{names: map[string]int{}}
	client.AddHook(c)
	return c
}

func (c *commandCounter) DialHook(next redis.DialHook) redis.DialHook { return next }

func (c *commandCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		c.add(cmd)
		return next(ctx, cmd)
	}
}

func (c *commandCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		c.add(cmds...)
		return next(ctx, cmds)
	}
}

func (c *commandCounter) add(cmds ...redis.Cmder) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.trips++
	for _, cmd := range cmds {
		c.names[cmd.Name()]++
	}
}

// sent is what the client sent while step ran: its round trips, and its
// commands as "name×count" in name order, e.g. "evalsha×1 set×1".
type sent struct {
	trips    int
	commands string
}

func (c *commandCounter) during(step func()) sent {
	c.mu.Lock()
	trips, before := c.trips, make(map[string]int, len(c.names))
	for k, v := range c.names {
		before[k] = v
	}
	c.mu.Unlock()
	step()
	c.mu.Lock()
	defer c.mu.Unlock()
	var names []string
	for name, n := range c.names {
		if n > before[name] {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	parts := make([]string, len(names))
	for i, name := range names {
		parts[i] = name + "×" + strconv.Itoa(c.names[name]-before[name])
	}
	return sent{trips: c.trips - trips, commands: strings.Join(parts, " ")}
}

var _ redis.Hook = (*commandCounter)(nil)
