// Package pgtest gives tests a real Postgres: a throwaway server (initdb
// and pg_ctl on a temporary directory and a free loopback port), shared by
// the tests of one test binary and stopped when it exits, or the server
// that IDEM_POSTGRES_URL names. Each test works in a schema of its own (see
// [NewDB]). Only tests import it.
//
// Debian puts initdb and pg_ctl in /usr/lib/postgresql/<version>/bin, off
// PATH; [Shared] finds them with pg_config --bindir. initdb refuses to run
// as root, so as root the server runs as the postgres user (runuser), on a
// directory that user owns. Without the binaries (or, as root, without the
// postgres user) the tests skip, and the message says what to install;
// with IDEM_REQUIRE_POSTGRES set, as in CI, they fail instead.
package pgtest

import (
	"context"
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
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// URLEnv names a Postgres to test against instead of a throwaway server:
// a connection string of a role that may create schemas. Each test keeps to
// a schema of its own, dropped when it ends.
const URLEnv = "IDEM_POSTGRES_URL"

// RequireEnv, when set to anything, turns the skip of a test that finds no
// Postgres into a failure, so that a CI run cannot pass without running
// them (.ci/run sets it).
const RequireEnv = "IDEM_REQUIRE_POSTGRES"

// Server is the Postgres the tests of this binary run on.
type Server struct {
	// DSN is the connection string of the server's postgres database.
	DSN string
	// Admin is a pool on DSN, for creating and dropping the tests' schemas.
	Admin *pgxpool.Pool

	watchdog *exec.Cmd // nil for an external server
	guard    *os.File  // write end of the watchdog's stdin
}

// shared is the one Server of this test binary, started on first use.
var shared struct {
	once sync.Once
	srv  *Server
	skip string
	err  error
}

// Shared returns this test binary's Postgres, starting a throwaway server
// on first use (or connecting to the one IDEM_POSTGRES_URL names). It skips
// the test, with the reason, when no Postgres can be had here (it fails it
// when IDEM_REQUIRE_POSTGRES is set).
func Shared(t testing.TB) *Server {
	t.Helper()
	shared.once.Do(func() {
		if dsn := os.Getenv(URLEnv); dsn != "" {
			shared.srv, shared.err = connect(&Server{DSN: dsn})
			return
		}
		shared.srv, shared.skip, shared.err = start()
	})
	if shared.skip != "" {
		if os.Getenv(RequireEnv) != "" {
			t.Fatalf("%s is set, but: %s", RequireEnv, shared.skip)
		}
		t.Skip(shared.skip)
	}
	if shared.err != nil {
		t.Fatalf("starting the test Postgres: %v", shared.err)
	}
	return shared.srv
}

// StopShared stops the throwaway server, if one was started, and removes
// its directory. Call it from TestMain after m.Run; a binary that exits
// without it (a panic, a SIGKILL) has its server stopped by a watchdog.
func StopShared() {
	if shared.srv != nil {
		shared.srv.stop()
	}
}

// BinDir finds the directory of initdb and pg_ctl: pg_config --bindir,
// then PATH, then Debian's /usr/lib/postgresql/<version>/bin (newest
// first). Debian does not put them on PATH.
func BinDir() (string, bool) {
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

// watchdogScript waits for its stdin to close (stop, or the test binary's
// exit for any reason, SIGKILL included), then stops the server with the
// pg_ctl command given after the directory, and removes the directory.
const watchdogScript = `dir=$1; shift
read -r _
"$@" stop -D "$dir/data" -m immediate -w >/dev/null 2>&1
rm -rf "$dir"
`

// start runs initdb and pg_ctl on a temporary directory. As root, it runs
// them as the postgres user (initdb refuses root), on a directory that user
// owns. It returns a skip message when the binaries or the user are
// missing.
func start() (*Server, string, error) {
	bin, ok := BinDir()
	if !ok {
		return nil, "Postgres server binaries (initdb, pg_ctl) not found via pg_config --bindir, PATH or " +
			"/usr/lib/postgresql/*/bin: install them (Debian: apt-get install postgresql) or set " +
			URLEnv + " to run the Postgres tests", nil
	}
	var as []string // command prefix
	uid, gid := -1, -1
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			return nil, "running as root, and there is no postgres user to run initdb as (initdb refuses root): " +
				"create one (apt-get install postgresql does), or set " + URLEnv, nil
		}
		runuser, err := exec.LookPath("runuser")
		if err != nil {
			return nil, "running as root without runuser to run initdb as the postgres user", nil
		}
		uid, _ = strconv.Atoi(u.Uid)
		gid, _ = strconv.Atoi(u.Gid)
		as = []string{runuser, "-u", "postgres", "--"}
	}
	dir, err := os.MkdirTemp("", "pgtest-")
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
	srv := &Server{watchdog: wd, guard: w}

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
			srv.DSN = fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", port)
			break
		}
		if attempt == 2 { // most likely another process took the port first: try a few
			logged, _ := os.ReadFile(logFile)
			srv.stop()
			return nil, "", fmt.Errorf("pg_ctl start: %w\n%s\n%s", err, out, logged)
		}
	}
	s, err := connect(srv)
	if err != nil {
		srv.stop()
		return nil, "", err
	}
	return s, "", nil
}

// connect opens the admin pool of srv and checks that the server answers.
func connect(srv *Server) (*Server, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	admin, err := pgxpool.New(ctx, srv.DSN)
	if err != nil {
		return nil, err
	}
	if err := admin.Ping(ctx); err != nil {
		admin.Close()
		return nil, fmt.Errorf("connecting to %s: %w", redactDSN(srv.DSN), err)
	}
	srv.Admin = admin
	return srv, nil
}

// stop closes the admin pool, stops a throwaway server and removes its
// directory.
func (s *Server) stop() {
	if s.Admin != nil {
		s.Admin.Close()
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
