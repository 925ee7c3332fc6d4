package kubehost

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/runos/runos-agent/kubehost/clusterdns"
	"github.com/runos/runos-agent/kubehost/kpki"
)

// fileHost is a Host whose files can be synced without binaries, root or
// the host's cgroups.
func fileHost(t testing.TB) (*Host, *Spec) {
	t.Helper()
	h, err := New(Config{Dir: t.TempDir(), BinDir: t.TempDir(), CNIBinDir: "/usr/lib/cni",
		MountDNS: func(string, *clusterdns.Handler) {}}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	h.cgroups = func(string) error { return nil }
	s := testSpec()
	if s.CA, err = kpki.NewCA("kubernetes"); err != nil {
		t.Fatal(err)
	}
	if s.EtcdCA, err = kpki.NewCA("etcd"); err != nil {
		t.Fatal(err)
	}
	if s.SAKeyPEM, _, err = kpki.NewServiceAccountKey(); err != nil {
		t.Fatal(err)
	}
	return h, s
}

func certIPs(t *testing.T, path string) []netip.Addr {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	var ips []netip.Addr
	for _, ip := range c.IPAddresses {
		a, _ := netip.AddrFromSlice(ip)
		ips = append(ips, a.Unmap())
	}
	return ips
}

// A node whose mesh IP changes gets certificates for the new address at
// once, and a component whose config file changed restarts (its identity
// changes); with nothing changed, files are only re-checked hourly, and
// then a file removed by hand comes back.
func TestFilesFollowTheSpec(t *testing.T) {
	h, s := fileHost(t)
	if wrote, err := h.syncFiles(s); err != nil || !wrote {
		t.Fatalf("first sync: wrote=%v err=%v", wrote, err)
	}
	kubelet := h.wanted(s)[Kubelet]
	id1, err := h.identity(kubelet)
	if err != nil {
		t.Fatal(err)
	}
	serving := h.p.pki("kubelet-serving.crt")
	if ips := certIPs(t, serving); !bytes.Contains([]byte(joinAddrs(ips)), []byte("172.24.0.2")) {
		t.Fatalf("kubelet serving certificate for %v, want 172.24.0.2", ips)
	}

	// Unchanged: nothing is rewritten, not even a file deleted by hand
	// (until the hourly re-check).
	os.Remove(h.p.etc("kube-proxy.json"))
	if wrote, err := h.syncFiles(s); err != nil || wrote {
		t.Fatalf("idle sync: wrote=%v err=%v, want nothing done", wrote, err)
	}
	if _, err := os.Stat(h.p.etc("kube-proxy.json")); !os.IsNotExist(err) {
		t.Fatalf("idle sync touched the files (kube-proxy config: %v)", err)
	}
	h.filesAt = time.Now().Add(-filesRecheck)
	if wrote, err := h.syncFiles(s); err != nil || !wrote {
		t.Fatalf("hourly re-check: wrote=%v err=%v", wrote, err)
	}
	if _, err := os.Stat(h.p.etc("kube-proxy.json")); err != nil {
		t.Fatalf("kube-proxy config not restored by the re-check: %v", err)
	}

	// The mesh IP changes: the serving certificate and the kubelet's
	// identity follow on the next round.
	s2 := *s
	s2.MeshIP = netip.MustParseAddr("172.24.0.9")
	if wrote, err := h.syncFiles(&s2); err != nil || !wrote {
		t.Fatalf("changed spec: wrote=%v err=%v", wrote, err)
	}
	if ips := certIPs(t, serving); !bytes.Contains([]byte(joinAddrs(ips)), []byte("172.24.0.9")) {
		t.Fatalf("kubelet serving certificate for %v after the move, want 172.24.0.9", ips)
	}
	id2, err := h.identity(h.wanted(&s2)[Kubelet])
	if err != nil {
		t.Fatal(err)
	}
	if id1 == id2 {
		t.Fatal("kubelet identity unchanged after its certificate and config changed: it would not restart")
	}
}

func joinAddrs(a []netip.Addr) string {
	var b bytes.Buffer
	for _, x := range a {
		b.WriteString(x.String() + " ")
	}
	return b.String()
}

// BenchmarkIdleRound is the file work of one reconcile round with an
// unchanged spec (every 5 s on every node), next to the full rewrite check
// every round did before.
func BenchmarkIdleRound(b *testing.B) {
	h, s := fileHost(b)
	if _, err := h.syncFiles(s); err != nil {
		b.Fatal(err)
	}
	w := h.wanted(s)
	round := func(b *testing.B) {
		if _, err := h.syncFiles(s); err != nil {
			b.Fatal(err)
		}
		for _, name := range startOrder {
			if c, ok := w[name]; ok {
				if _, err := h.identity(c); err != nil {
					b.Fatal(err)
				}
			}
		}
	}
	b.Run("cached", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			round(b)
		}
	})
	b.Run("every-round", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			h.filesKey = "" // what every round did before the key
			round(b)
		}
	})
}
