// Command runos-agent runs a node of a RunOS cluster and is its CLI.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/runos/runos-agent/agent"
	"github.com/runos/runos-agent/api"
	"github.com/runos/runos-agent/datadir"
	"github.com/runos/runos-agent/nat"
	"github.com/runos/runos-agent/procmem"
)

const defaultDataDir = "/var/lib/runos-agent"

func main() {
	if err := newApp(os.Stdout, os.Stderr).Run(os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "runos-agent:", err)
		os.Exit(1)
	}
}

func dataDirFlag() *cli.StringFlag {
	return &cli.StringFlag{Name: "data-dir", Aliases: []string{"d"}, Value: defaultDataDir, EnvVars: []string{"RUNOS_DATA_DIR"}, Usage: "the node's data dir"}
}

func nodeFlags() []cli.Flag {
	return []cli.Flag{
		dataDirFlag(),
		&cli.StringFlag{Name: "name", Required: true, EnvVars: []string{"RUNOS_NAME"}, Usage: "node name (a DNS label, unique in the cluster)"},
		&cli.StringFlag{Name: "net", Value: "auto", EnvVars: []string{"RUNOS_NET"}, Usage: "overlay: kernel (TUN wg0, needs root), userspace (no privileges) or auto"},
		&cli.IntFlag{Name: "listen-port", Value: datadir.DefaultListenPort, EnvVars: []string{"RUNOS_LISTEN_PORT"}, Usage: "underlay port: UDP for WireGuard, TCP for joins"},
		&cli.StringSliceFlag{Name: "advertise", EnvVars: []string{"RUNOS_ADVERTISE"}, Usage: "HOST[:PORT] peers reach this node at (repeatable; default: interface addresses)"},
		&cli.StringFlag{Name: "relay", Value: "auto", EnvVars: []string{"RUNOS_RELAY"}, Usage: "relay for members that cannot reach each other: auto (when publicly reachable), on, off"},
		&cli.StringSliceFlag{Name: "stun", EnvVars: []string{"RUNOS_STUN"}, Usage: "extra STUN server HOST:PORT (repeatable); members are STUN servers already, there is no public default"},
	}
}

func nodeOptions(c *cli.Context) datadir.NodeOptions {
	return datadir.NodeOptions{
		DataDir: c.String("data-dir"), Name: c.String("name"), Net: c.String("net"),
		ListenPort: c.Int("listen-port"), Advertise: c.StringSlice("advertise"),
		Relay: c.String("relay"), STUN: c.StringSlice("stun"),
	}
}

func newLogger(c *cli.Context, w io.Writer) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(c.String("log-level"))); err != nil {
		return nil, fmt.Errorf("invalid --log-level %q: want debug, info, warn or error", c.String("log-level"))
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: lvl})), nil
}

