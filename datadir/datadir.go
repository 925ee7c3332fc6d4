// Package datadir owns a node's data dir: its layout (the file names
// below), the node's identity in config.json (NodeConfig, Load), how files
// are written (atomically, readable by the owner only), the peer list saved
// for restarts, creating a cluster from scratch (Init), the join token
// format, and loading the node's keys and certificates for the agent. It
// does no networking: joining an existing cluster is the join flow's, which
// writes its results here with the same helpers.
package datadir

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/runos/runos-agent/raftstore"
)

// Files in a data dir. config.json is written last by init and join, so its
// presence means "initialised".
const (
	FileConfig   = "config.json"
	FileWGKey    = "wg.key"
	FileNodeKey  = "node.key"
	FileNodeCert = "node.crt"
	FileCACert   = "ca.crt"
	FileDataKey  = "data.key" // seals secrets kept in the Raft state
	FilePeers    = "peers.json"
	FileInit     = "init.json" // the bootstrap command until the first leader applies it
	// FileUIInit holds init's admin credential command (hash and sealed
	// session key, never the password) until the cluster has applied it.
	FileUIInit = "ui-init.json"
	DirRaft    = "raft"
)

// NodeConfig is what init or join leave in the data dir for run.
type NodeConfig struct {
	ClusterID     string       `json:"cluster_id"`
	NodeID        string       `json:"node_id"`
	Name          string       `json:"name"`
	Net           string       `json:"net"` // auto|kernel|userspace
	ListenPort    int          `json:"listen_port"`
	Endpoints     []string     `json:"endpoints"` // advertised underlay host:port
	MeshIP        netip.Addr   `json:"mesh_ip"`
	PodCIDR       netip.Prefix `json:"pod_cidr"`
	CAFingerprint string       `json:"ca_fingerprint"`
	// Relay is auto|on|off: whether this node relays for members that
	// cannot reach each other (auto: when it is publicly reachable).
	Relay string `json:"relay,omitempty"`
	// STUN lists extra STUN servers (host:port) besides the members.
	STUN []string `json:"stun,omitempty"`
	// AdminPassword is the web UI's admin password, set only in what Init
	// returns (to be shown once) and never written anywhere.
	AdminPassword string `json:"-"`
}

// ErrNotInitialised means the data dir has no config.json.
var ErrNotInitialised = errors.New("data dir is not initialised (run `runos-agent init` or `runos-agent join` first)")

// Load reads dir/config.json.
func Load(dir string) (*NodeConfig, error) {
	b, err := os.ReadFile(filepath.Join(dir, FileConfig))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s: %w", dir, ErrNotInitialised)
	}
	if err != nil {
		return nil, err
	}
	var c NodeConfig
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, fmt.Errorf("%s: corrupt %s: %w", dir, FileConfig, err)
	}
	if c.ClusterID == "" || c.NodeID == "" || !c.MeshIP.IsValid() {
		return nil, fmt.Errorf("%s: incomplete %s", dir, FileConfig)
	}
	return &c, nil
}

// CheckFresh refuses a data dir that already belongs to a node.
func CheckFresh(dir string) error {
	c, err := Load(dir)
	if err == nil {
		return fmt.Errorf("data dir %s is already initialised for node %q of cluster %s; use another --data-dir or remove it", dir, c.Name, c.ClusterID)
	}
	if !errors.Is(err, ErrNotInitialised) {
		return err
	}
	if _, err := os.Stat(filepath.Join(dir, DirRaft)); err == nil {
		return fmt.Errorf("data dir %s holds Raft data but no config.json; refusing to overwrite it", dir)
	}
	return nil
}

// WriteFileAtomic writes via a temp file and rename, so a crash never
// leaves a half-written file behind.
func WriteFileAtomic(path string, data []byte, mode os.FileMode) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, mode); err != nil {
		return err
	}
	f, err := os.Open(tmp)
	if err == nil {
		f.Sync()
		f.Close()
	}
	return os.Rename(tmp, path)
}

// WriteJSON writes v as indented JSON with WriteFileAtomic.
func WriteJSON(path string, v any, mode os.FileMode) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return WriteFileAtomic(path, append(b, '\n'), mode)
}

// ReadJSON decodes the JSON file at path into v.
func ReadJSON(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, v)
}

// savedPeers is the last peer list the node knew, so a restart (even of the
// whole cluster at once) can bring WireGuard up before Raft has a leader.
type savedPeers struct {
	Nodes []*raftstore.Node `json:"nodes"`
}

// LoadPeers reads the saved peer list; a dir without one has none.
func LoadPeers(dir string) ([]*raftstore.Node, error) {
	b, err := os.ReadFile(filepath.Join(dir, FilePeers))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var p savedPeers
	if err := json.Unmarshal(b, &p); err != nil {
		return nil, fmt.Errorf("corrupt %s: %w", FilePeers, err)
	}
	return p.Nodes, nil
}

// SavePeers replaces the saved peer list.
func SavePeers(dir string, nodes []*raftstore.Node) error {
	return WriteJSON(filepath.Join(dir, FilePeers), savedPeers{Nodes: nodes}, 0o600)
}
