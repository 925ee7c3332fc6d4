package e2e

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/hashicorp/raft"

	"github.com/runos/runos-agent/datadir"
	"github.com/runos/runos-agent/e2e/lab"
	"github.com/runos/runos-agent/raftstore"
	"github.com/runos/runos-agent/seal"
)

// Ports on the mesh IP (agent.RaftPort, agent.GossipPort, agent.NodeAPIPort;
// the e2e package drives the binary and does not import agent).
const (
	raftPort    = 7947
	gossipPort  = 7946
	nodeAPIPort = 7948
)

// TestKernelControlPlaneRefusesStrangers is the attack of a local process or
// pod in kernel mode: everything on a node's mesh IP is reachable from its
// namespace. A process that is not the agent, with no credentials or with
// the credentials a removed node kept, tries Raft (7947), memberlist (7946)
// and the node API's write endpoint (7948) on a member's mesh IP. None of
// them may succeed: each is checked first with the member's own credentials,
// so "refused" cannot come from a probe that never works.
func TestKernelControlPlaneRefusesStrangers(t *testing.T) {
	t.Parallel()
	c := startCluster(t, "10.97.0.0/24", "a", "b", "c")
	// Probes run in the leader's namespace against its own mesh IP: the node
	// API commits only there, and the leader stays put (a follower goes).
	a := c.leader(c.nodes)
	victim := others(c.nodes, a)[0]
	st, err := a.status()
	if err != nil {
		c.fatalf("%v", err)
	}
	meshIP := netip.MustParseAddr(st.MeshIP)

	// Take the victim's credentials before it is removed: what a removed
	// (or stolen) node keeps in its data dir.
	stolen := t.TempDir()
	for _, f := range []string{datadir.FileNodeCert, datadir.FileNodeKey, datadir.FileCACert, datadir.FileDataKey} {
		b, err := os.ReadFile(filepath.Join(victim.dir, f))
		if err != nil {
			c.fatalf("%v", err)
		}
		if err := os.WriteFile(filepath.Join(stolen, f), b, 0o600); err != nil {
			c.fatalf("%v", err)
		}
	}
	own := a.dir // a member's credentials: the control for every probe

	probe := func(role string, env ...string) string {
		t.Helper()
		out, _ := a.host.Run(helper(t, role, env...)...)
		return strings.TrimSpace(out)
	}
	raftAddr := netip.AddrPortFrom(meshIP, raftPort).String()
	gossipAddr := netip.AddrPortFrom(meshIP, gossipPort).String()
	nodeURL := fmt.Sprintf("https://%s/v1/raft/apply", netip.AddrPortFrom(meshIP, nodeAPIPort))

	// Controls: with a member's credentials each probe gets through.
	c.eventually(30*time.Second, "a member's own credentials speak Raft", func() error {
		if out := probe("raft-probe", "ADDR="+raftAddr, "CREDS="+own); !strings.HasPrefix(out, "RPC-OK") {
			return fmt.Errorf("%s", out)
		}
		return nil
	})
	if out := probe("gossip-probe", "ADDR="+gossipAddr, "CREDS="+own); !strings.HasPrefix(out, "JOIN-OK") {
		c.fatalf("control: gossip with a member's key: %s", out)
	}
	if out := probe("nodeapi-probe", "URL="+nodeURL, "CREDS="+own); !strings.HasPrefix(out, "APPLY-OK") {
		c.fatalf("control: node API with a member's certificate: %s", out)
	}

	// A stranger: no credentials at all.
	if out := probe("raft-probe", "ADDR="+raftAddr); !strings.HasPrefix(out, "RPC-FAIL") {
		c.fatalf("a process without credentials got a Raft RPC answered: %s", out)
	}
	if out := probe("gossip-probe", "ADDR="+gossipAddr); !strings.HasPrefix(out, "JOIN-FAIL") {
		c.fatalf("a process without the gossip key joined memberlist: %s", out)
	}
	if out := probe("nodeapi-probe", "URL="+nodeURL); !strings.HasPrefix(out, "APPLY-FAIL") {
		c.fatalf("a process without a certificate committed through the node API: %s", out)
	}

	// The victim is removed; its kept credentials open nothing.
	if out, err := a.cli("node", "remove", "--data-dir", a.dir, victim.name); err != nil {
		c.fatalf("node remove: %v: %s", err, out)
	}
	victim.kill()
	c.eventually(30*time.Second, "removal applied on a", func() error {
		ns, err := a.nodes()
		if err != nil {
			return err
		}
		for _, n := range ns {
			if n.Name == victim.name {
				return fmt.Errorf("%s still listed", victim.name)
			}
		}
		return nil
	})
	c.eventually(30*time.Second, "the removed node's certificate is refused by Raft", func() error {
		if out := probe("raft-probe", "ADDR="+raftAddr, "CREDS="+stolen); !strings.HasPrefix(out, "RPC-FAIL") {
			return fmt.Errorf("removed node's certificate got a Raft RPC answered: %s", out)
		}
		return nil
	})
	if out := probe("nodeapi-probe", "URL="+nodeURL, "CREDS="+stolen); !strings.HasPrefix(out, "APPLY-FAIL") {
		c.fatalf("removed node's certificate committed through the node API: %s", out)
	}
	c.eventually(30*time.Second, "the removed node's gossip key is refused", func() error {
		if out := probe("gossip-probe", "ADDR="+gossipAddr, "CREDS="+stolen); !strings.HasPrefix(out, "JOIN-FAIL") {
			return fmt.Errorf("removed node's data key still opens gossip: %s", out)
		}
		return nil
	})
	// The members still speak to each other and to a member's key.
	if out := probe("gossip-probe", "ADDR="+gossipAddr, "CREDS="+own); !strings.HasPrefix(out, "JOIN-OK") {
		c.fatalf("after the rotation a member's own key no longer opens gossip: %s", out)
	}
	if _, err := a.createToken("1m"); err != nil {
		c.fatalf("the cluster stopped taking writes: %v", err)
	}
}

