package e2e

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/runos/runos-agent/e2e/lab"
)

// iperfSeconds is how long each iperf3 measurement runs.
const iperfSeconds = 5

// BenchmarkWGThroughput measures one TCP flow (iperf3, iperfSeconds long)
// between two namespaces on one LAN, three ways in the same invocation so
// the figures sit side by side:
//
//   - veth-Mbps: the raw veth/bridge path between the hosts' addresses;
//   - runos-Mbps: over wg0 of a 2-node runos-agent cluster in kernel mode
//     (wireguard-go on a TUN, on our nat.Bind), between the mesh IPs;
//   - wggo-Mbps: over the reference wireguard-go binary from the same module
//     with its standard bind, configured with Debian's `wg`.
//
// and the ratios runos/wggo and runos/veth. It needs iperf3 and wg
// (scripts/test-deps.sh); without them it skips, unless the lab is required
// (CI=true or RUNOS_LAB_REQUIRED=1), where it fails.
func BenchmarkWGThroughput(b *testing.B) {
	for _, tool := range []string{"iperf3", "wg"} {
		if _, err := exec.LookPath(tool); err != nil {
			if lab.Required() {
				b.Fatalf("%s not found (run scripts/test-deps.sh as root)", tool)
			}
			b.Skipf("%s not found: skipping (run scripts/test-deps.sh as root)", tool)
		}
	}
	c := newCluster(b, "10.96.0.0/24", "ta", "tb")
	// The reference binary: wireguard-go's main package, at the version in
	// go.mod.
	wggo := filepath.Join(b.TempDir(), "wireguard-go")
	if out, err := exec.Command("go", "build", "-o", wggo, "golang.zx2c4.com/wireguard").CombinedOutput(); err != nil {
		b.Fatalf("building wireguard-go: %v\n%s", err, out)
	}
	ta, tb := c.node("ta"), c.node("tb")
	tb.host.Start(b, "iperf3-server", "iperf3", "-s")
	// The first client must not race the server to its port.
	c.eventually(10*time.Second, "iperf3 server listens", func() error {
		out, err := tb.host.Run("ss", "-Hltn", "sport = :5201")
		if err == nil && !strings.Contains(out, ":5201") {
			err = fmt.Errorf("not listening yet")
		}
		return err
	})

	var veth, runos, ref float64
	for range b.N {
		b.StopTimer()
		// (a) raw veth.
		veth += iperf(b, c, ta.host, tb.host.Addr())

		// (b) runos-agent wg0.
		ta.initCluster()
		ta.start()
		waitInitialised(ta)
		tb.join(ta)
		tb.start()
		c.eventually(60*time.Second, "2-node cluster formed", func() error {
			return c.formed(c.nodes, nil, nil)
		})
		st, err := tb.status()
		if err != nil {
			c.fatalf("%v", err)
		}
		meshIP, err := netip.ParseAddr(st.MeshIP)
		if err != nil {
			c.fatalf("tb mesh IP %q: %v", st.MeshIP, err)
		}
		runos += iperf(b, c, ta.host, meshIP)
		ta.kill()
		tb.kill()
		// A fresh cluster next iteration.
		for _, n := range c.nodes {
			if err := os.RemoveAll(n.dir); err != nil {
				b.Fatal(err)
			}
		}

		// (c) reference wireguard-go with its standard bind.
		ref += wgGoThroughput(b, c, wggo, ta.host, tb.host)
	}
	n := float64(b.N)
	veth, runos, ref = veth/n, runos/n, ref/n
	b.ReportMetric(veth, "veth-Mbps")
	b.ReportMetric(runos, "runos-Mbps")
	b.ReportMetric(ref, "wggo-Mbps")
	b.ReportMetric(runos/ref, "runos/wggo")
	b.ReportMetric(runos/veth, "runos/veth")
}

// iperf runs one iperf3 TCP flow from h to the server at to and returns
// what the receiver got, in Mbit/s.
func iperf(b *testing.B, c *cluster, h *lab.Host, to netip.Addr) float64 {
	b.Helper()
	out, err := h.Run("iperf3", "-c", to.String(), "-t", fmt.Sprint(iperfSeconds), "-J")
	bps, _, err := iperfResult(out, err)
	if err != nil {
		c.fatalf("iperf3 from %s to %v: %v", h.Name(), to, err)
	}
	mbps := bps / 1e6
	b.Logf("iperf3 %s -> %v: %.0f Mbit/s", h.Name(), to, mbps)
	return mbps
}

