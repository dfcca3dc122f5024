package suite

import (
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/gin-gonic/gin"
	"github.com/stretchr/testify/require"
)

// Served is a real Gin engine behind a real server, with a client that
// keeps cookies and shows the raw Content-Encoding.
type Served struct {
	t      *testing.T
	Srv    *httptest.Server
	Client *http.Client
	Calls  atomic.Int32
}

// Mount serves the engine that build sets up, until the test ends.
func Mount(t *testing.T, build func(r *gin.Engine, s *Served)) *Served {
	t.Helper()
	s := &Served{t: t}
	r := gin.New()
	build(r, s)
	s.Srv = httptest.NewServer(r)
	t.Cleanup(s.Srv.Close)
	s.Client = s.NewClient()
	return s
}

// NewClient is another user agent: its own cookie jar, no transparent gzip.
func (s *Served) NewClient() *http.Client {
	jar, err := cookiejar.New(nil)
	require.NoError(s.t, err)
	return &http.Client{Jar: jar, Transport: &http.Transport{DisableCompression: true}}
}

// Send posts body to path with the key and header lines ("Name: value").
func (s *Served) Send(client *http.Client, path, key, body string, header ...string) Resp {
	s.t.Helper()
	hr, err := http.NewRequest(http.MethodPost, s.Srv.URL+path, strings.NewReader(body))
	require.NoError(s.t, err)
	if key != "" {
		hr.Header.Set("Idempotency-Key", key)
	}
	for _, line := range header {
		if line == "" {
			continue
		}
		name, value, _ := strings.Cut(line, ": ")
		hr.Header.Add(name, value)
	}
	res, err := client.Do(hr)
	require.NoError(s.t, err)
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	require.NoError(s.t, err)
	return Resp{Status: res.StatusCode, Header: res.Header, Body: string(b)}
}

// Create is a handler that creates one resource per run and names the
// caller it ran for.
func (s *Served) Create(c *gin.Context) {
	n := s.Calls.Add(1)
	body, _ := io.ReadAll(c.Request.Body)
	c.Header("Location", "/things/"+strconv.Itoa(int(n)))
	c.JSON(http.StatusCreated, gin.H{"n": n, "user": c.GetString("user_id"), "echo": string(body)})
}
