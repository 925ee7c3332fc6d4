package agent

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// etcdCluster is three Debian etcd members on loopback, the baseline the
// write benchmarks compare Raft writes against: plain HTTP between members
// and to clients, every other flag at its default (heartbeat 100 ms,
// election 1 s, an fsync per WAL batch as the agent's bolt log does).
type etcdCluster struct {
	clientURLs []string
	pids       []int
	http       *http.Client // HTTP/1.1 keep-alive, for the JSON gateway
	grpc       *http.Client // HTTP/2 without TLS, for gRPC
}

// startEtcd starts the members and waits until they agree on a leader. It
// skips without /usr/bin/etcd (Debian etcd-server), or fails where the lab
// is required.
func startEtcd(tb testing.TB, n int) *etcdCluster {
	tb.Helper()
	bin, err := exec.LookPath("etcd")
	if err != nil {
		if os.Getenv("RUNOS_LAB_REQUIRED") == "1" {
			tb.Fatalf("etcd not found (Debian: apt-get install etcd-server): %v", err)
		}
		tb.Skipf("etcd not found (Debian: apt-get install etcd-server; scripts/test-deps.sh installs it): %v", err)
	}
	dir := tb.TempDir()
	names := make([]string, n)
	peers, clients := make([]string, n), make([]string, n)
	var initial []string
	var pids []int
	for i := range n {
		names[i] = fmt.Sprintf("m%d", i)
		peers[i] = "http://" + freeLoopbackPort(tb)
		clients[i] = "http://" + freeLoopbackPort(tb)
		initial = append(initial, names[i]+"="+peers[i])
	}
	for i := range n {
		logf, err := os.Create(filepath.Join(dir, names[i]+".log"))
		if err != nil {
			tb.Fatal(err)
		}
		cmd := exec.Command(bin,
			"--name", names[i],
			"--data-dir", filepath.Join(dir, names[i]),
			"--listen-peer-urls", peers[i], "--initial-advertise-peer-urls", peers[i],
			"--listen-client-urls", clients[i], "--advertise-client-urls", clients[i],
			"--initial-cluster", strings.Join(initial, ","),
			"--initial-cluster-token", "runos-bench", "--initial-cluster-state", "new")
		cmd.Stdout, cmd.Stderr = logf, logf
		// Its own process group, so a Go test killed mid-run does not
		// leave the member holding the terminal's signals.
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := cmd.Start(); err != nil {
			logf.Close()
			tb.Fatalf("start etcd %s: %v", names[i], err)
		}
		pids = append(pids, cmd.Process.Pid)
		tb.Cleanup(func() {
			cmd.Process.Signal(syscall.SIGTERM)
			done := make(chan struct{})
			go func() { cmd.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				cmd.Process.Kill()
				<-done
			}
			logf.Close()
		})
	}
	e := &etcdCluster{clientURLs: clients, pids: pids, http: &http.Client{Transport: &http.Transport{
		// One keep-alive connection per client goroutine: the benchmark
		// runs up to 64 against one member.
		MaxIdleConnsPerHost: 128,
		MaxConnsPerHost:     0,
	}, Timeout: 30 * time.Second}}
	h2 := new(http.Protocols)
	h2.SetUnencryptedHTTP2(true)
	e.grpc = &http.Client{Transport: &http.Transport{Protocols: h2}, Timeout: 30 * time.Second}
	tb.Cleanup(e.http.CloseIdleConnections)
	tb.Cleanup(e.grpc.CloseIdleConnections)
	deadline := time.Now().Add(60 * time.Second)
	for {
		_, err := e.leader()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			tb.Fatalf("etcd: no leader after 60 s: %v (logs in %s)", err, dir)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return e
}

func freeLoopbackPort(tb testing.TB) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// call posts a JSON body to one member's v3 gateway and decodes the answer.
func (e *etcdCluster) call(ctx context.Context, member int, path string, in, out any) error {
	body, err := json.Marshal(in)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, e.clientURLs[member]+path, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := e.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("etcd %s: %s: %s", path, resp.Status, bytes.TrimSpace(raw))
	}
	if out == nil {
		return nil
	}
	return json.Unmarshal(raw, out)
}

