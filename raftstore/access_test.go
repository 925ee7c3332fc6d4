package raftstore

import (
	"errors"
	"fmt"
	"net/netip"
	"testing"

	"github.com/runos/runos-agent/mesh"
)

func testKey(t testing.TB) string {
	t.Helper()
	k, err := mesh.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k.PublicKey().String()
}

func accessCmd(id, op string, c AccessCmd) *Command {
	return &Command{ID: id, Time: t0, Op: op, Access: &c}
}

// withAccess is a bootstrapped state with node beta joined and the
// cluster's wg1 key set by a first device, "laptop", via alpha.
func withAccess(t *testing.T) *State {
	t.Helper()
	s := bootstrapped(t)
	if err := s.apply(3, joinCmd("n2", "beta", "k2", "secret", t0)).Error(); err != nil {
		t.Fatal(err)
	}
	res := s.apply(4, accessCmd("a1", OpAccessAdd, AccessCmd{Name: "laptop", PublicKey: testKey(t), Via: "alpha",
		ServerKey: testKey(t), ServerKeySealed: "sealed"}))
	if err := res.Error(); err != nil {
		t.Fatal(err)
	}
	return s
}

func TestAccessAddAllocatesFromUserRange(t *testing.T) {
	s := withAccess(t)
	d := s.Access.Devices["laptop"]
	if d == nil || d.Address != netip.MustParseAddr("172.24.200.2") || d.Via != "n1" || !d.CreatedAt.Equal(t0) {
		t.Fatalf("device %+v, want 172.24.200.2 via n1", d)
	}
	if s.Access.PublicKey == "" || s.Access.KeySealed != "sealed" {
		t.Fatalf("server key not stored: %+v", s.Access)
	}
	// A later add's server key does not replace the first.
	first := s.Access.PublicKey
	res := s.apply(5, accessCmd("a2", OpAccessAdd, AccessCmd{Name: "phone", PublicKey: testKey(t), Via: "beta",
		ServerKey: testKey(t), ServerKeySealed: "other"}))
	if err := res.Error(); err != nil {
		t.Fatal(err)
	}
	if s.Access.PublicKey != first || s.Access.KeySealed != "sealed" {
		t.Fatal("a second add replaced the cluster's wg1 key")
	}
	if got := s.Access.Devices["phone"]; got.Address != netip.MustParseAddr("172.24.200.3") || got.Via != "n2" {
		t.Fatalf("phone %+v", got)
	}
	if a, ok := s.NodeWG1Addr("beta"); !ok || a != AccessGateway {
		t.Fatalf("NodeWG1Addr(beta) = %v %v, want %v", a, ok, AccessGateway)
	}
	if _, ok := s.NodeWG1Addr("nosuch"); ok {
		t.Fatal("a node that does not exist has a wg1 address")
	}
	if got := s.Events[len(s.Events)-1]; got.Kind != EventAccessAdded || got.Node != "beta" || got.Detail != "phone 172.24.200.3" {
		t.Fatalf("event %+v", got)
	}
	// The sealed key is rotated with the others.
	if ref, ok := s.SealedValues()["access"]; !ok || ref.Purpose != AccessKeyPurpose || ref.Value != "sealed" {
		t.Fatalf("sealed values: %+v", s.SealedValues())
	}
}

func TestAccessAddErrors(t *testing.T) {
	s := withAccess(t)
	key := s.Access.Devices["laptop"].PublicKey
	for _, tc := range []struct {
		name string
		cmd  AccessCmd
		want error
	}{
		{"unknown node", AccessCmd{Name: "x", PublicKey: testKey(t), Via: "nosuch"}, ErrNoSuchNode},
		{"duplicate name", AccessCmd{Name: "laptop", PublicKey: testKey(t), Via: "alpha"}, ErrDeviceNameTaken},
		{"duplicate key", AccessCmd{Name: "x", PublicKey: key, Via: "alpha"}, ErrDeviceKeyTaken},
		{"server's key", AccessCmd{Name: "x", PublicKey: s.Access.PublicKey, Via: "alpha"}, ErrDeviceKeyTaken},
		{"bad key", AccessCmd{Name: "x", PublicKey: "not-a-key", Via: "alpha"}, ErrMalformedCmd},
		{"zero key", AccessCmd{Name: "x", PublicKey: mesh.Key{}.String(), Via: "alpha"}, ErrMalformedCmd},
		{"bad name", AccessCmd{Name: "Bad Name", PublicKey: testKey(t), Via: "alpha"}, ErrMalformedCmd},
	} {
		res := s.apply(10, accessCmd("e-"+tc.name, OpAccessAdd, tc.cmd))
		if !errors.Is(res.Error(), tc.want) {
			t.Errorf("%s: err = %v, want %v", tc.name, res.Error(), tc.want)
		}
	}
	if len(s.Access.Devices) != 1 {
		t.Fatalf("a refused add left a device: %v", s.Access.Devices)
	}
	// The first add must bring the cluster's key.
	fresh := bootstrapped(t)
	res := fresh.apply(5, accessCmd("nokey", OpAccessAdd, AccessCmd{Name: "x", PublicKey: testKey(t), Via: "alpha"}))
	if !errors.Is(res.Error(), ErrMalformedCmd) {
		t.Fatalf("first add without a server key: %v", res.Error())
	}
}

