// Package raftstore keeps the cluster's state in a Raft log on the node's own
// disk (hashicorp/raft; the log in segment files of its own, seglog.go).
// Every durable fact about the cluster is a Command applied by the FSM;
// Apply is deterministic (it reads time only from the command) and
// idempotent for a repeated command ID, so a write that is retried after a
// leader dies mid-flight is applied once.
package raftstore

import (
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"time"
)

// Address plan from the RunOS design.
var (
	MeshPrefix       = netip.MustParsePrefix("172.24.0.0/16")
	UserAccessPrefix = netip.MustParsePrefix("172.24.200.0/21") // wg1; never handed to nodes
	PodPrefix        = netip.MustParsePrefix("172.25.0.0/16")
)

// eventWindow bounds the event log kept in the state.
const eventWindow = 1000

// appliedWindow bounds how many command IDs the state remembers for
// deduplication. Retries happen within seconds, so a few thousand is plenty.
const appliedWindow = 4096

// Errors a command can fail with. They come back to the proposer (possibly
// through write forwarding, so they are matched by message there).
var (
	ErrTokenInvalid  = errors.New("join token is invalid")
	ErrTokenExpired  = errors.New("join token has expired")
	ErrTokenUsed     = errors.New("join token has already been used")
	ErrNameTaken     = errors.New("node name is already taken")
	ErrKeyTaken      = errors.New("wireguard public key is already used by another node")
	ErrNoSuchNode    = errors.New("no such node")
	ErrNotBootstrap  = errors.New("cluster is not initialised yet")
	ErrBootstrapped  = errors.New("cluster is already initialised")
	ErrAddressSpace  = errors.New("address space exhausted")
	ErrUnknownOp     = errors.New("unknown command")
	ErrMalformedCmd  = errors.New("malformed command")
	errAlreadyExists = errors.New("already exists")
)

// Node is a member of the cluster as the state knows it.
type Node struct {
	ID         string            `json:"id"`
	Name       string            `json:"name"`
	PublicKey  string            `json:"public_key"` // WireGuard, base64
	MeshIP     netip.Addr        `json:"mesh_ip"`
	PodCIDR    netip.Prefix      `json:"pod_cidr"`
	Endpoints  []string          `json:"endpoints,omitempty"` // underlay host:port candidates, last known
	Relay      bool              `json:"relay,omitempty"`     // offers relaying to other members
	Labels     map[string]string `json:"labels,omitempty"`
	CertSerial string            `json:"cert_serial"`
	// CertFingerprint is the SHA-256 of the node certificate's DER
	// (pki.Fingerprint): a member's certificate is that exact certificate,
	// not any the CA signed with its serial. Empty in records made before
	// it existed; the node then fills it in itself (UpdateNodeCmd).
	CertFingerprint string    `json:"cert_fingerprint,omitempty"`
	Version         string    `json:"version,omitempty"`
	JoinedAt        time.Time `json:"joined_at"`
}

// Token is a join token. Only the hash of its secret is stored, so the Raft
// log and snapshots never hold a usable token.
type Token struct {
	ID         string    `json:"id"`
	SecretHash string    `json:"secret_hash"` // pki.HashSecret of the secret
	ExpiresAt  time.Time `json:"expires_at"`
	UsesLeft   int       `json:"uses_left"`
	CreatedAt  time.Time `json:"created_at"`
}