// iperfResult reads the JSON report of an iperf3 client (-J), run with
// error runErr: what the receiver got, in bits/s and bytes.
func iperfResult(out string, runErr error) (bitsPerSecond float64, bytes uint64, err error) {
	var res struct {
		End struct {
			SumReceived struct {
				Bytes         uint64  `json:"bytes"`
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
		Error string `json:"error"`
	}
	// -J prints one JSON object; anything before it (warnings) is skipped.
	js := out
	if i := strings.Index(js, "{"); i >= 0 {
		js = js[i:]
	}
	jerr := json.Unmarshal([]byte(js), &res)
	if jerr != nil || runErr != nil || res.Error != "" || res.End.SumReceived.BitsPerSecond <= 0 {
		return 0, 0, fmt.Errorf("%v %v %s: %q", runErr, jerr, res.Error, out)
	}
	return res.End.SumReceived.BitsPerSecond, res.End.SumReceived.Bytes, nil
}

// wgGoThroughput brings up the reference wireguard-go between x and y
// (10.77.0.1 and .2, UDP port 51821), measures iperf3 from x to y over it,
// and tears it down.
func wgGoThroughput(b *testing.B, c *cluster, bin string, x, y *lab.Host) float64 {
	b.Helper()
	dir := b.TempDir()
	type side struct {
		h        *lab.Host
		ifname   string
		key, pub string
		addr     netip.Addr
	}
	// wireguard-go's UAPI socket is /var/run/wireguard/IFNAME.sock, outside
	// the namespaces: names unique to this process and side keep two
	// instances (and parallel runs) apart.
	sides := []*side{
		{h: x, ifname: fmt.Sprintf("wg%da", os.Getpid()%1000000), addr: netip.MustParseAddr("10.77.0.1")},
		{h: y, ifname: fmt.Sprintf("wg%db", os.Getpid()%1000000), addr: netip.MustParseAddr("10.77.0.2")},
	}
	for _, s := range sides {
		priv, err := exec.Command("wg", "genkey").Output()
		if err != nil {
			b.Fatalf("wg genkey: %v", err)
		}
		s.key = filepath.Join(dir, s.ifname+".key")
		if err := os.WriteFile(s.key, priv, 0o600); err != nil {
			b.Fatal(err)
		}
		cmd := exec.Command("wg", "pubkey")
		cmd.Stdin = strings.NewReader(string(priv))
		pub, err := cmd.Output()
		if err != nil {
			b.Fatalf("wg pubkey: %v", err)
		}
		s.pub = strings.TrimSpace(string(pub))
	}
	var procs []*lab.Proc
	for _, s := range sides {
		procs = append(procs, s.h.Start(b, "wireguard-go-"+s.h.Name(), "env", "LOG_LEVEL=error", bin, "-f", s.ifname))
	}
	defer func() {
		for _, p := range procs {
			_ = p.Kill()
			<-p.Done()
		}
		for _, s := range sides {
			_ = os.Remove(filepath.Join("/var/run/wireguard", s.ifname+".sock"))
		}
	}()
	for i, s := range sides {
		o := sides[1-i]
		deadline := time.Now().Add(10 * time.Second)
		for {
			if _, err := s.h.Run("wg", "show", s.ifname); err == nil {
				break
			}
			if time.Now().After(deadline) {
				b.Fatalf("wireguard-go %s on %s not up: %s", s.ifname, s.h.Name(), procs[i].Tail(20))
			}
			time.Sleep(50 * time.Millisecond)
		}
		for _, args := range [][]string{
			{"wg", "set", s.ifname, "private-key", s.key, "listen-port", "51821",
				"peer", o.pub, "endpoint", netip.AddrPortFrom(o.h.Addr(), 51821).String(), "allowed-ips", o.addr.String() + "/32"},
			{"ip", "addr", "add", s.addr.String() + "/32", "peer", o.addr.String() + "/32", "dev", s.ifname},
			{"ip", "link", "set", s.ifname, "up"},
		} {
			if out, err := s.h.Run(args...); err != nil {
				b.Fatalf("%s on %s: %v: %s", strings.Join(args, " "), s.h.Name(), err, out)
			}
		}
	}
	// Handshake first, so the measurement does not include it.
	if out, err := x.Run("ping", "-c", "1", "-W", "5", sides[1].addr.String()); err != nil {
		b.Fatalf("ping over wireguard-go: %v: %s", err, out)
	}
	return iperf(b, c, x, sides[1].addr)
}
