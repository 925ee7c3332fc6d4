package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"

	"github.com/runos/runos-agent/api"
)

// DevOptions configure an in-process development cluster.
type DevOptions struct {
	Nodes    int
	Dir      string // parent of the nodes' data dirs
	BasePort int    // node i listens on BasePort+i (0: free ports)
	UIListen string // node 0's UI address ("" : no UIs); the others pick free ports
	Tuning   Tuning
}

// DevCluster is N agents in one process, userspace mode, on loopback.
type DevCluster struct {
	Agents []*Agent
	Dirs   []string
	// AdminPassword is the UI's admin password when this call created the
	// cluster ("" on a restart: it is shown once).
	AdminPassword string
}

// StartDev creates (or restarts, if Dir already holds one) a dev cluster:
// node 0 runs init, the others join it with a token, exactly as separate
// machines would, through the same join endpoint.
func StartDev(ctx context.Context, opts DevOptions, log *slog.Logger) (*DevCluster, error) {
	if opts.Nodes < 1 {
		return nil, errors.New("dev: need at least one node")
	}
	dc := &DevCluster{}
	for i := range opts.Nodes {
		dir := filepath.Join(opts.Dir, fmt.Sprintf("node%d", i))
		dc.Dirs = append(dc.Dirs, dir)
		_, err := LoadNodeConfig(dir)
		fresh := err != nil
		if fresh {
			port := 0
			if opts.BasePort > 0 {
				port = opts.BasePort + i
			} else if port, err = FreePort(); err != nil {
				dc.Close()
				return nil, err
			}
			no := NodeOptions{
				DataDir: dir, Name: fmt.Sprintf("node%d", i), Net: "userspace", ListenPort: port,
				Advertise: []string{fmt.Sprintf("127.0.0.1:%d", port)},
			}
			if i == 0 {
				var cfg *NodeConfig
				if cfg, err = Init(no); err == nil {
					dc.AdminPassword = cfg.AdminPassword
				}
			} else {
				var tok *api.Token
				if tok, err = dc.Agents[0].CreateToken(ctx, api.TokenRequest{TTL: "10m", Uses: 1}); err == nil {
					_, err = Join(ctx, JoinOptions{NodeOptions: no, Token: tok.Token, Member: dc.Agents[0].cfg.Endpoints[0]})
				}
			}
			if err != nil {
				dc.Close()
				return nil, fmt.Errorf("dev node %d: %w", i, err)
			}
		}
		uiListen := opts.UIListen
		if uiListen != "" && i > 0 {
			host, _, _ := net.SplitHostPort(uiListen)
			uiListen = net.JoinHostPort(host, "0")
		}
		a, err := New(Config{DataDir: dir, Net: "userspace", UIListen: uiListen, Tuning: opts.Tuning}, log)
		if err == nil {
			err = a.Start(ctx)
		}
		if err != nil {
			dc.Close()
			return nil, fmt.Errorf("dev node %d: %w", i, err)
		}
		dc.Agents = append(dc.Agents, a)
		// A new node must be in before the next one joins through node 0.
		// Restarted nodes wait below, all together: alone, none has quorum.
		if fresh {
			if err := a.WaitReady(ctx); err != nil {
				dc.Close()
				return nil, fmt.Errorf("dev node %d: %w", i, err)
			}
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

// Crash stops node i without its gossip goodbye, as kill -9 would, so the
// others see it go degraded, then offline (tests, demos).
func (dc *DevCluster) Crash(i int) error {
	dc.Agents[i].crashOnClose = true
	return dc.Agents[i].Close()
}

// Close stops every agent.
func (dc *DevCluster) Close() error {
	var errs []error
	for i := len(dc.Agents) - 1; i >= 0; i-- {
		errs = append(errs, dc.Agents[i].Close())
	}
	return errors.Join(errs...)
}

// FreePort returns a port that is free for both TCP and UDP on 127.0.0.1
// right now (the underlay uses the same number for both).
func FreePort() (int, error) {
	for range 50 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		port := ln.Addr().(*net.TCPAddr).Port
		pc, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", port))
		ln.Close()
		if err == nil {
			pc.Close()
			return port, nil
		}
	}
	return 0, errors.New("no free port")
}