// State is the replicated cluster state. It is only mutated by apply; readers
// get a deep copy.
type State struct {
	ClusterID string `json:"cluster_id"`
	CACertPEM []byte `json:"ca_cert_pem"`
	// CAKeySealed is the CA private key (PEM) sealed with the data key
	// (purpose CAKeyPurpose): replicated so any member can admit a
	// joiner, yet no Raft log, snapshot or backup holds it in the clear.
	CAKeySealed string `json:"ca_key_sealed,omitempty"`
	// CAKeyPEM is the plaintext CA key of states from before sealing; the
	// first leader after an upgrade seals it (OpSealCAKey) and it is empty
	// from then on.
	CAKeyPEM []byte `json:"ca_key_pem,omitempty"`
	// Keys is the data key's epoch and its wrapped copies (keys.go).
	Keys   KeyState          `json:"keys"`
	Nodes  map[string]*Node  `json:"nodes"`  // by ID
	Tokens map[string]*Token `json:"tokens"` // by ID
	// TokenPolicy bounds new tokens (policy.go); nil is the default. It is
	// replaced, never mutated, so copies may share it.
	TokenPolicy *TokenPolicy `json:"token_policy,omitempty"`
	// Events is the cluster's recent history, oldest first, bounded.
	// Views share it: read-only (see record).
	Events []Event `json:"events"`
	// Cloud is the cloud link's registration and sync cursor (cloud.go).
	Cloud CloudState `json:"cloud"`
	// Workloads are services, apps and the Kubernetes target (workloads.go).
	Workloads Workloads `json:"workloads"`
	// UI holds the web UI's admin credential (ui.go).
	UI UIState `json:"ui"`
	// Kube is managed Kubernetes, nil when off (kube.go). It is replaced,
	// never mutated in place.
	Kube *KubeState `json:"kube,omitempty"`
	// Access is user devices on wg1 (access.go).
	Access AccessState `json:"access,omitzero"`
	// DNS is the cluster's DNS zone (dns.go); nil: the default. Replaced,
	// never mutated.
	DNS *DNSState `json:"dns,omitempty"`
	// Applied remembers recent command IDs, oldest first, for idempotency.
	Applied []string `json:"applied"`
	// Results of the remembered commands, so a retried command answers as
	// the first attempt did.
	Results map[string]*Result `json:"results"`
	// Registers are the test registers (register.go); always empty
	// outside builds with the jepsen tag.
	Registers map[string]*Register `json:"registers,omitempty"`
}

// NewState returns an empty state.
func NewState() *State {
	return &State{Nodes: map[string]*Node{}, Tokens: map[string]*Token{}, Results: map[string]*Result{}}
}

// View returns a deep copy without the deduplication bookkeeping (Applied,
// Results: thousands of entries no reader needs). Readers call it often:
// every reconcile, TLS handshake and API request. The event history is
// shared, not copied (up to a thousand events, ~110 kB, on every call was
// most of an idle agent's garbage): it is read-only, and record never
// changes an element once appended.
func (s *State) View() *State {
	c := &State{
		ClusterID:   s.ClusterID,
		CACertPEM:   slices.Clone(s.CACertPEM),
		CAKeyPEM:    slices.Clone(s.CAKeyPEM),
		CAKeySealed: s.CAKeySealed,
		Keys:        s.Keys.clone(),
		Nodes:       make(map[string]*Node, len(s.Nodes)),
		Tokens:      make(map[string]*Token, len(s.Tokens)),
		Events:      slices.Clip(s.Events), // a view's append reallocates
		Results:     map[string]*Result{},
		Cloud:       s.Cloud.clone(),
		Workloads:   s.Workloads.clone(),
		UI:          s.UI.clone(),
		Kube:        s.Kube.clone(),
		Access:      s.Access.clone(),
		Registers:   cloneRegisters(s.Registers),

		TokenPolicy: s.TokenPolicy,
		DNS:         s.DNS,
	}
	for id, n := range s.Nodes {
		c.Nodes[id] = n.clone()
	}
	for id, t := range s.Tokens {
		tt := *t
		c.Tokens[id] = &tt
	}
	return c
}

// Clone returns a deep copy, bookkeeping included (for snapshots).
func (s *State) Clone() *State {
	c := s.View()
	c.Applied = slices.Clone(s.Applied)
	for id, r := range s.Results {
		rr := *r
		if r.Node != nil {
			rr.Node = r.Node.clone()
		}
		c.Results[id] = &rr
	}
	return c
}

func (n *Node) clone() *Node {
	c := *n
	c.Endpoints = slices.Clone(n.Endpoints)
	c.Labels = maps.Clone(n.Labels)
	return &c
}

// NodeByName finds a node by its name.
func (s *State) NodeByName(name string) *Node {
	for _, n := range s.Nodes {
		if n.Name == name {
			return n
		}
	}
	return nil
}

// validFingerprint reports whether s is a certificate fingerprint as
// pki.Fingerprint writes it: 64 lowercase hex digits.
func validFingerprint(s string) bool {
	if len(s) != 64 {
		return false
	}
	for _, r := range s {
		if (r < '0' || r > '9') && (r < 'a' || r > 'f') {
			return false
		}
	}
	return true
}

