package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"sync"

	"github.com/runos/runos-agent/api"
	"github.com/runos/runos-agent/datadir"
	"github.com/runos/runos-agent/freeport"
)

// DevOptions configure an in-process development cluster.
type DevOptions struct {
	Nodes    int
	Dir      string // parent of the nodes' data dirs
	BasePort int    // node i listens on BasePort+i (0: free ports)
	UIListen string // node 0's UI address ("" : no UIs); the others pick free ports on its host
	// MetricsListen is node 0's /metrics address ("" : none); the others
	// pick free ports on its host.
	MetricsListen string
	Tuning        Tuning
	// Node, if set, places node i: it is asked when the node is created
	// (for its address) and each time it starts (for its Deps). Nil: every
	// node on 127.0.0.1 with a real UDP socket. agenttest puts each node on
	// a natlab host.
	Node func(i int) DevNode
}

// DevNode is where one node of a dev cluster lives.
type DevNode struct {
	// Addr is the loopback address the node advertises; its join endpoint
	// listens there and Deps.Underlay must receive there. Zero: 127.0.0.1.
	Addr netip.Addr
	// Deps for one start of the node; a nil Log is StartDev's logger.
	Deps Deps
}

// DevCluster is N agents in one process, userspace mode, on loopback.
type DevCluster struct {
	// Agents holds the running nodes; a stopped node's entry is nil.
	Agents []*Agent
	Dirs   []string
	// AdminPassword is the UI's admin password when this call created the
	// cluster ("" on a restart: it is shown once).
	AdminPassword string

	opts DevOptions
	log  *slog.Logger

	accessMu    sync.Mutex
	accessPorts map[int]int // node -> its wg1 port, kept across restarts; guarded by accessMu
}

// StartDev creates (or restarts, if Dir already holds one) a dev cluster:
// node 0 runs init, the others join it with a token, exactly as separate
// machines would, through the same join endpoint.
func StartDev(ctx context.Context, opts DevOptions, log *slog.Logger) (*DevCluster, error) {
	if opts.Nodes < 1 {
		return nil, errors.New("dev: need at least one node")
	}
	if log == nil {
		return nil, errors.New("dev: logger is required")
	}
	dc := &DevCluster{opts: opts, log: log}
	for i := range opts.Nodes {
		dir := filepath.Join(opts.Dir, fmt.Sprintf("node%d", i))
		dc.Dirs = append(dc.Dirs, dir)
		dc.Agents = append(dc.Agents, nil)
		_, err := datadir.Load(dir)
		fresh := err != nil
		if fresh {
			var member *Agent
			if i > 0 {
				member = dc.Agents[0]
			}
			err = dc.create(ctx, i, member)
		}
		if err == nil {
			_, err = dc.StartNode(ctx, i)
		}
		// A new node must be in before the next one joins through node 0.
		// Restarted nodes wait below, all together: alone, none has quorum.
		if err == nil && fresh {
			err = dc.Agents[i].WaitReady(ctx)
		}
		if err != nil {
			dc.Close()
			return nil, fmt.Errorf("dev node %d: %w", i, err)
		}
	}
	for i, a := range dc.Agents {
		if err := a.WaitReady(ctx); err != nil {
			dc.Close()
			return nil, fmt.Errorf("dev node %d: %w", i, err)
		}
	}
	return dc, nil
}

// create makes node i's data dir: init when member is nil, else a join
// through member with a one-use token.
func (dc *DevCluster) create(ctx context.Context, i int, member *Agent) error {
	place := dc.place(i)
	host := place.Addr
	if !host.IsValid() {
		host = netip.MustParseAddr("127.0.0.1")
	}
	port := 0
	if dc.opts.BasePort > 0 {
		port = dc.opts.BasePort + i
	} else {
		var err error
		if port, err = freePort(host); err != nil {
			return err
		}
	}
	no := datadir.NodeOptions{
		DataDir: dc.Dirs[i], Name: fmt.Sprintf("node%d", i), Net: "userspace", ListenPort: port,
		Advertise: []string{netip.AddrPortFrom(host, uint16(port)).String()},
	}
	if member == nil {
		cfg, err := datadir.Init(no, Version)
		if err == nil {
			dc.AdminPassword = cfg.AdminPassword
		}
		return err
	}
	tok, err := member.CreateToken(ctx, api.TokenRequest{TTL: "10m", Uses: 1})
	if err != nil {
		return err
	}
	_, err = Join(ctx, JoinOptions{NodeOptions: no, Token: tok.Token, Member: member.cfg.Endpoints[0]})
	return err
}