// attackRole runs the probe roles of TestKernelControlPlaneRefusesStrangers
// inside a node's namespace; ok is false for a role it does not know.
func attackRole(role string) (ok bool, err error) {
	switch role {
	case "raft-probe":
		return true, raftProbe(os.Getenv("ADDR"), os.Getenv("CREDS"))
	case "gossip-probe":
		return true, gossipProbe(os.Getenv("ADDR"), os.Getenv("CREDS"))
	case "nodeapi-probe":
		return true, nodeAPIProbe(os.Getenv("URL"), os.Getenv("CREDS"))
	}
	return false, nil
}

// clientTLS is a TLS client config presenting the certificate in a data dir
// (nil without one). It verifies nothing of the server: the probe asks
// whether the server accepts us, not the other way round.
func clientTLS(dir string) (*tls.Config, error) {
	cfg := &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS12}
	if dir == "" {
		return cfg, nil
	}
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, datadir.FileNodeCert), filepath.Join(dir, datadir.FileNodeKey))
	if err != nil {
		return nil, err
	}
	cfg.Certificates = []tls.Certificate{cert}
	return cfg, nil
}

// probeStream dials Raft in plain TCP, or in TLS when it has a certificate.
type probeStream struct{ tls *tls.Config }

func (p probeStream) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	d := &net.Dialer{Timeout: timeout}
	if len(p.tls.Certificates) == 0 {
		return d.Dial("tcp", string(addr))
	}
	return tls.DialWithDialer(d, "tcp", string(addr), p.tls)
}
func (probeStream) Accept() (net.Conn, error) { return nil, net.ErrClosed }
func (probeStream) Close() error              { return nil }
func (probeStream) Addr() net.Addr            { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)} }

// raftProbe sends one harmless AppendEntries (term 0: no server adopts it)
// and prints RPC-OK with the answer's term, or RPC-FAIL.
func raftProbe(addr, creds string) error {
	cfg, err := clientTLS(creds)
	if err != nil {
		return err
	}
	trans := raft.NewNetworkTransport(probeStream{cfg}, 1, 5*time.Second, io.Discard)
	defer trans.Close()
	var resp raft.AppendEntriesResponse
	err = trans.AppendEntries("probe", raft.ServerAddress(addr), &raft.AppendEntriesRequest{
		RPCHeader: raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte("probe"), Addr: []byte("127.0.0.1:1")},
	}, &resp)
	if err != nil {
		fmt.Println("RPC-FAIL", err)
		return nil
	}
	fmt.Println("RPC-OK term", resp.Term)
	return nil
}

// gossipProbe starts a memberlist on loopback, keyed with the memberlist key
// of the data dir's data key (none without creds), and tries to join.
func gossipProbe(addr, creds string) error {
	cfg := memberlist.DefaultLANConfig()
	cfg.Name = "probe"
	cfg.BindAddr, cfg.BindPort = "127.0.0.1", 0
	cfg.TCPTimeout = 3 * time.Second
	cfg.LogOutput = io.Discard
	if creds != "" {
		k, err := dataKey(creds)
		if err != nil {
			return err
		}
		mk := seal.Derive(k, "memberlist")
		cfg.SecretKey = mk[:]
	}
	ml, err := memberlist.Create(cfg)
	if err != nil {
		return err
	}
	defer ml.Shutdown()
	n, err := ml.Join([]string{addr})
	if err != nil || n == 0 {
		fmt.Println("JOIN-FAIL", n, err)
		return nil
	}
	fmt.Println("JOIN-OK", n)
	return nil
}