// NodeBySerial finds the node holding the certificate with this serial.
func (s *State) NodeBySerial(serial string) *Node {
	for _, n := range s.Nodes {
		if n.CertSerial == serial {
			return n
		}
	}
	return nil
}

// SortedNodes returns the nodes ordered by mesh IP.
func (s *State) SortedNodes() []*Node {
	out := slices.Collect(maps.Values(s.Nodes))
	slices.SortFunc(out, func(a, b *Node) int { return a.MeshIP.Compare(b.MeshIP) })
	return out
}

// Command is one change to the state. ID and Time are set by the proposer:
// the FSM never reads the clock, so every replica computes the same result.
type Command struct {
	ID   string    `json:"id"`
	Time time.Time `json:"time"`
	Op   string    `json:"op"`

	Bootstrap   *BootstrapCmd   `json:"bootstrap,omitempty"`
	CreateToken *CreateTokenCmd `json:"create_token,omitempty"`
	Join        *JoinCmd        `json:"join,omitempty"`
	RemoveNode  *RemoveNodeCmd  `json:"remove_node,omitempty"`
	Event       *Event          `json:"event,omitempty"`
	UpdateNode  *UpdateNodeCmd  `json:"update_node,omitempty"`
	TokenPolicy *TokenPolicy    `json:"token_policy,omitempty"` // OpSetTokenPolicy (policy.go)
	RotateKeys  *RotateKeysCmd  `json:"rotate_keys,omitempty"`
	SealCAKey   *SealCAKeyCmd   `json:"seal_ca_key,omitempty"`
	DNS         *DNSCmd         `json:"dns,omitempty"` // OpSetDNSZone (dns.go)

	// Ops with the prefixes cloud_, workload_, ui_, kube_ and access_
	// carry their payload here and are applied by cloud.go, workloads.go,
	// ui.go, kube.go and access.go.
	Cloud    *CloudCmd    `json:"cloud,omitempty"`
	Workload *WorkloadCmd `json:"workload,omitempty"`
	UI       *UICmd       `json:"ui,omitempty"`
	Kube     *KubeCmd     `json:"kube,omitempty"`
	Access   *AccessCmd   `json:"access,omitempty"`

	// Register is OpTestRegister's payload (register.go).
	Register *RegisterCmd `json:"register,omitempty"`
}

// Command ops.
const (
	OpBootstrap   = "bootstrap"
	OpCreateToken = "create_token"
	OpJoin        = "join"
	OpRemoveNode  = "remove_node"
	OpUpdateNode  = "update_node"
	OpEvent       = "event"
)

// Event kinds.
const (
	EventNodeJoined    = "node_joined"
	EventNodeRemoved   = "node_removed"
	EventHealthChanged = "health_changed"
	EventLeaderChanged = "leader_changed"
	EventVoterPromoted = "voter_promoted"
	EventVoterDemoted  = "voter_demoted"
	EventPathChanged   = "path_changed"
)

// Event is one entry of the cluster's history. Seq is the Raft index that
// recorded it, so every node orders and numbers events alike.
type Event struct {
	Seq    uint64    `json:"seq"`
	Time   time.Time `json:"time"`
	Kind   string    `json:"kind"`
	Node   string    `json:"node,omitempty"` // node name the event is about
	From   string    `json:"from,omitempty"`
	To     string    `json:"to,omitempty"`
	Detail string    `json:"detail,omitempty"`
}

// BootstrapCmd creates the cluster with its first node.
type BootstrapCmd struct {
	ClusterID string `json:"cluster_id"`
	CACertPEM []byte `json:"ca_cert_pem"`
	CAKeyPEM  []byte `json:"ca_key_pem,omitempty"` // plaintext: init before sealing
	// CAKeySealed is the CA key sealed with the first data key.
	CAKeySealed string `json:"ca_key_sealed,omitempty"`
	Node        Node   `json:"node"` // MeshIP and PodCIDR as chosen by init
}

// CreateTokenCmd stores a new join token.
type CreateTokenCmd struct {
	Token Token `json:"token"`
}

