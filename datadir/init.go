package datadir

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"time"

	"github.com/runos/runos-agent/mesh"
	"github.com/runos/runos-agent/pki"
	"github.com/runos/runos-agent/raftstore"
	"github.com/runos/runos-agent/seal"
)

// DefaultListenPort is the underlay port: UDP for WireGuard, TCP for joins.
const DefaultListenPort = 51820

// NodeCertValidity is how long the cluster CA signs a node certificate for.
const NodeCertValidity = 10 * 365 * 24 * time.Hour

// NodeOptions are what init and join share.
type NodeOptions struct {
	DataDir    string
	Name       string
	Net        string // auto|kernel|userspace; default auto
	ListenPort int    // default DefaultListenPort
	// Advertise is HOST[:PORT] peers use to reach this node; default: every
	// non-loopback interface address (or 127.0.0.1 when there is none).
	Advertise []string
	// Relay is auto|on|off (default auto).
	Relay string
	// STUN lists extra STUN servers; never a public default.
	STUN []string
}

var nameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// ValidName reports whether name is a valid node name (a DNS label).
func ValidName(name string) bool { return nameRE.MatchString(name) }

// Validate checks the options and fills in defaults, including the
// advertised endpoints (host:port) when none were given.
func (o *NodeOptions) Validate() error {
	if o.DataDir == "" {
		return fmt.Errorf("--data-dir is required")
	}
	if !ValidName(o.Name) {
		return fmt.Errorf("invalid node name %q: use lowercase letters, digits and '-' (a DNS label)", o.Name)
	}
	switch o.Net {
	case "":
		o.Net = "auto"
	case "auto", "kernel", "userspace":
	default:
		return fmt.Errorf("invalid --net %q: want auto, kernel or userspace", o.Net)
	}
	if o.ListenPort == 0 {
		o.ListenPort = DefaultListenPort
	}
	switch o.Relay {
	case "":
		o.Relay = "auto"
	case "auto", "on", "off":
	default:
		return fmt.Errorf("invalid --relay %q: want auto, on or off", o.Relay)
	}
	for _, s := range o.STUN {
		if _, _, err := net.SplitHostPort(s); err != nil {
			return fmt.Errorf("invalid --stun %q: want HOST:PORT", s)
		}
	}
	if o.ListenPort < 1 || o.ListenPort > 65535 {
		return fmt.Errorf("invalid --listen-port %d", o.ListenPort)
	}
	eps, err := advertisedEndpoints(o.Advertise, o.ListenPort)
	if err != nil {
		return err
	}
	o.Advertise = eps
	return nil
}

// advertisedEndpoints turns --advertise values into host:port endpoints.
func advertisedEndpoints(adv []string, port int) ([]string, error) {
	var out []string
	for _, a := range adv {
		host, p, err := net.SplitHostPort(a)
		if err != nil {
			host, p = a, strconv.Itoa(port)
		}
		if host == "" {
			return nil, fmt.Errorf("invalid --advertise %q", a)
		}
		if _, err := strconv.ParseUint(p, 10, 16); err != nil {
			return nil, fmt.Errorf("invalid --advertise %q: bad port", a)
		}
		out = append(out, net.JoinHostPort(host, p))
	}
	if len(out) > 0 {
		return out, nil
	}
	addrs, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		pfx, err := netip.ParsePrefix(a.String())
		if err != nil {
			continue
		}
		ip := pfx.Addr()
		if ip.Is4() && !ip.IsLoopback() && !ip.IsLinkLocalUnicast() && !raftstore.MeshPrefix.Contains(ip) {
			out = append(out, netip.AddrPortFrom(ip, uint16(port)).String())
		}
	}
	if len(out) == 0 {
		out = []string{netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(port)).String()}
	}
	return out, nil
}