// dataKey is the newest data key in a data dir.
func dataKey(dir string) (seal.Key, error) {
	b, err := os.ReadFile(filepath.Join(dir, datadir.FileDataKey))
	if err != nil {
		return seal.Key{}, err
	}
	ring, err := seal.ParseKeyring(string(b))
	if err != nil {
		return seal.Key{}, err
	}
	return ring.Current(), nil
}

// nodeAPIProbe forwards a join-token creation to the node API as a member
// would, and prints APPLY-OK when it was committed.
func nodeAPIProbe(url, creds string) error {
	cfg, err := clientTLS(creds)
	if err != nil {
		return err
	}
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg}}
	cmd := raftstore.Command{
		ID: raftstore.NewCommandID(), Time: time.Now().UTC(), Op: raftstore.OpCreateToken,
		CreateToken: &raftstore.CreateTokenCmd{Token: raftstore.Token{
			ID: "probe" + raftstore.NewCommandID()[:8], SecretHash: strings.Repeat("0", 64),
			ExpiresAt: time.Now().Add(time.Hour), UsesLeft: 1,
		}},
	}
	body, _ := json.Marshal(cmd)
	resp, err := hc.Post(url, "application/json", bytes.NewReader(body))
	if err != nil {
		fmt.Println("APPLY-FAIL", err)
		return nil
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	var res raftstore.Result
	if resp.StatusCode != http.StatusOK || json.Unmarshal(raw, &res) != nil || res.Err != "" {
		fmt.Println("APPLY-FAIL", resp.Status, strings.TrimSpace(string(raw)))
		return nil
	}
	fmt.Println("APPLY-OK index", res.Index)
	return nil
}

// Attack: a host on a node's LAN that is no member routes the node's mesh
// IP through the node's LAN address. Linux answers for a local address on
// whichever interface a packet arrives, so a listener bound to the mesh IP
// alone would be reached without WireGuard: kube-apiserver is one, and it
// trusts any client certificate of the Kubernetes CA, whose key a removed
// node keeps. Packets to the mesh arrive on wg0, from this node itself, or
// from pods and user devices; from the LAN they are dropped. (Forwarding
// the LAN into wg0 is no way round: the peer drops an inner source outside
// the sender's allowed IPs.)
func TestAttackMeshIPThroughTheLAN(t *testing.T) {
	t.Parallel()
	c := startCluster(t, "10.97.2.0/24", "a", "b", "c")
	a, b := c.nodes[0], c.nodes[1]
	st, err := a.status()
	if err != nil {
		c.fatalf("%v", err)
	}
	meshIP := netip.MustParseAddr(st.MeshIP)
	listen := netip.AddrPortFrom(meshIP, echoPort)
	c.startEchoAt(a.host, "a-mesh-only", listen.String())
	dial := func(h *lab.Host) error {
		out, err := h.Run(helper(t, "echo-client", "DIAL="+listen.String(), "MSG=hello")...)
		if err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		return nil
	}
	// Control: a member reaches it over the mesh.
	c.eventually(30*time.Second, "b reaches a's mesh-only listener over wg0", func() error { return dial(b.host) })

	stranger := c.lab.Host("stranger", c.lan)
	if out, err := stranger.Run("ping", "-c", "1", "-W", "2", a.host.Addr().String()); err != nil {
		c.fatalf("the stranger cannot reach a on the LAN at all: %v: %s", err, out)
	}
	if out, err := stranger.Run("ip", "route", "add", meshIP.String()+"/32", "via", a.host.Addr().String()); err != nil {
		c.fatalf("route: %v: %s", err, out)
	}
	if err := dial(stranger); err == nil {
		c.fatalf("a host on the LAN reached %v (bound to the mesh IP only) through a's LAN address", listen)
	} else {
		t.Logf("the stranger's dial through a's LAN address: %v", err)
	}
	// Still so while a serves user devices (wg1 is a second kernel
	// WireGuard interface, with a firewall of its own).
	if out, err := a.cli("access", "add", "phone", "--via", "a", "--data-dir", a.dir); err != nil {
		c.fatalf("access add: %v: %s", err, out)
	}
	c.eventually(30*time.Second, "wg1 up on a", func() error {
		_, err := a.host.Run("ip", "link", "show", "wg1")
		return err
	})
	if err := dial(stranger); err == nil {
		c.fatalf("with wg1 up, a host on the LAN reached %v through a's LAN address", listen)
	}
	if err := dial(b.host); err != nil {
		c.fatalf("b after the probes: %v", err)
	}
}