func newApp(stdout, stderr io.Writer) *cli.App {
	return &cli.App{
		Name:      "runos-agent",
		Usage:     "run a node of a RunOS cluster: WireGuard mesh, gossip, Raft state",
		Version:   agent.Version,
		Writer:    stdout,
		ErrWriter: stderr,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "log-level", Value: "info", EnvVars: []string{"RUNOS_LOG_LEVEL"}, Usage: "debug, info, warn or error"},
		},
		Commands: append([]*cli.Command{
			{
				Name:  "init",
				Usage: "create a new cluster with this machine as its first node",
				Flags: nodeFlags(),
				Action: func(c *cli.Context) error {
					cfg, err := datadir.Init(nodeOptions(c), agent.Version)
					if err != nil {
						return err
					}
					printPrepared(stdout, "initialised", cfg, c.String("data-dir"))
					printUIPassword(stdout, cfg.AdminPassword, c.String("data-dir"))
					return nil
				},
			},
			{
				Name:      "join",
				Usage:     "join an existing cluster through any member",
				ArgsUsage: "HOST:PORT",
				Flags:     append(nodeFlags(), &cli.StringFlag{Name: "token", Required: true, EnvVars: []string{"RUNOS_TOKEN"}, Usage: "join token from `runos-agent token create`"}),
				Action: func(c *cli.Context) error {
					if c.NArg() != 1 {
						return errors.New("join needs exactly one member address (HOST:PORT)")
					}
					ctx, cancel := context.WithTimeout(c.Context, 60*time.Second)
					defer cancel()
					cfg, err := agent.Join(ctx, agent.JoinOptions{NodeOptions: nodeOptions(c), Token: c.String("token"), Member: c.Args().First()})
					if err != nil {
						return err
					}
					printPrepared(stdout, "joined", cfg, c.String("data-dir"))
					return nil
				},
			},
			{
				Name:  "run",
				Usage: "run the agent (the long-running daemon); everything it needs is in the data dir",
				Flags: []cli.Flag{
					dataDirFlag(),
					&cli.StringFlag{Name: "net", EnvVars: []string{"RUNOS_NET"}, Usage: "override the data dir's overlay mode"},
					uiFlag(),
					&cli.StringFlag{Name: "metrics-listen", EnvVars: []string{"RUNOS_METRICS_LISTEN"}, Usage: "serve Prometheus metrics at ADDR/metrics (off by default)"},
					&cli.StringFlag{Name: "pprof", EnvVars: []string{"RUNOS_PPROF"}, Usage: "serve Go's profiler at ADDR/debug/pprof/: a port or a loopback address and port, e.g. 127.0.0.1:6060 (off by default; no authentication, so loopback only)"},
					&cli.StringFlag{Name: "kube-bin-dir", EnvVars: []string{"RUNOS_KUBE_BIN_DIR"}, Value: agent.DefaultKubeBinDir, Usage: "`DIR` holding kubelet, kube-apiserver, kube-controller-manager, kube-scheduler and kube-proxy for managed Kubernetes"},
					&cli.BoolFlag{Name: "dns", Value: true, EnvVars: []string{"RUNOS_DNS"}, Usage: "run the node resolver on the mesh IP, port 53 (--dns=false: off, except on the mesh IP while managed Kubernetes runs here: its pods resolve through it)"},
					&cli.IntFlag{Name: "dns-port", Value: 53, EnvVars: []string{"RUNOS_DNS_PORT"}, Usage: "the node resolver's port on the mesh (and wg1) addresses"},
					&cli.StringSliceFlag{Name: "dns-listen", EnvVars: []string{"RUNOS_DNS_LISTEN"}, Usage: "also serve on this loopback `IP:PORT` (for the host's resolver in userspace mode; repeatable)"},
					&cli.StringSliceFlag{Name: "dns-upstream", EnvVars: []string{"RUNOS_DNS_UPSTREAM"}, Usage: "forward names outside the cluster to this `IP[:PORT]` (repeatable; default: the host's resolv.conf)"},
				},
				Action: func(c *cli.Context) error {
					log, err := newLogger(c, stderr)
					if err != nil {
						return err
					}
					ctx, stop := signal.NotifyContext(c.Context, os.Interrupt, syscall.SIGTERM)
					defer stop()
					a, err := agent.New(agent.Config{DataDir: c.String("data-dir"), Net: c.String("net"), UIListen: c.String("ui-listen"), MetricsListen: c.String("metrics-listen"), PprofListen: c.String("pprof"), KubeBinDir: c.String("kube-bin-dir"),
						DNS: agent.DNSConfig{Off: !c.Bool("dns"), Port: c.Int("dns-port"), Loopback: c.StringSlice("dns-listen"), Upstreams: c.StringSlice("dns-upstream")}}, agent.Deps{Log: log})
					if err != nil {
						return err
					}
					if err := a.Start(ctx); err != nil {
						return err
					}
					gcCtx, stopGC := context.WithCancel(context.Background())
					gcDone := make(chan struct{})
					go func() {
						defer close(gcDone)
						procmem.CollectWhenIdle(gcCtx, procmem.IdleGCInterval)
					}()
					<-ctx.Done()
					err = a.Close()
					stopGC()
					<-gcDone
					return err
				},
			},
			{
				Name:  "token",
				Usage: "manage join tokens",
				Subcommands: []*cli.Command{{
					Name:  "create",
					Usage: "create a one-time, expiring join token and print the join command",
					Flags: []cli.Flag{
						dataDirFlag(),
						&cli.DurationFlag{Name: "ttl", Value: time.Hour, Usage: "how long the token is valid"},
						&cli.IntFlag{Name: "uses", Value: 1, Usage: "how many joins it admits"},
						&cli.BoolFlag{Name: "json", Usage: "print JSON"},
					},
					Action: func(c *cli.Context) error {
						tok, err := client(c).CreateToken(c.Context, api.TokenRequest{TTL: c.Duration("ttl").String(), Uses: c.Int("uses")})
						if err != nil {
							return err
						}
						if c.Bool("json") {
							return printJSON(stdout, tok)
						}
						fmt.Fprintf(stdout, "token (expires %s, %d use(s)):\n  %s\n\non the new machine run:\n  %s\n", tok.ExpiresAt.Local().Format(time.RFC3339), tok.Uses, tok.Token, tok.JoinCommand)
						return nil
					},
				}, {
					Name:  "policy",
					Usage: "show or change the cluster's bounds on join tokens (every token, local or from the cloud)",
					Flags: []cli.Flag{
						dataDirFlag(),
						&cli.DurationFlag{Name: "max-ttl", Usage: "longest lifetime a token may have (default policy 24h)"},
						&cli.IntFlag{Name: "max-uses", Usage: "most joins one token may admit (default policy 10)"},
						&cli.BoolFlag{Name: "json", Usage: "print JSON"},
					},
					Action: func(c *cli.Context) error {
						req := api.TokenPolicy{MaxUses: c.Int("max-uses")}
						if c.IsSet("max-ttl") {
							req.MaxTTL = c.Duration("max-ttl").String()
						}
						p, err := client(c).SetTokenPolicy(c.Context, req)
						if err != nil {
							return err
						}
						if c.Bool("json") {
							return printJSON(stdout, p)
						}
						fmt.Fprintf(stdout, "join tokens: at most %s, at most %d use(s)\n", p.MaxTTL, p.MaxUses)
						return nil
					},
				}},
			},
			{
				Name:  "status",
				Usage: "show this node, its Raft view and its WireGuard peers",
				Flags: []cli.Flag{dataDirFlag(), &cli.BoolFlag{Name: "json", Usage: "print JSON"}, consistentFlag()},
				Action: func(c *cli.Context) error {
					s, err := client(c).Status(c.Context, readOption(c))
					if err != nil {
						return err
					}
					if c.Bool("json") {
						return printJSON(stdout, s)
					}
					fmt.Fprintf(stdout, "node %s (%s) cluster %s, mesh %s, pods %s, %s mode\nraft: %s, leader %s, term %d, applied %d, voters %s\n",
						s.Name, s.NodeID, s.ClusterID, s.MeshIP, s.PodCIDR, s.Net, s.Raft.State, s.Raft.Leader, s.Raft.Term, s.Raft.AppliedIndex, strings.Join(s.Raft.Voters, ","))
					tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
					fmt.Fprintln(tw, "PEER\tMESH IP\tPATH\tENDPOINT\tRTT\tHANDSHAKE\tRX\tTX")
					for _, p := range s.Peers {
						hs := "never"
						if p.LastHandshakeSeconds >= 0 {
							hs = fmt.Sprintf("%.0fs ago", p.LastHandshakeSeconds)
						}
						path := p.Path
						if p.Via != "" {
							path += " via " + p.Via
						}
						fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%.1fms\t%s\t%d\t%d\n", p.Name, p.MeshIP, path, p.Endpoint, p.RTTMillis, hs, p.RxBytes, p.TxBytes)
					}
					if err := tw.Flush(); err != nil {
						return err
					}
					if len(s.Devices) > 0 {
						fmt.Fprintln(stdout, "\nuser devices entering here (wg1):")
						return printAccessList(stdout, s.Devices, time.Now())
					}
					return nil
				},
			},
			{
				Name:  "nodes",
				Usage: "list the cluster's nodes",
				Flags: []cli.Flag{dataDirFlag(), &cli.BoolFlag{Name: "json", Usage: "print JSON"}, consistentFlag()},
				Action: func(c *cli.Context) error {
					n, err := client(c).Nodes(c.Context, readOption(c))
					if err != nil {
						return err
					}
					if c.Bool("json") {
						return printJSON(stdout, n.Nodes)
					}
					tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
					fmt.Fprintln(tw, "NAME\tMESH IP\tPOD CIDR\tHEALTH\tBEAT\tRAFT\tCPU\tMEM\tDISK\tVERSION")
					for _, x := range n.Nodes {
						beat := "-"
						if x.LastHeartbeatSeconds >= 0 {
							beat = fmt.Sprintf("%.0fs", x.LastHeartbeatSeconds)
						}
						fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%.0f%%\t%s\t%s\t%s\n", x.Name, x.MeshIP, x.PodCIDR, x.Health, beat, x.RaftRole,
							x.CPUPercent, percent(x.MemUsedBytes, x.MemTotalBytes), percent(x.DiskUsedBytes, x.DiskTotalBytes), x.Version)
					}
					return tw.Flush()
				},
			},
			{
				Name:  "netcheck",
				Usage: "report what the network allows: UDP, public endpoint, NAT mapping behaviour, LAN addresses",
				Flags: []cli.Flag{
					dataDirFlag(),
					&cli.StringSliceFlag{Name: "stun", Usage: "STUN server HOST:PORT (repeatable; two at different addresses tell the mapping behaviour). Members are used when an agent runs"},
					&cli.BoolFlag{Name: "json", Usage: "print JSON"},
				},
				Action: func(c *cli.Context) error {
					n, err := client(c).Netcheck(c.Context, c.StringSlice("stun"))
					if errors.Is(err, api.ErrAgentNotRunning) {
						// No agent here: probe from a throwaway socket instead.
						log, lerr := newLogger(c, stderr)
						if lerr != nil {
							return lerr
						}
						n, err = nat.StandaloneNetcheck(c.Context, c.StringSlice("stun"), log)
					}
					if err != nil {
						return err
					}
					if c.Bool("json") {
						return printJSON(stdout, n)
					}
					udp := "no"
					if n.UDP {
						udp = "yes"
					}
					fmt.Fprintf(stdout, "UDP:            %s\npublic address: %s\nmapping:        %s\nLAN addresses:  %s\n", udp, orDash(n.Public), n.Mapping, strings.Join(n.LANAddresses, ", "))
					for _, r := range n.Results {
						if r.Error != "" {
							fmt.Fprintf(stdout, "  stun %s: %s\n", r.Server, r.Error)
						} else {
							fmt.Fprintf(stdout, "  stun %s: mapped %s in %.1f ms\n", r.Server, r.Mapped, r.RTTMillis)
						}
					}
					return nil
				},
			},
			{
				Name:      "ping",
				Usage:     "ping a node over the mesh, showing the path (direct or via a relay) and round trip of each probe",
				ArgsUsage: "NODE",
				Flags: []cli.Flag{
					dataDirFlag(),
					&cli.IntFlag{Name: "count", Aliases: []string{"c"}, Value: 5, Usage: "how many probes (0: until interrupted)"},
					&cli.DurationFlag{Name: "interval", Aliases: []string{"i"}, Value: time.Second, Usage: "time between probes"},
				},
				Action: func(c *cli.Context) error {
					if c.NArg() != 1 {
						return errors.New("ping needs exactly one node name")
					}
					ctx, stop := signal.NotifyContext(c.Context, os.Interrupt, syscall.SIGTERM)
					defer stop()
					cl, node := client(c), c.Args().First()
					lastPath, answered := "", 0
					for seq := 1; c.Int("count") == 0 || seq <= c.Int("count"); seq++ {
						if seq > 1 {
							select {
							case <-ctx.Done():
								return nil
							case <-time.After(c.Duration("interval")):
							}
						}
						p, err := cl.Ping(ctx, node, seq)
						if err != nil {
							return err
						}
						path := p.Path + " " + p.Endpoint
						if p.Path == "relay" {
							path = "via " + p.Via + " (" + p.Endpoint + ")"
						}
						if lastPath != "" && path != lastPath {
							fmt.Fprintf(stdout, "path changed at %s: %s -> %s\n", time.Now().Format("15:04:05.000"), lastPath, path)
						}
						lastPath = path
						if p.Error != "" {
							fmt.Fprintf(stdout, "seq=%d %s: %s\n", seq, path, p.Error)
							continue
						}
						answered++
						fmt.Fprintf(stdout, "seq=%d %s rtt=%.2f ms\n", seq, path, p.RTTMillis)
					}
					if answered == 0 {
						return fmt.Errorf("%s did not answer", node)
					}
					return nil
				},
			},
			{
				Name:  "events",
				Usage: "show the cluster's history: joins, removals, health, leaders, voters, paths",
				Flags: []cli.Flag{
					dataDirFlag(),
					&cli.BoolFlag{Name: "follow", Aliases: []string{"f"}, Usage: "keep printing new events"},
					&cli.BoolFlag{Name: "json", Usage: "print JSON (one object per line with --follow)"},
				},
				Action: func(c *cli.Context) error {
					cl := client(c)
					var after uint64
					first := true
					for {
						wait := time.Duration(0)
						if !first {
							wait = 30 * time.Second
						}
						res, err := cl.Events(c.Context, after, wait)
						if err != nil {
							return err
						}
						if c.Bool("json") && !c.Bool("follow") {
							return printJSON(stdout, res.Events)
						}
						for _, e := range res.Events {
							if c.Bool("json") {
								b, _ := json.Marshal(e)
								fmt.Fprintln(stdout, string(b))
							} else {
								fmt.Fprintln(stdout, formatEvent(e))
							}
						}
						after, first = res.Last, false
						if !c.Bool("follow") {
							return nil
						}
					}
				},
			},
			{
				Name:  "node",
				Usage: "manage nodes",
				Subcommands: []*cli.Command{{
					Name:      "remove",
					Usage:     "remove a node from the cluster; every member drops it",
					ArgsUsage: "NAME",
					Flags:     []cli.Flag{dataDirFlag()},
					Action: func(c *cli.Context) error {
						if c.NArg() != 1 {
							return errors.New("node remove needs exactly one node name")
						}
						if err := client(c).RemoveNode(c.Context, c.Args().First()); err != nil {
							return err
						}
						fmt.Fprintf(stdout, "removed node %s\n", c.Args().First())
						return nil
					},
				}},
			},
			{
				Name:  "dev",
				Usage: "run N nodes in this process (userspace mode, loopback) for trying things out",
				Flags: []cli.Flag{
					&cli.IntFlag{Name: "nodes", Value: 3, Usage: "how many nodes"},
					&cli.StringFlag{Name: "dir", Value: filepath.Join(os.TempDir(), "runos-dev"), EnvVars: []string{"RUNOS_DEV_DIR"}, Usage: "parent of the nodes' data dirs (kept: a second run restarts the same cluster)"},
					&cli.IntFlag{Name: "base-port", Value: 0, Usage: "node i listens on base-port+i (0: free ports)"},
					uiFlag(),
				},
				Action: func(c *cli.Context) error {
					log, err := newLogger(c, stderr)
					if err != nil {
						return err
					}
					ctx, stop := signal.NotifyContext(c.Context, os.Interrupt, syscall.SIGTERM)
					defer stop()
					dc, err := agent.StartDev(ctx, agent.DevOptions{Nodes: c.Int("nodes"), Dir: c.String("dir"), BasePort: c.Int("base-port"), UIListen: c.String("ui-listen")}, log)
					if err != nil {
						return err
					}
					fmt.Fprintf(stdout, "\ndev cluster of %d nodes is up (userspace mode, loopback):\n", len(dc.Agents))
					for i, d := range dc.Dirs {
						cfg := dc.Agents[i].NodeConfig()
						fmt.Fprintf(stdout, "  %-6s mesh %-12s UI %-24s data dir %s\n", cfg.Name, cfg.MeshIP, dc.Agents[i].UIURL(), d)
					}
					fmt.Fprintf(stdout, "\nUI: %s\n", dc.Agents[0].UIURL())
					printUIPassword(stdout, dc.AdminPassword, dc.Dirs[0])
					fmt.Fprintf(stdout, "\ntry:\n  runos-agent nodes  --data-dir %s\n  runos-agent status --data-dir %s\n  runos-agent token create --data-dir %s\nCtrl-C stops the cluster; run again to restart it from disk.\n", dc.Dirs[0], dc.Dirs[0], dc.Dirs[0])
					<-ctx.Done()
					return dc.Close()
				},
			},
		}, extraCommands()...),
	}
}