// JoinCmd consumes a token, allocates the node's addresses and adds it: one
// command, so a token can never be spent without a node to show for it.
type JoinCmd struct {
	TokenID    string   `json:"token_id"`
	SecretHash string   `json:"secret_hash"`
	NodeID     string   `json:"node_id"`
	Name       string   `json:"name"`
	PublicKey  string   `json:"public_key"`
	Endpoints  []string `json:"endpoints"`
	Relay      bool     `json:"relay,omitempty"`
	CertSerial string   `json:"cert_serial"`
	// CertFingerprint is pki.Fingerprint of the certificate signed for
	// the joiner (optional: members of older versions do not send it).
	CertFingerprint string `json:"cert_fingerprint,omitempty"`
	Version         string `json:"version"`
}

// RemoveNodeCmd removes a node by name.
type RemoveNodeCmd struct {
	Name string `json:"name"`
}

// UpdateNodeCmd refreshes what a node reports about itself.
type UpdateNodeCmd struct {
	NodeID    string   `json:"node_id"`
	Endpoints []string `json:"endpoints,omitempty"`
	Version   string   `json:"version,omitempty"`
	Relay     *bool    `json:"relay,omitempty"`
	// CertFingerprint backfills the record's fingerprint when it has none
	// (a node of a cluster made before fingerprints were recorded); a
	// recorded fingerprint is never replaced.
	CertFingerprint string `json:"cert_fingerprint,omitempty"`
}

// Result is what applying a command produced.
type Result struct {
	Index uint64 `json:"index"`
	Err   string `json:"error,omitempty"`
	Node  *Node  `json:"node,omitempty"`
	// Data is an op-specific result (JSON), for ops outside this file.
	Data json.RawMessage `json:"data,omitempty"`
}

// Error returns the command's error, if any, as an error value. Known errors
// come back as their sentinel so errors.Is works across forwarding.
func (r *Result) Error() error {
	if r == nil || r.Err == "" {
		return nil
	}
	for _, e := range []error{ErrTokenInvalid, ErrTokenExpired, ErrTokenUsed, ErrNameTaken, ErrKeyTaken,
		ErrNoSuchNode, ErrNotBootstrap, ErrBootstrapped, ErrAddressSpace, ErrUnknownOp, ErrMalformedCmd,
		ErrTokenPolicy, ErrNoSuchWorkload, ErrWorkloadExists, ErrWorkloadInUse, ErrAppNameTaken, ErrRotationStale,
		ErrKubeEnabled, ErrKubeNotEnabled, ErrWorkloadsExist, ErrStale,
		ErrDeviceNameTaken, ErrNoSuchDevice, ErrDeviceKeyTaken, ErrDNSZone} {
		if r.Err == e.Error() {
			return e
		}
		if prefix, ok := strings.CutSuffix(r.Err, ": "+e.Error()); ok {
			return fmt.Errorf("%s: %w", prefix, e)
		}
	}
	return errors.New(r.Err)
}

// apply mutates s by cmd and returns the result. It is the whole of the
// state machine: pure, deterministic, and idempotent per command ID.
func (s *State) apply(index uint64, cmd *Command) *Result {
	if dedupe && cmd.ID != "" {
		if r, ok := s.Results[cmd.ID]; ok {
			return r
		}
	}
	res := &Result{Index: index}
	if err := s.applyOp(cmd, res); err != nil {
		res.Err = err.Error()
	} else {
		switch cmd.Op {
		case OpBootstrap, OpJoin:
			s.record(index, cmd.Time, Event{Kind: EventNodeJoined, Node: res.Node.Name, Detail: res.Node.MeshIP.String()})
		case OpRemoveNode:
			s.record(index, cmd.Time, Event{Kind: EventNodeRemoved, Node: res.Node.Name})
		case OpEvent:
			s.record(index, cmd.Time, *cmd.Event)
		}
		if !strings.HasPrefix(cmd.Op, "test_") {
			s.recordChange(index, cmd, res)
		}
	}
	if cmd.ID != "" {
		s.remember(cmd.ID, res)
	}
	return res
}

// record appends an event, dropping the oldest beyond the window. Views
// share the array (View), so it writes only past the end of the history,
// where no view reaches, and drops by slicing: the array is replaced when
// append outgrows it.
func (s *State) record(index uint64, at time.Time, e Event) {
	e.Seq, e.Time = index, at
	s.Events = append(s.Events, e)
	if over := len(s.Events) - eventWindow; over > 0 {
		s.Events = s.Events[over:]
	}
}