func TestAccessRangeExhausted(t *testing.T) {
	s := withAccess(t)
	n := 1 // laptop
	for i := 0; ; i++ {
		res := s.apply(uint64(100+i), accessCmd(fmt.Sprint("fill", i), OpAccessAdd, AccessCmd{Name: fmt.Sprint("d", i), PublicKey: testKey(t), Via: "alpha"}))
		if err := res.Error(); err != nil {
			if !errors.Is(err, ErrAddressSpace) {
				t.Fatalf("add %d: %v", i, err)
			}
			break
		}
		n++
	}
	// 8 /24s of 254 usable each, less the gateway.
	if n != 8*254-1 {
		t.Fatalf("%d devices fit, want %d", n, 8*254-1)
	}
	seen := map[netip.Addr]bool{}
	for _, d := range s.Access.Devices {
		if seen[d.Address] || !UserAccessPrefix.Contains(d.Address) || d.Address == AccessGateway {
			t.Fatalf("bad device address %v", d.Address)
		}
		seen[d.Address] = true
	}
	// Removing one frees its address.
	gone := s.Access.Devices["d7"].Address
	if err := s.apply(99999, accessCmd("rm", OpAccessRemove, AccessCmd{Name: "d7"})).Error(); err != nil {
		t.Fatal(err)
	}
	if err := s.apply(100000, accessCmd("late", OpAccessAdd, AccessCmd{Name: "late", PublicKey: testKey(t), Via: "beta"})).Error(); err != nil {
		t.Fatal(err)
	}
	if s.Access.Devices["late"].Address != gone {
		t.Fatalf("late device got %v, want the freed %v", s.Access.Devices["late"].Address, gone)
	}
}

// The mesh allocator shares 172.24.0.0/16 with wg1's /21 and must step over
// it: a node inside it would take a device's route.
func TestMeshAllocatorSkipsUserAccessRange(t *testing.T) {
	s := bootstrapped(t)
	for a := FirstMeshIP(); a.Compare(netip.MustParseAddr("172.24.199.255")) < 0; a = a.Next() {
		if isHostZeroOrBroadcast(a) {
			continue
		}
		s.Nodes["x"+a.String()] = &Node{ID: "x" + a.String(), MeshIP: a}
	}
	got, err := s.allocMeshIP()
	if err != nil || got != netip.MustParseAddr("172.24.208.1") {
		t.Fatalf("next mesh IP = %v %v, want 172.24.208.1 (past %v)", got, err, UserAccessPrefix)
	}
}

func TestAccessMoveRemoveSeen(t *testing.T) {
	s := withAccess(t)
	addr := s.Access.Devices["laptop"].Address
	if err := s.apply(5, accessCmd("m", OpAccessMove, AccessCmd{Name: "laptop", Via: "beta"})).Error(); err != nil {
		t.Fatal(err)
	}
	d := s.Access.Devices["laptop"]
	if d.Via != "n2" || d.Address != addr {
		t.Fatalf("moved device %+v, want via n2 at %v", d, addr)
	}
	if ev := s.Events[len(s.Events)-1]; ev.Kind != EventAccessMoved || ev.From != "alpha" || ev.To != "beta" {
		t.Fatalf("event %+v", ev)
	}
	if _, ok := s.NodeWG1Addr("alpha"); ok {
		t.Fatal("alpha has no device left but keeps a wg1 address")
	}
	if err := s.apply(6, accessCmd("m2", OpAccessMove, AccessCmd{Name: "laptop", Via: "nosuch"})).Error(); !errors.Is(err, ErrNoSuchNode) {
		t.Fatalf("move to unknown node: %v", err)
	}
	if err := s.apply(7, accessCmd("m3", OpAccessMove, AccessCmd{Name: "nosuch", Via: "alpha"})).Error(); !errors.Is(err, ErrNoSuchDevice) {
		t.Fatalf("move unknown device: %v", err)
	}
	// The first handshake is recorded once.
	events := len(s.Events)
	s.apply(8, &Command{ID: "s1", Time: t0.Add(1), Op: OpAccessSeen, Access: &AccessCmd{Name: "laptop"}})
	s.apply(9, &Command{ID: "s2", Time: t0.Add(2), Op: OpAccessSeen, Access: &AccessCmd{Name: "laptop"}})
	if len(s.Events) != events+1 || !s.Access.Devices["laptop"].FirstHandshake.Equal(t0.Add(1)) {
		t.Fatalf("first handshake %v, %d events", s.Access.Devices["laptop"].FirstHandshake, len(s.Events)-events)
	}
	// A view is a deep copy.
	v := s.View()
	v.Access.Devices["laptop"].Via = "changed"
	if s.Access.Devices["laptop"].Via != "n2" {
		t.Fatal("a view shares devices with the state")
	}
	if err := s.apply(10, accessCmd("r", OpAccessRemove, AccessCmd{Name: "laptop"})).Error(); err != nil {
		t.Fatal(err)
	}
	if err := s.apply(11, accessCmd("r2", OpAccessRemove, AccessCmd{Name: "laptop"})).Error(); !errors.Is(err, ErrNoSuchDevice) {
		t.Fatalf("second removal: %v", err)
	}
	if len(s.Access.Devices) != 0 {
		t.Fatal("device still there")
	}
}

func TestValidDNSLabel(t *testing.T) {
	for name, want := range map[string]bool{
		"laptop": true, "alice-phone-2": true, "a": true, "": false, "-a": false, "a-": false,
		"Alice": false, "a.b": false, "a b": false, string(make([]byte, 64)): false,
	} {
		if got := ValidDNSLabel(name); got != want {
			t.Errorf("ValidDNSLabel(%q) = %v, want %v", name, got, want)
		}
	}
}