func (dc *DevCluster) place(i int) DevNode {
	var p DevNode
	if dc.opts.Node != nil {
		p = dc.opts.Node(i)
	}
	if p.Deps.Log == nil {
		p.Deps.Log = dc.log
	}
	return p
}

// Config is how node i is run: its data dir, userspace mode, the cluster's
// tuning and listeners.
func (dc *DevCluster) Config(i int) Config {
	return Config{
		DataDir: dc.Dirs[i], Net: "userspace", Tuning: dc.opts.Tuning,
		UIListen:      listenFor(dc.opts.UIListen, i),
		MetricsListen: listenFor(dc.opts.MetricsListen, i),
		AccessPort:    dc.AccessPort(i),
	}
}

// AccessPort is node i's wg1 UDP port on the host: its own, as the nodes
// share one host (0 when none is free: the default port then).
func (dc *DevCluster) AccessPort(i int) int {
	dc.accessMu.Lock()
	defer dc.accessMu.Unlock()
	if p, ok := dc.accessPorts[i]; ok {
		return p
	}
	if dc.accessPorts == nil {
		dc.accessPorts = map[int]int{}
	}
	p, _ := freePort(netip.MustParseAddr("127.0.0.1"))
	dc.accessPorts[i] = p
	return p
}

// listenFor gives node 0 addr itself and the others a free port on its host.
func listenFor(addr string, i int) string {
	if addr == "" || i == 0 {
		return addr
	}
	host, _, _ := net.SplitHostPort(addr)
	return net.JoinHostPort(host, "0")
}

// StartNode starts node i from its data dir; it must not be running.
func (dc *DevCluster) StartNode(ctx context.Context, i int) (*Agent, error) {
	if dc.Agents[i] != nil {
		return nil, fmt.Errorf("dev node %d is running", i)
	}
	a, err := New(dc.Config(i), dc.place(i).Deps)
	if err != nil {
		return nil, err
	}
	if err := a.Start(ctx); err != nil {
		return nil, err
	}
	dc.Agents[i] = a
	return a, nil
}

// StopNode stops node i cleanly (its goodbye is sent); a stopped node is a
// no-op.
func (dc *DevCluster) StopNode(i int) error {
	a := dc.Agents[i]
	if a == nil {
		return nil
	}
	dc.Agents[i] = nil
	return a.Close()
}

// AddNode joins a new node through via (nil: the first running node),
// starts it and waits until it is in the state. It returns the new index.
func (dc *DevCluster) AddNode(ctx context.Context, via *Agent) (int, error) {
	if via == nil {
		for _, a := range dc.Agents {
			if a != nil {
				via = a
				break
			}
		}
		if via == nil {
			return 0, errors.New("dev: no running node to join through")
		}
	}
	i := len(dc.Dirs)
	dc.Dirs = append(dc.Dirs, filepath.Join(dc.opts.Dir, fmt.Sprintf("node%d", i)))
	dc.Agents = append(dc.Agents, nil)
	err := dc.create(ctx, i, via)
	if err == nil {
		_, err = dc.StartNode(ctx, i)
	}
	if err == nil {
		err = dc.Agents[i].WaitReady(ctx)
	}
	if err != nil {
		return i, fmt.Errorf("dev node %d: %w", i, err)
	}
	return i, nil
}

// Close stops every running agent.
func (dc *DevCluster) Close() error {
	var errs []error
	for i := len(dc.Agents) - 1; i >= 0; i-- {
		errs = append(errs, dc.StopNode(i))
	}
	return errors.Join(errs...)
}

// FreePort returns a port that is free for both TCP and UDP on 127.0.0.1
// right now (the underlay uses the same number for both).
func FreePort() (int, error) { return freePort(netip.MustParseAddr("127.0.0.1")) }

func freePort(host netip.Addr) (int, error) { return freeport.Pick(host) }