func (s *State) remember(id string, res *Result) {
	s.Applied = append(s.Applied, id)
	s.Results[id] = res
	for len(s.Applied) > appliedWindow {
		delete(s.Results, s.Applied[0])
		s.Applied = s.Applied[1:]
	}
}

func (s *State) applyOp(cmd *Command, res *Result) error {
	if cmd.Op != OpBootstrap && s.ClusterID == "" {
		return ErrNotBootstrap
	}
	switch cmd.Op {
	case OpBootstrap:
		c := cmd.Bootstrap
		if c == nil || c.ClusterID == "" || c.Node.ID == "" || !c.Node.MeshIP.IsValid() {
			return ErrMalformedCmd
		}
		if s.ClusterID != "" {
			return ErrBootstrapped
		}
		s.ClusterID = c.ClusterID
		s.CACertPEM = slices.Clone(c.CACertPEM)
		s.CAKeyPEM = slices.Clone(c.CAKeyPEM)
		s.CAKeySealed = c.CAKeySealed
		n := c.Node.clone()
		n.JoinedAt = cmd.Time
		s.Nodes[n.ID] = n
		res.Node = n.clone()
		return nil

	case OpCreateToken:
		c := cmd.CreateToken
		if c == nil || c.Token.ID == "" || c.Token.SecretHash == "" || c.Token.UsesLeft < 1 {
			return ErrMalformedCmd
		}
		if _, ok := s.Tokens[c.Token.ID]; ok {
			return fmt.Errorf("token %s: %w", c.Token.ID, errAlreadyExists)
		}
		if err := s.checkTokenPolicy(cmd.Time, &c.Token); err != nil {
			return err
		}
		t := c.Token
		t.CreatedAt = cmd.Time
		s.Tokens[t.ID] = &t
		s.expireTokens(cmd.Time)
		return nil

	case OpJoin:
		return s.applyJoin(cmd, res)

	case OpSetTokenPolicy:
		return s.applySetTokenPolicy(cmd)

	case OpSetDNSZone:
		return s.applySetDNSZone(cmd)

	case OpEvent:
		if cmd.Event == nil || cmd.Event.Kind == "" {
			return ErrMalformedCmd
		}
		return nil

	case OpRemoveNode:
		c := cmd.RemoveNode
		if c == nil {
			return ErrMalformedCmd
		}
		n := s.NodeByName(c.Name)
		if n == nil {
			return ErrNoSuchNode
		}
		delete(s.Nodes, n.ID)
		// Kube.Etcd keeps the node's member: the leader removes it from
		// etcd before it commits the list without it (kube.go).
		// Removal is a rotation: the removed node holds the data key.
		s.Keys.RotatePending = true
		res.Node = n
		return nil

	case OpRotateKeys:
		return s.applyRotateKeys(cmd)

	case OpSealCAKey:
		return s.applySealCAKey(cmd)

	case OpUpdateNode:
		c := cmd.UpdateNode
		if c == nil || (c.CertFingerprint != "" && !validFingerprint(c.CertFingerprint)) {
			return ErrMalformedCmd
		}
		n, ok := s.Nodes[c.NodeID]
		if !ok {
			return ErrNoSuchNode
		}
		if c.Endpoints != nil {
			n.Endpoints = slices.Clone(c.Endpoints)
		}
		if c.Version != "" {
			n.Version = c.Version
		}
		if c.Relay != nil {
			n.Relay = *c.Relay
		}
		if c.CertFingerprint != "" && n.CertFingerprint == "" {
			n.CertFingerprint = c.CertFingerprint
		}
		res.Node = n.clone()
		return nil
	}
	switch {
	case strings.HasPrefix(cmd.Op, "cloud_"):
		return s.applyCloud(cmd, res)
	case strings.HasPrefix(cmd.Op, "workload_"):
		return s.applyWorkload(cmd, res)
	case strings.HasPrefix(cmd.Op, "ui_"):
		return s.applyUI(cmd, res)
	case strings.HasPrefix(cmd.Op, "kube_"):
		return s.applyKube(cmd, res)
	case strings.HasPrefix(cmd.Op, "access_"):
		return s.applyAccess(cmd, res)
	case strings.HasPrefix(cmd.Op, "test_"):
		return s.applyTest(cmd, res)
	}
	return ErrUnknownOp
}

