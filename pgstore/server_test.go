package pgstore_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"
)

func TestMain(m *testing.M) {
	gin.SetMode(gin.TestMode)
	if mode := os.Getenv(crashChildEnv); mode != "" {
		runCrashChild(mode) // never returns: the parent kills it
	}
	code := m.Run()
	sharedPG.stop()
	os.Exit(code)
}

// externalPostgresEnv names a Postgres to test against instead of a
// throwaway server: a connection string of a role that may create schemas.
// Each test keeps to a schema of its own, dropped when it ends.
const externalPostgresEnv = "IDEM_POSTGRES_URL"

// pgServer is the Postgres this test binary runs its tests on: a throwaway
// server (initdb and pg_ctl on a temporary directory and a free loopback
// port), started on first use and stopped when the binary exits, or the
// server IDEM_POSTGRES_URL names.
type pgServer struct {
	dsn   string        // connection string of the postgres database
	admin *pgxpool.Pool // creates and drops the tests' schemas

	watchdog *exec.Cmd // nil for an external server
	guard    *os.File  // write end of the watchdog's stdin
}

// sharedServerState is the one pgServer of this test binary.
type sharedServerState struct {
	once sync.Once
	srv  *pgServer
	skip string
	err  error
}

var sharedPG sharedServerState

// sharedServer returns this binary's Postgres, starting it on first use. It
// skips the test when no Postgres can be had here.
func sharedServer(t testing.TB) *pgServer {
	t.Helper()
	sharedPG.once.Do(func() {
		if dsn := os.Getenv(externalPostgresEnv); dsn != "" {
			sharedPG.srv, sharedPG.err = connectServer(&pgServer{dsn: dsn})
			return
		}
		sharedPG.srv, sharedPG.skip, sharedPG.err = startServer()
	})
	if sharedPG.skip != "" {
		t.Skip(sharedPG.skip)
	}
	require.NoError(t, sharedPG.err, "starting the test Postgres")
	return sharedPG.srv
}

func (p *sharedServerState) stop() {
	if p.srv != nil {
		p.srv.stop()
	}
}

// pgBinDir finds the directory of initdb and pg_ctl: pg_config --bindir,
// then PATH, then Debian's /usr/lib/postgresql/<version>/bin (newest
// first). Debian does not put them on PATH.
func pgBinDir() (string, bool) {
	has := func(dir string) bool {
		for _, name := range []string{"initdb", "pg_ctl"} {
			if fi, err := os.Stat(filepath.Join(dir, name)); err != nil || fi.IsDir() {
				return false
			}
		}
		return true
	}
	if out, err := exec.Command("pg_config", "--bindir").Output(); err == nil {
		if dir := strings.TrimSpace(string(out)); has(dir) {
			return dir, true
		}
	}
	if p, err := exec.LookPath("initdb"); err == nil && has(filepath.Dir(p)) {
		return filepath.Dir(p), true
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	slices.SortFunc(dirs, func(a, b string) int { // by version, newest first
		va, _ := strconv.Atoi(filepath.Base(filepath.Dir(a)))
		vb, _ := strconv.Atoi(filepath.Base(filepath.Dir(b)))
		return vb - va
	})
	for _, dir := range dirs {
		if has(dir) {
			return dir, true
		}
	}
	return "", false
}

// watchdogScript waits for its stdin to close (Stop, or the test binary's
// exit for any reason, SIGKILL included), then stops the server with the
// pg_ctl command given after the directory, and removes the directory.
const watchdogScript = `dir=$1; shift
read -r _
"$@" stop -D "$dir/data" -m immediate -w >/dev/null 2>&1
rm -rf "$dir"
`

// startServer runs initdb and pg_ctl on a temporary directory. As root, it
// runs them as the postgres user (initdb refuses root), on a directory that
// user owns. It returns a skip message when the binaries or the user are
// missing.
func startServer() (*pgServer, string, error) {
	bin, ok := pgBinDir()
	if !ok {
		return nil, "Postgres server binaries (initdb, pg_ctl) not found via pg_config --bindir, PATH or " +
			"/usr/lib/postgresql/*/bin: install them (Debian: apt-get install postgresql) or set " +
			externalPostgresEnv + " to run the Postgres tests", nil
	}
	var as []string // command prefix
	uid, gid := -1, -1
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			return nil, "running as root, and there is no postgres user to run initdb as (initdb refuses root): " +
				"create one, or set " + externalPostgresEnv, nil
		}
		runuser, err := exec.LookPath("runuser")
		if err != nil {
			return nil, "running as root without runuser to run initdb as the postgres user", nil
		}
		uid, _ = strconv.Atoi(u.Uid)
		gid, _ = strconv.Atoi(u.Gid)
		as = []string{runuser, "-u", "postgres", "--"}
	}
	dir, err := os.MkdirTemp("", "pgstore-test-")
	if err != nil {
		return nil, "", err
	}
	if uid >= 0 {
		if err := os.Chown(dir, uid, gid); err != nil {
			os.RemoveAll(dir)
			return nil, "", err
		}
	}
	cmdline := func(name string, args ...string) *exec.Cmd {
		full := append(append(slices.Clone(as), filepath.Join(bin, name)), args...)
		return exec.Command(full[0], full[1:]...)
	}

	// The watchdog first: from here on, whatever happens, the server stops
	// and the directory goes when this binary exits.
	r, w, err := os.Pipe()
	if err != nil {
		os.RemoveAll(dir)
		return nil, "", err
	}
	wd := exec.Command("sh", append([]string{"-c", watchdogScript, "sh", dir}, append(slices.Clone(as), filepath.Join(bin, "pg_ctl"))...)...)
	wd.Stdin = r
	if err := wd.Start(); err != nil {
		r.Close()
		w.Close()
		os.RemoveAll(dir)
		return nil, "", err
	}
	r.Close()
	srv := &pgServer{watchdog: wd, guard: w}

	data := filepath.Join(dir, "data")
	if out, err := cmdline("initdb", "-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-locale", "-N").CombinedOutput(); err != nil {
		srv.stop()
		return nil, "", fmt.Errorf("initdb: %w\n%s", err, out)
	}
	// fsync off: the tests kill clients, never the server, and want speed.
	for attempt := 0; ; attempt++ {
		port, err := freePort()
		if err != nil {
			srv.stop()
			return nil, "", err
		}
		opts := fmt.Sprintf("-p %d -k '%s' -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off -c max_connections=200", port, dir)
		logFile := filepath.Join(dir, "server.log")
		out, err := cmdline("pg_ctl", "start", "-w", "-t", "60", "-D", data, "-l", logFile, "-o", opts).CombinedOutput()
		if err == nil {
			srv.dsn = fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", port)
			break
		}
		if attempt == 2 { // most likely another process took the port first: try a few
			logged, _ := os.ReadFile(logFile)
			srv.stop()
			return nil, "", fmt.Errorf("pg_ctl start: %w\n%s\n%s", err, out, logged)
		}
	}
	s, err := connectServer(srv)
	if err != nil {
		srv.stop()
		return nil, "", err
	}
	return s, "", nil
}

