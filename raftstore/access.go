package raftstore

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"time"

	"github.com/runos/runos-agent/mesh"
)

// User access (issue 16): people's devices (laptops, phones) join the
// cluster over a second WireGuard network, wg1, through an entry node of
// their choice. A device is a record here: its name, public key, an address
// from UserAccessPrefix and the node it enters through. The entry node runs
// wg1 with the device as a peer and forwards between wg1 and the mesh; the
// other nodes carry the device's /32 in the entry node's wg0 AllowedIPs, so
// moving a device is one command that changes which peer carries it.
//
// Every entry node serves the same wg1 key and the same gateway address
// (AccessGateway, the DNS server of every device config), so a device moved
// to another entry node needs a config that differs only in its Endpoint.
// The key is in the state sealed with the data key (AccessKeyPurpose) and
// re-sealed by rotations like every other secret. A device's private key is
// never in the state: the node that handles `access add` makes it, returns it
// once and forgets it.

// Access ops (payload Command.Access).
const (
	// OpAccessAdd adds a device (AccessCmd: Name, PublicKey, Via,
	// AllowPeers; ServerKey and ServerKeySealed on the cluster's first add).
	OpAccessAdd = "access_add"
	// OpAccessRemove removes a device by Name.
	OpAccessRemove = "access_remove"
	// OpAccessMove gives device Name the entry node Via.
	OpAccessMove = "access_move"
	// OpAccessSeen records a device's first handshake (Name), reported by
	// its entry node; it is a no-op after the first.
	OpAccessSeen = "access_seen"
)

// Event kinds of user access. Node is the entry node's name; Detail is
// "<device> <address>" (moved: "<device> <from> -> <to>").
const (
	EventAccessAdded     = "access_added"
	EventAccessRemoved   = "access_removed"
	EventAccessMoved     = "access_moved"
	EventAccessHandshake = "access_handshake"
)

// AccessKeyPurpose is the seal purpose of AccessState.KeySealed.
const AccessKeyPurpose = "access/wg1-key"

// AccessPort is the UDP port wg1 listens on (the RunOS reference's).
const AccessPort = 51821

// AccessGateway is the wg1 address of every entry node: the first address of
// UserAccessPrefix, never given to a device. It is local to each entry
// node's wg1 interface and never routed over wg0, so a device reaches its own
// entry node there (DNS) wherever it enters.
var AccessGateway = UserAccessPrefix.Addr().Next()

// Errors of access ops.
var (
	ErrDeviceNameTaken = errors.New("device name is already taken")
	ErrNoSuchDevice    = errors.New("no such device")
	ErrDeviceKeyTaken  = errors.New("public key is already used by another device")
)

// AccessState is the cluster's user access (State.Access).
type AccessState struct {
	// PublicKey is the wg1 key every entry node serves (base64), set by the
	// first add; KeySealed its private half sealed with the data key.
	PublicKey string `json:"public_key,omitempty"`
	KeySealed string `json:"key_sealed,omitempty"`
	// Devices by name.
	Devices map[string]*Device `json:"devices,omitempty"`
}

// Device is one user device.
type Device struct {
	Name      string     `json:"name"`
	PublicKey string     `json:"public_key"` // WireGuard, base64
	Address   netip.Addr `json:"address"`    // in UserAccessPrefix
	// Via is the entry node's ID. It may name a removed node: the device
	// then waits for `access move`.
	Via string `json:"via"`
	// AllowPeers lets this device reach (and be reached by) other devices
	// that allow it too; by default devices never see each other.
	AllowPeers bool      `json:"allow_peers,omitempty"`
	CreatedAt  time.Time `json:"created_at"`
	// FirstHandshake is when the device first completed a handshake with
	// an entry node (zero: never).
	FirstHandshake time.Time `json:"first_handshake,omitzero"`
}

func (a AccessState) clone() AccessState {
	if a.Devices != nil {
		m := make(map[string]*Device, len(a.Devices))
		for k, d := range a.Devices {
			dd := *d
			m[k] = &dd
		}
		a.Devices = m
	}
	return a
}

// AccessCmd is the payload of access_* ops.
type AccessCmd struct {
	Name       string `json:"name"`
	PublicKey  string `json:"public_key,omitempty"`
	Via        string `json:"via,omitempty"` // entry node by name
	AllowPeers bool   `json:"allow_peers,omitempty"`
	// The cluster's wg1 key, made by the proposer when the state it read
	// had none; ignored when the state has one by the time it applies.
	ServerKey       string `json:"server_key,omitempty"`
	ServerKeySealed string `json:"server_key_sealed,omitempty"`
}

// SortedDevices returns the devices ordered by address.
func (s *State) SortedDevices() []*Device {
	out := slices.Collect(maps.Values(s.Access.Devices))
	slices.SortFunc(out, func(a, b *Device) int { return a.Address.Compare(b.Address) })
	return out
}

// DevicesVia returns the devices whose entry node is nodeID, by address.
func (s *State) DevicesVia(nodeID string) []*Device {
	var out []*Device
	for _, d := range s.SortedDevices() {
		if d.Via == nodeID {
			out = append(out, d)
		}
	}
	return out
}

