package idempotency_test

import (
	"bufio"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	idem "github.com/ginidem/idempotency"
	"github.com/ginidem/idempotency/internal/suite"
)

// The child process of TestSpec10_ProcessKilledMidRequest: a Gin service on
// a Redis store whose handler never returns. It prints its address, then
// "entered" when the handler runs, and waits to be killed.
func TestSpec10_KilledChildProcess(t *testing.T) {
	addr := os.Getenv("IDEM_KILL_CHILD_REDIS")
	if addr == "" {
		t.Skip("the child process of TestSpec10_ProcessKilledMidRequest; runs only as that child")
	}
	client := redis.NewClient(&redis.Options{Addr: addr, ContextTimeoutEnabled: true})
	store := idem.NewRedisStore(client, idem.WithRedisKeyPrefix(os.Getenv("IDEM_KILL_CHILD_PREFIX")))
	r := gin.New()
	r.POST("/pay", idem.New(idem.WithStore(store)), func(c *gin.Context) {
		os.Stdout.WriteString("entered\n")
		select {} // killed here
	})
	srv := httptest.NewServer(r)
	os.Stdout.WriteString(srv.URL + "\n")
	select {}
}

// TestSpec10_ProcessKilledMidRequest: a process is killed with SIGKILL while
// its handler runs. Before the lease ends, a retry on another process gets
// 409; after it, the retry runs the handler once, and later retries replay.
func TestSpec10_ProcessKilledMidRequest(t *testing.T) {
	target := redisTargets(false)[0] // a real redis-server where installed
	client, prefix, advance := target.open(t)
	single, ok := client.(*redis.Client)
	require.True(t, ok)

	child := exec.Command(os.Args[0], "-test.run=^TestSpec10_KilledChildProcess$")
	child.Env = append(os.Environ(), "IDEM_KILL_CHILD_REDIS="+single.Options().Addr, "IDEM_KILL_CHILD_PREFIX="+prefix)
	out, err := child.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, child.Start())
	t.Cleanup(func() { _ = child.Process.Kill(); _ = child.Wait() })
	lines := bufio.NewScanner(out)
	require.True(t, lines.Scan(), "the child prints its address")
	childURL := strings.TrimSpace(lines.Text())

	send := func(url string) *http.Response {
		hr, _ := http.NewRequest("POST", url+"/pay", strings.NewReader(`{"amount":1}`))
		hr.Header.Set("Idempotency-Key", suite.Key1)
		hr.Header.Set("Authorization", suite.DefaultAuth)
		res, err := http.DefaultClient.Do(hr)
		if err != nil {
			return nil
		}
		res.Body.Close()
		return res
	}
	go send(childURL) // never answered: the child dies in the handler
	require.True(t, lines.Scan())
	require.Equal(t, "entered", lines.Text())
	require.NoError(t, child.Process.Kill()) // SIGKILL
	_ = child.Wait()

	var runs atomic.Int32
	r := gin.New()
	r.POST("/pay", idem.New(idem.WithStore(idem.NewRedisStore(client, idem.WithRedisKeyPrefix(prefix)))), func(c *gin.Context) {
		runs.Add(1)
		c.String(http.StatusCreated, "paid")
	})
	survivor := httptest.NewServer(r)
	defer survivor.Close()

	res := send(survivor.URL)
	require.NotNil(t, res)
	assert.Equal(t, http.StatusConflict, res.StatusCode, "the dead process's lease still holds the key")
	assert.Equal(t, "1", res.Header.Get("Retry-After"))

	advance(time.Minute + time.Second) // the lease (1 min) ends: nobody renews it
	res = send(survivor.URL)
	require.NotNil(t, res)
	assert.Equal(t, http.StatusCreated, res.StatusCode)
	assert.Empty(t, res.Header.Get("Idempotent-Replayed"))
	res = send(survivor.URL)
	assert.Equal(t, "true", res.Header.Get("Idempotent-Replayed"))
	assert.Equal(t, int32(1), runs.Load())
}