func connectServer(srv *pgServer) (*pgServer, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	admin, err := pgxpool.New(ctx, srv.dsn)
	if err != nil {
		return nil, err
	}
	if err := admin.Ping(ctx); err != nil {
		admin.Close()
		return nil, fmt.Errorf("connecting to %s: %w", redactDSN(srv.dsn), err)
	}
	srv.admin = admin
	return srv, nil
}

// stop stops a throwaway server and removes its directory.
func (s *pgServer) stop() {
	if s.admin != nil {
		s.admin.Close()
	}
	if s.watchdog == nil {
		return
	}
	_ = s.guard.Close() // the watchdog stops the server and exits
	_ = s.watchdog.Wait()
	s.watchdog = nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func redactDSN(dsn string) string {
	if u, err := url.Parse(dsn); err == nil {
		return u.Redacted()
	}
	return "the server"
}

// testRunID tells this binary's schemas from any other run's on a shared
// server.
var testRunID = func() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}()

var schemaSeq atomic.Int64

// testDB is a schema of the test Postgres for one test, and a pool whose
// connections have it as their search_path.
type testDB struct {
	pool   *pgxpool.Pool
	dsn    string // connection string with the schema as search_path, for other processes
	schema string
}

// newTestDB creates a fresh schema for the test, dropped when it ends, and
// a pool on it (opts adjust the pool's configuration).
func newTestDB(t testing.TB, opts ...func(*pgxpool.Config)) *testDB {
	t.Helper()
	srv := sharedServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	schema := fmt.Sprintf("t_%s_%d", testRunID, schemaSeq.Add(1))
	_, err := srv.admin.Exec(ctx, "CREATE SCHEMA "+schema)
	require.NoError(t, err)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_, _ = srv.admin.Exec(ctx, "DROP SCHEMA "+schema+" CASCADE")
	})
	dsn := withSearchPath(srv.dsn, schema)
	cfg, err := pgxpool.ParseConfig(dsn)
	require.NoError(t, err)
	for _, opt := range opts {
		opt(cfg)
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	require.NoError(t, err)
	t.Cleanup(pool.Close) // before the schema is dropped: cleanups run last in, first out
	return &testDB{pool: pool, dsn: dsn, schema: schema}
}

// withSearchPath adds search_path to a URL connection string.
func withSearchPath(dsn, schema string) string {
	u, err := url.Parse(dsn)
	if err != nil || u.Scheme == "" {
		return dsn + " search_path=" + schema // key=value form
	}
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	return u.String()
}

// exec runs sql on the test's schema and fails the test on error.
func (db *testDB) exec(t testing.TB, sql string, args ...any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := db.pool.Exec(ctx, sql, args...)
	require.NoError(t, err, sql)
}

// count returns the number of rows of table in the test's schema.
func (db *testDB) count(t testing.TB, table string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var n int
	require.NoError(t, db.pool.QueryRow(ctx, "SELECT count(*) FROM "+table).Scan(&n))
	return n
}