// NodeWG1Addr returns the wg1 address of the node named name and whether it
// has one: a node has wg1 while it is the entry node of at least one device.
// Every entry node's wg1 address is AccessGateway.
func (s *State) NodeWG1Addr(name string) (netip.Addr, bool) {
	n := s.NodeByName(name)
	if n == nil {
		return netip.Addr{}, false
	}
	for _, d := range s.Access.Devices {
		if d.Via == n.ID {
			return AccessGateway, true
		}
	}
	return netip.Addr{}, false
}

// ValidDNSLabel reports whether name is a DNS label as the cluster zone
// uses them (lowercase letters, digits, dashes inside, at most 63
// characters): what device names must be, so they can become DNS names,
// and what an app's name must be to be found by it.
func ValidDNSLabel(name string) bool {
	if len(name) == 0 || len(name) > 63 || name[0] == '-' || name[len(name)-1] == '-' {
		return false
	}
	for _, r := range name {
		if (r < 'a' || r > 'z') && (r < '0' || r > '9') && r != '-' {
			return false
		}
	}
	return true
}

func validKey(s string) bool {
	k, err := mesh.ParseKey(s)
	return err == nil && !k.IsZero()
}

func (s *State) applyAccess(cmd *Command, res *Result) error {
	c := cmd.Access
	if c == nil || !ValidDNSLabel(c.Name) {
		return ErrMalformedCmd
	}
	switch cmd.Op {
	case OpAccessAdd:
		return s.applyAccessAdd(cmd, res)

	case OpAccessRemove:
		d, ok := s.Access.Devices[c.Name]
		if !ok {
			return ErrNoSuchDevice
		}
		delete(s.Access.Devices, c.Name)
		s.record(res.Index, cmd.Time, Event{Kind: EventAccessRemoved, Node: s.nodeName(d.Via), Detail: d.Name + " " + d.Address.String()})
		return nil

	case OpAccessMove:
		d, ok := s.Access.Devices[c.Name]
		if !ok {
			return ErrNoSuchDevice
		}
		n := s.NodeByName(c.Via)
		if n == nil {
			return fmt.Errorf("entry node %q: %w", c.Via, ErrNoSuchNode)
		}
		if d.Via == n.ID {
			return nil
		}
		from := s.nodeName(d.Via)
		d.Via = n.ID
		s.record(res.Index, cmd.Time, Event{Kind: EventAccessMoved, Node: n.Name, From: from, To: n.Name, Detail: d.Name + " " + d.Address.String()})
		return nil

	case OpAccessSeen:
		d, ok := s.Access.Devices[c.Name]
		if !ok {
			return ErrNoSuchDevice
		}
		if d.FirstHandshake.IsZero() {
			d.FirstHandshake = cmd.Time
			s.record(res.Index, cmd.Time, Event{Kind: EventAccessHandshake, Node: s.nodeName(d.Via), Detail: d.Name + " " + d.Address.String()})
		}
		return nil
	}
	return ErrUnknownOp
}

func (s *State) applyAccessAdd(cmd *Command, res *Result) error {
	c := cmd.Access
	if !validKey(c.PublicKey) {
		return ErrMalformedCmd
	}
	if s.Access.PublicKey == "" && (!validKey(c.ServerKey) || c.ServerKeySealed == "") {
		return ErrMalformedCmd
	}
	n := s.NodeByName(c.Via)
	if n == nil {
		return fmt.Errorf("entry node %q: %w", c.Via, ErrNoSuchNode)
	}
	if _, ok := s.Access.Devices[c.Name]; ok {
		return ErrDeviceNameTaken
	}
	for _, d := range s.Access.Devices {
		if d.PublicKey == c.PublicKey {
			return ErrDeviceKeyTaken
		}
	}
	if c.PublicKey == s.Access.PublicKey || c.PublicKey == c.ServerKey {
		return ErrDeviceKeyTaken
	}
	addr, err := s.allocDeviceIP()
	if err != nil {
		return err
	}
	if s.Access.PublicKey == "" {
		s.Access.PublicKey, s.Access.KeySealed = c.ServerKey, c.ServerKeySealed
	}
	if s.Access.Devices == nil {
		s.Access.Devices = map[string]*Device{}
	}
	s.Access.Devices[c.Name] = &Device{Name: c.Name, PublicKey: c.PublicKey, Address: addr, Via: n.ID,
		AllowPeers: c.AllowPeers, CreatedAt: cmd.Time}
	s.record(res.Index, cmd.Time, Event{Kind: EventAccessAdded, Node: n.Name, Detail: c.Name + " " + addr.String()})
	return nil
}

// nodeName is the name of node id, or the ID itself for a removed node.
func (s *State) nodeName(id string) string {
	if n, ok := s.Nodes[id]; ok {
		return n.Name
	}
	return id
}

// allocDeviceIP returns the lowest free address of UserAccessPrefix, past
// AccessGateway and skipping .0 and .255 (clients on some systems refuse
// them). Addresses are never reused while their device exists.
func (s *State) allocDeviceIP() (netip.Addr, error) {
	used := make(map[netip.Addr]bool, len(s.Access.Devices))
	for _, d := range s.Access.Devices {
		used[d.Address] = true
	}
	for a := AccessGateway.Next(); UserAccessPrefix.Contains(a); a = a.Next() {
		if isHostZeroOrBroadcast(a) || used[a] {
			continue
		}
		return a, nil
	}
	return netip.Addr{}, fmt.Errorf("user access network %s: %w", UserAccessPrefix, ErrAddressSpace)
}