// extraCommands are the command groups kept in files of their own.
func extraCommands() []*cli.Command {
	var cmds []*cli.Command
	cmds = append(cmds, cloudCommands()...)
	cmds = append(cmds, kubeCommands()...)
	cmds = append(cmds, uiCommands()...)
	cmds = append(cmds, accessCommands()...)
	cmds = append(cmds, dnsCommands()...)
	return cmds
}

func uiFlag() *cli.StringFlag {
	return &cli.StringFlag{Name: "ui-listen", Value: "127.0.0.1:7080", EnvVars: []string{"RUNOS_UI_LISTEN"}, Usage: "local web UI address (empty: off; a taken port falls back to a free one)"}
}

func formatEvent(e api.Event) string {
	line := fmt.Sprintf("%s  %-15s %s", e.Time.Local().Format("2006-01-02 15:04:05"), e.Kind, e.Node)
	if e.From != "" || e.To != "" {
		line += fmt.Sprintf(" %s -> %s", e.From, e.To)
	}
	if e.Detail != "" {
		line += " (" + e.Detail + ")"
	}
	return line
}

// printPrepared tells the user what init or join left in the data dir.
func printPrepared(w io.Writer, verb string, cfg *datadir.NodeConfig, dir string) {
	fmt.Fprintf(w, "%s cluster %s: node %s, mesh IP %s, pod CIDR %s\nstart it with: runos-agent run --data-dir %s\n",
		verb, cfg.ClusterID, cfg.Name, cfg.MeshIP, cfg.PodCIDR, dir)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func percent(used, total uint64) string {
	if total == 0 {
		return "-"
	}
	return fmt.Sprintf("%.0f%%", 100*float64(used)/float64(total))
}

func client(c *cli.Context) *api.Client { return api.NewClient(c.String("data-dir")) }

// consistentFlag asks a read to go through the leader (api.Consistent).
func consistentFlag() cli.Flag {
	return &cli.BoolFlag{Name: "consistent", Usage: "read through the Raft leader: reflect every write acknowledged before, or fail when this node cannot reach a quorum (default: this node's own, possibly stale, copy)"}
}

func readOption(c *cli.Context) api.ReadOption {
	if c.Bool("consistent") {
		return api.Consistent
	}
	return api.Stale
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