func (s *State) applyJoin(cmd *Command, res *Result) error {
	c := cmd.Join
	if c == nil || c.NodeID == "" || c.Name == "" || c.PublicKey == "" || c.CertSerial == "" {
		return ErrMalformedCmd
	}
	if c.CertFingerprint != "" && !validFingerprint(c.CertFingerprint) {
		return ErrMalformedCmd
	}
	t, ok := s.Tokens[c.TokenID]
	if !ok || subtle.ConstantTimeCompare([]byte(t.SecretHash), []byte(c.SecretHash)) != 1 {
		return ErrTokenInvalid
	}
	if t.UsesLeft < 1 {
		return ErrTokenUsed
	}
	if !cmd.Time.Before(t.ExpiresAt) {
		return ErrTokenExpired
	}
	if s.NodeByName(c.Name) != nil {
		return ErrNameTaken
	}
	for _, n := range s.Nodes {
		if n.PublicKey == c.PublicKey {
			return ErrKeyTaken
		}
		if n.ID == c.NodeID {
			return fmt.Errorf("node id %s: %w", c.NodeID, errAlreadyExists)
		}
	}
	meshIP, err := s.allocMeshIP()
	if err != nil {
		return err
	}
	pod, err := s.allocPodCIDR()
	if err != nil {
		return err
	}
	// A spent token stays (UsesLeft 0) so a reuse reports "already used",
	// not "invalid"; expireTokens drops it a day after it expires.
	t.UsesLeft--
	n := &Node{
		ID:         c.NodeID,
		Name:       c.Name,
		PublicKey:  c.PublicKey,
		MeshIP:     meshIP,
		PodCIDR:    pod,
		Endpoints:  slices.Clone(c.Endpoints),
		Relay:      c.Relay,
		CertSerial: c.CertSerial,
		Version:    c.Version,
		JoinedAt:   cmd.Time,

		CertFingerprint: c.CertFingerprint,
	}
	s.Nodes[n.ID] = n
	s.expireTokens(cmd.Time)
	res.Node = n.clone()
	return nil
}

// expireTokens forgets tokens that expired over a day ago; until then a late
// attempt still gets the precise "expired" error.
func (s *State) expireTokens(now time.Time) {
	for id, t := range s.Tokens {
		if now.Sub(t.ExpiresAt) > 24*time.Hour {
			delete(s.Tokens, id)
		}
	}
}

// allocMeshIP returns the lowest free /32 in the mesh prefix, outside the
// user-access range. Addresses are never reused while their node exists.
func (s *State) allocMeshIP() (netip.Addr, error) {
	used := make(map[netip.Addr]bool, len(s.Nodes))
	for _, n := range s.Nodes {
		used[n.MeshIP] = true
	}
	for a := MeshPrefix.Addr().Next(); MeshPrefix.Contains(a); a = a.Next() {
		if UserAccessPrefix.Contains(a) || isHostZeroOrBroadcast(a) {
			continue
		}
		if !used[a] {
			return a, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("mesh network %s: %w", MeshPrefix, ErrAddressSpace)
}

// FirstMeshIP is what init gives the first node.
func FirstMeshIP() netip.Addr { return MeshPrefix.Addr().Next() }

// FirstPodCIDR is what init gives the first node.
func FirstPodCIDR() netip.Prefix { return podCIDR(1) }

func isHostZeroOrBroadcast(a netip.Addr) bool {
	b := a.As4()
	return b[3] == 0 || b[3] == 255
}

func podCIDR(n int) netip.Prefix {
	b := PodPrefix.Addr().As4()
	b[2] = byte(n)
	return netip.PrefixFrom(netip.AddrFrom4(b), 24)
}

// allocPodCIDR returns the lowest free 172.25.N.0/24 (N from 1; 0 last).
func (s *State) allocPodCIDR() (netip.Prefix, error) {
	used := make(map[netip.Prefix]bool, len(s.Nodes))
	for _, n := range s.Nodes {
		used[n.PodCIDR] = true
	}
	for i := 1; i <= 256; i++ {
		p := podCIDR(i % 256)
		if !used[p] {
			return p, nil
		}
	}
	return netip.Prefix{}, fmt.Errorf("pod network %s: %w", PodPrefix, ErrAddressSpace)
}