// leader returns the index of the member that leads, asking each member
// whom it follows; all must agree.
func (e *etcdCluster) leader() (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	var leaderID string
	idx := -1
	for i := range e.clientURLs {
		var st struct {
			Header struct {
				MemberID string `json:"member_id"`
			} `json:"header"`
			Leader string `json:"leader"`
		}
		if err := e.call(ctx, i, "/v3/maintenance/status", struct{}{}, &st); err != nil {
			return -1, err
		}
		if st.Leader == "" || st.Leader == "0" || (leaderID != "" && st.Leader != leaderID) {
			return -1, fmt.Errorf("member %d follows %q, others %q", i, st.Leader, leaderID)
		}
		leaderID = st.Leader
		if st.Header.MemberID == st.Leader {
			idx = i
		}
	}
	if idx < 0 {
		return -1, errors.New("no member says it leads")
	}
	return idx, nil
}

// put writes value under key through member's gRPC API, as etcd's own
// client does: one HTTP/2 connection, a stream per call. The request is
// etcdserverpb.PutRequest with its key (field 1) and value (field 2) only,
// encoded here so that the benchmark needs no etcd client module.
func (e *etcdCluster) put(ctx context.Context, member int, key string, value []byte) error {
	msg := protoBytes(protoBytes(nil, 1, []byte(key)), 2, value)
	frame := make([]byte, 5, 5+len(msg)) // uncompressed, then the length
	binary.BigEndian.PutUint32(frame[1:], uint32(len(msg)))
	frame = append(frame, msg...)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, e.clientURLs[member]+"/etcdserverpb.KV/Put", bytes.NewReader(frame))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/grpc")
	req.Header.Set("TE", "trailers")
	resp, err := e.grpc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		return err
	}
	status, message := resp.Trailer.Get("Grpc-Status"), resp.Trailer.Get("Grpc-Message")
	if status == "" { // a trailers-only answer: an error before any message
		status, message = resp.Header.Get("Grpc-Status"), resp.Header.Get("Grpc-Message")
	}
	if resp.StatusCode != http.StatusOK || status != "0" {
		return fmt.Errorf("etcd put: HTTP %s, grpc-status %q: %s", resp.Status, status, message)
	}
	return nil
}

// protoBytes appends a length-delimited protobuf field.
func protoBytes(b []byte, field int, v []byte) []byte {
	b = binary.AppendUvarint(b, uint64(field)<<3|2)
	b = binary.AppendUvarint(b, uint64(len(v)))
	return append(b, v...)
}

// putJSON writes value under key through member's v3 JSON gateway.
func (e *etcdCluster) putJSON(ctx context.Context, member int, key string, value []byte) error {
	return e.call(ctx, member, "/v3/kv/put", map[string]string{
		"key":   base64.StdEncoding.EncodeToString([]byte(key)),
		"value": base64.StdEncoding.EncodeToString(value),
	}, nil)
}

// cpu is the CPU time the members have used so far.
func (e *etcdCluster) cpu() time.Duration {
	var total time.Duration
	for _, pid := range e.pids {
		total += procCPU(pid)
	}
	return total
}

// procCPU reads a process's user+system time from /proc (0 if it is gone).
func procCPU(pid int) time.Duration {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command name, which is in parentheses and may hold
	// spaces: state is field 3, utime 14 and stime 15.
	_, rest, ok := bytes.Cut(raw, []byte(") "))
	if !ok {
		return 0
	}
	f := strings.Fields(string(rest))
	if len(f) < 13 {
		return 0
	}
	var ticks int64
	for _, s := range f[11:13] {
		var v int64
		fmt.Sscan(s, &v)
		ticks += v
	}
	return time.Duration(ticks) * time.Second / clockTicks
}

// clockTicks is USER_HZ, 100 on every Linux Go supports.
const clockTicks = 100

// selfCPU is this process's user+system time.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
