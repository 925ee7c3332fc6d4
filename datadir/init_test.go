package datadir

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/runos/runos-agent/pki"
	"github.com/runos/runos-agent/raftstore"
)

func TestInitRefusesInitialisedDir(t *testing.T) {
	dir := t.TempDir()
	opts := NodeOptions{DataDir: dir, Name: "a", Net: "userspace", Advertise: []string{"127.0.0.1:1"}}
	if _, err := Init(opts, "test"); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(dir + "/" + FileConfig)
	if _, err := Init(opts, "test"); err == nil || !strings.Contains(err.Error(), "already initialised") {
		t.Fatalf("second init: err = %v", err)
	}
	after, _ := os.ReadFile(dir + "/" + FileConfig)
	if string(before) != string(after) {
		t.Fatal("a refused init changed the data dir")
	}
	for _, f := range []string{FileWGKey, FileNodeKey, FileConfig} {
		fi, err := os.Stat(dir + "/" + f)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm()&0o077 != 0 {
			t.Errorf("%s has mode %v, want no group/other access", f, fi.Mode().Perm())
		}
	}
}

// What Init writes, Load and LoadKeys read back; a foreign ca.crt is refused.
func TestInitLoadKeys(t *testing.T) {
	dir := t.TempDir()
	cfg, err := Init(NodeOptions{DataDir: dir, Name: "a", Advertise: []string{"127.0.0.1"}}, "test")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.AdminPassword == "" || cfg.Net != "auto" || cfg.Relay != "auto" || cfg.ListenPort != DefaultListenPort {
		t.Fatalf("defaults not applied: %+v", cfg)
	}
	if want := "127.0.0.1:51820"; len(cfg.Endpoints) != 1 || cfg.Endpoints[0] != want {
		t.Fatalf("endpoints %v, want [%s]", cfg.Endpoints, want)
	}
	got, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got.NodeID != cfg.NodeID || got.AdminPassword != "" {
		t.Fatalf("loaded %+v", got)
	}
	keys, err := LoadKeys(dir, got)
	if err != nil {
		t.Fatal(err)
	}
	if keys.WG.IsZero() || keys.CACert == nil || len(keys.NodeCert) == 0 || len(keys.NodeKey) == 0 {
		t.Fatalf("keys incomplete: %+v", keys)
	}
	for _, f := range []string{FileInit, FileUIInit} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Error(err)
		}
	}
	other := *got
	other.CAFingerprint = strings.Repeat("0", 64)
	if _, err := LoadKeys(dir, &other); err == nil || !strings.Contains(err.Error(), "does not match") {
		t.Fatalf("foreign CA: err = %v", err)
	}
}

func TestLoadNotInitialised(t *testing.T) {
	if _, err := Load(t.TempDir()); !errors.Is(err, ErrNotInitialised) {
		t.Fatalf("err = %v, want ErrNotInitialised", err)
	}
}

func TestValidateRejects(t *testing.T) {
	for name, o := range map[string]NodeOptions{
		"no dir":    {Name: "a"},
		"bad name":  {DataDir: "x", Name: "A_b"},
		"bad net":   {DataDir: "x", Name: "a", Net: "tun"},
		"bad relay": {DataDir: "x", Name: "a", Relay: "maybe"},
		"bad stun":  {DataDir: "x", Name: "a", STUN: []string{"nohostport"}},
		"bad port":  {DataDir: "x", Name: "a", ListenPort: 70000},
		"bad adv":   {DataDir: "x", Name: "a", Advertise: []string{"h:notaport"}},
	} {
		if err := o.Validate(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestSavedPeersRoundTrip(t *testing.T) {
	dir := t.TempDir()
	if nodes, err := LoadPeers(dir); err != nil || nodes != nil {
		t.Fatalf("empty dir: %v, %v", nodes, err)
	}
	want := []*raftstore.Node{{ID: "n1", Name: "a", MeshIP: raftstore.FirstMeshIP()}}
	if err := SavePeers(dir, want); err != nil {
		t.Fatal(err)
	}
	if got, err := LoadPeers(dir); err != nil || len(got) != 1 || got[0].ID != "n1" || got[0].MeshIP != want[0].MeshIP {
		t.Fatalf("loaded %v, %v", got, err)
	}
	if err := os.WriteFile(filepath.Join(dir, FilePeers), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadPeers(dir); err == nil {
		t.Fatal("corrupt peers.json accepted")
	}
}

// The bootstrap command records the fingerprint of the first node's
// certificate: peers accept that exact certificate, not any with its serial.
func TestInitRecordsCertFingerprint(t *testing.T) {
	dir := t.TempDir()
	if _, err := Init(NodeOptions{DataDir: dir, Name: "a", Advertise: []string{"127.0.0.1"}}, "test"); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join(dir, FileInit))
	if err != nil {
		t.Fatal(err)
	}
	var cmd raftstore.Command
	if err := json.Unmarshal(raw, &cmd); err != nil {
		t.Fatal(err)
	}
	certPEM, err := os.ReadFile(filepath.Join(dir, FileNodeCert))
	if err != nil {
		t.Fatal(err)
	}
	want, err := pki.FingerprintPEM(certPEM)
	if err != nil {
		t.Fatal(err)
	}
	if got := cmd.Bootstrap.Node.CertFingerprint; got != want {
		t.Fatalf("bootstrap records fingerprint %q, want %q", got, want)
	}
}