// Init creates a new cluster in opts.DataDir with this node as its first
// member and sole Raft voter; version is the agent's, recorded in the
// node's record. `run` then brings it up.
func Init(opts NodeOptions, version string) (*NodeConfig, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	if err := CheckFresh(opts.DataDir); err != nil {
		return nil, err
	}
	clusterID := randomHex(8)
	nodeID := NewNodeID()
	ca, err := pki.NewCA(clusterID)
	if err != nil {
		return nil, err
	}
	creds, err := NewCredentials(opts.Name)
	if err != nil {
		return nil, err
	}
	wgKey, nodeKeyPEM := creds.WGKey, creds.NodeKeyPEM
	dataKey, err := seal.NewKey()
	if err != nil {
		return nil, err
	}
	certPEM, serial, err := ca.SignCSR(creds.CSR, opts.Name, nil, NodeCertValidity)
	if err != nil {
		return nil, err
	}
	fingerprint, err := pki.FingerprintPEM(certPEM)
	if err != nil {
		return nil, err
	}
	cfg := &NodeConfig{
		ClusterID:     clusterID,
		NodeID:        nodeID,
		Name:          opts.Name,
		Net:           opts.Net,
		ListenPort:    opts.ListenPort,
		Endpoints:     opts.Advertise,
		MeshIP:        raftstore.FirstMeshIP(),
		PodCIDR:       raftstore.FirstPodCIDR(),
		CAFingerprint: pki.Fingerprint(ca.Cert),
		Relay:         opts.Relay,
		STUN:          opts.STUN,
	}
	bootstrap := &raftstore.Command{
		ID: "bootstrap-" + clusterID,
		Op: raftstore.OpBootstrap,
		Bootstrap: &raftstore.BootstrapCmd{
			ClusterID: clusterID,
			CACertPEM: ca.CertPEM,
			CAKeyPEM:  ca.KeyPEM,
			Node: raftstore.Node{
				ID: nodeID, Name: opts.Name, PublicKey: wgKey.PublicKey().String(),
				MeshIP: cfg.MeshIP, PodCIDR: cfg.PodCIDR, Endpoints: opts.Advertise,
				CertSerial: serial, CertFingerprint: fingerprint, Version: version,
			},
		},
	}
	if err := os.MkdirAll(opts.DataDir, 0o700); err != nil {
		return nil, err
	}
	raftAddr := netip.AddrPortFrom(cfg.MeshIP, raftstore.DefaultPort)
	if err := raftstore.Bootstrap(filepath.Join(opts.DataDir, DirRaft), nodeID, raftAddr); err != nil {
		return nil, fmt.Errorf("bootstrap raft: %w", err)
	}
	files := []struct {
		name string
		data []byte
	}{
		{FileWGKey, []byte(wgKey.String() + "\n")},
		{FileNodeKey, nodeKeyPEM},
		{FileNodeCert, certPEM},
		{FileCACert, ca.CertPEM},
		{FileDataKey, []byte(dataKey.String() + "\n")},
	}
	for _, f := range files {
		if err := WriteFileAtomic(filepath.Join(opts.DataDir, f.name), f.data, 0o600); err != nil {
			return nil, err
		}
	}
	if err := WriteJSON(filepath.Join(opts.DataDir, FileInit), bootstrap, 0o600); err != nil {
		return nil, err
	}
	// The UI's admin credential follows the bootstrap into Raft (the
	// agent applies ui-init.json once the cluster exists).
	adminPassword, err := writeUIInit(opts.DataDir, dataKey)
	if err != nil {
		return nil, err
	}
	if err := WriteJSON(filepath.Join(opts.DataDir, FileConfig), cfg, 0o600); err != nil {
		return nil, err
	}
	cfg.AdminPassword = adminPassword
	return cfg, nil
}

// Credentials are what a new node generates for itself: its WireGuard key,
// its TLS key and a CSR for the cluster CA to sign.
type Credentials struct {
	WGKey      mesh.Key
	NodeKeyPEM []byte
	CSR        []byte // PEM
}

// NewCredentials generates a node's keys and a CSR for the name.
func NewCredentials(name string) (*Credentials, error) {
	wgKey, err := mesh.GeneratePrivateKey()
	if err != nil {
		return nil, err
	}
	nodeKey, nodeKeyPEM, err := pki.NewKey()
	if err != nil {
		return nil, err
	}
	csr, err := pki.NewCSR(nodeKey, name)
	if err != nil {
		return nil, err
	}
	return &Credentials{WGKey: wgKey, NodeKeyPEM: nodeKeyPEM, CSR: csr}, nil
}
