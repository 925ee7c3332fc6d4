// Command runos-cloud is the reference cloud backend: registration, the
// clusters' mTLS sessions, their mirrors, commands and the console.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/runos/runos-agent/api"
	"github.com/runos/runos-agent/cloud"
)

func main() {
	if err := newApp(os.Stdout, os.Stderr).Run(os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "runos-cloud:", err)
		os.Exit(1)
	}
}

func dataDirFlag() *cli.StringFlag {
	return &cli.StringFlag{Name: "data-dir", Aliases: []string{"d"}, Value: "/var/lib/runos-cloud", EnvVars: []string{"RUNOS_CLOUD_DATA_DIR"}, Usage: "the cloud's data dir"}
}

func jsonFlag() *cli.BoolFlag { return &cli.BoolFlag{Name: "json", Usage: "print JSON"} }

func newApp(stdout, stderr io.Writer) *cli.App {
	return &cli.App{
		Name:      "runos-cloud",
		Usage:     "the RunOS cloud backend: registration, cluster sessions, mirrors, commands, console",
		Writer:    stdout,
		ErrWriter: stderr,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "log-level", Value: "info", EnvVars: []string{"RUNOS_LOG_LEVEL"}, Usage: "debug, info, warn or error"},
		},
		Commands: []*cli.Command{
			{
				Name:  "serve",
				Usage: "run the backend",
				Flags: []cli.Flag{
					dataDirFlag(),
					&cli.StringFlag{Name: "listen", Value: "127.0.0.1:8443", Usage: "public TLS address: registration and cluster sessions"},
					&cli.StringFlag{Name: "console-listen", Value: "127.0.0.1:8444", Usage: "console (the web UI for every cluster, behind the admin sign-in) and its JSON API, plain HTTP: keep on loopback or behind TLS ('' : admin socket only)"},
					&cli.StringFlag{Name: "stun-listen", Value: "127.0.0.1:3478", Usage: "STUN responder UDP address ('' : off)"},
				},
				Action: func(c *cli.Context) error {
					var lvl slog.Level
					if err := lvl.UnmarshalText([]byte(c.String("log-level"))); err != nil {
						return fmt.Errorf("invalid --log-level %q", c.String("log-level"))
					}
					log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: lvl}))
					s, err := cloud.New(cloud.Config{DataDir: c.String("data-dir"), Listen: c.String("listen"),
						ConsoleListen: c.String("console-listen"), STUNListen: c.String("stun-listen")}, log)
					if err != nil {
						return err
					}
					ctx, stop := signal.NotifyContext(c.Context, os.Interrupt, syscall.SIGTERM)
					defer stop()
					if err := s.Start(ctx); err != nil {
						return err
					}
					fmt.Fprintf(stdout, "runos-cloud listening on %s (CA fingerprint %s)\n", s.URL(), s.Fingerprint())
					if s.ConsoleAddr() != "" {
						fmt.Fprintf(stdout, "console: http://%s/\n", s.ConsoleAddr())
					}
					if pw := s.InitialPassword(); pw != "" {
						fmt.Fprintf(stdout, "console sign-in: user admin, password %s\n(shown only now; a new one: runos-cloud admin reset-password --data-dir %s)\n", pw, c.String("data-dir"))
					}
					<-ctx.Done()
					return s.Close()
				},
			},
			{
				Name:  "admin",
				Usage: "the console's sign-in",
				Subcommands: []*cli.Command{{
					Name:  "reset-password",
					Usage: "make a new console admin password (printed once) and end every console session",
					Flags: []cli.Flag{dataDirFlag(), jsonFlag()},
					Action: func(c *cli.Context) error {
						var out struct {
							Password string `json:"password"`
						}
						if err := call(c, http.MethodPost, "/api/admin/reset-password", struct{}{}, &out); err != nil {
							return err
						}
						if c.Bool("json") {
							return printJSON(stdout, out)
						}
						fmt.Fprintf(stdout, "console sign-in: user admin, password %s\n(shown only now; every console session has ended)\n", out.Password)
						return nil
					},
				}},
			},
			{
				Name:  "token",
				Usage: "registration tokens",
				Subcommands: []*cli.Command{{
					Name:  "create",
					Usage: "create a one-time registration token for a cluster (named here; created if new)",
					Flags: []cli.Flag{dataDirFlag(), &cli.StringFlag{Name: "cluster", Required: true, Usage: "cluster name"},
						&cli.DurationFlag{Name: "ttl", Value: 24 * time.Hour, Usage: "how long the token is valid"}, jsonFlag()},
					Action: func(c *cli.Context) error {
						var t cloud.TokenInfo
						if err := call(c, http.MethodPost, "/api/tokens", cloud.TokenRequest{Cluster: c.String("cluster"), TTL: c.Duration("ttl").String()}, &t); err != nil {
							return err
						}
						if c.Bool("json") {
							return printJSON(stdout, t)
						}
						fmt.Fprintf(stdout, "%s\n\nexpires %s; on any node of the cluster run:\n  %s\n", t.Token, t.ExpiresAt.Local().Format(time.RFC3339), t.Connect)
						return nil
					},
				}},
			},
			{
				Name:  "clusters",
				Usage: "list clusters: name, id, connected, last seen, nodes",
				Flags: []cli.Flag{dataDirFlag(), jsonFlag()},
				Subcommands: []*cli.Command{{
					Name:      "resync",
					Usage:     "drop a cluster's mirror; its leader sends a full resync when it reconnects (at once)",
					ArgsUsage: "CLUSTER",
					Flags:     []cli.Flag{dataDirFlag()},
					Action: func(c *cli.Context) error {
						if c.NArg() != 1 {
							return errors.New("clusters resync needs exactly one cluster name or ID")
						}
						if err := call(c, http.MethodPost, "/api/clusters/"+url.PathEscape(c.Args().First())+"/resync", struct{}{}, nil); err != nil {
							return err
						}
						fmt.Fprintf(stdout, "mirror of %s dropped; resync follows\n", c.Args().First())
						return nil
					},
				}, {
					Name:      "revoke",
					Usage:     "refuse a cluster from now on (its session ends, registration tokens stop working)",
					ArgsUsage: "CLUSTER",
					Flags:     []cli.Flag{dataDirFlag()},
					Action: func(c *cli.Context) error {
						if c.NArg() != 1 {
							return errors.New("clusters revoke needs exactly one cluster name or ID")
						}
						if err := call(c, http.MethodPost, "/api/clusters/"+url.PathEscape(c.Args().First())+"/revoke", struct{}{}, nil); err != nil {
							return err
						}
						fmt.Fprintf(stdout, "revoked %s\n", c.Args().First())
						return nil
					},
				}},
				Action: func(c *cli.Context) error {
					var cs []cloud.ClusterInfo
					if err := call(c, http.MethodGet, "/api/clusters", nil, &cs); err != nil {
						return err
					}
					if c.Bool("json") {
						return printJSON(stdout, cs)
					}
					tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
					fmt.Fprintln(tw, "NAME\tID\tCONNECTED\tLAST SEEN\tNODES")
					for _, x := range cs {
						seen := "never"
						if x.LastSeenSeconds >= 0 {
							seen = fmt.Sprintf("%.0fs ago", x.LastSeenSeconds)
						}
						conn := fmt.Sprint(x.Connected)
						if x.Revoked {
							conn = "revoked"
						}
						fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\n", x.Name, x.ID, conn, seen, x.Nodes)
					}
					return tw.Flush()
				},
			},
			{
				Name:      "nodes",
				Usage:     "the mirrored nodes of a cluster: name, mesh IP, health, last heartbeat",
				ArgsUsage: "CLUSTER",
				Flags:     []cli.Flag{dataDirFlag(), jsonFlag()},
				Action: func(c *cli.Context) error {
					if c.NArg() != 1 {
						return errors.New("nodes needs exactly one cluster name or ID")
					}
					var n api.NodesResponse
					if err := call(c, http.MethodGet, "/clusters/"+url.PathEscape(c.Args().First())+"/v1/nodes", nil, &n); err != nil {
						return err
					}
					if c.Bool("json") {
						return printJSON(stdout, n.Nodes)
					}
					tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
					fmt.Fprintln(tw, "NAME\tMESH IP\tHEALTH\tLAST HEARTBEAT")
					for _, x := range n.Nodes {
						hb := "-"
						if x.LastHeartbeatSeconds >= 0 {
							hb = fmt.Sprintf("%.1fs", x.LastHeartbeatSeconds)
						}
						fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", x.Name, x.MeshIP, x.Health, hb)
					}
					return tw.Flush()
				},
			},
			{
				Name:  "command",
				Usage: "send a command to a cluster (applied once, when it is connected)",
				Subcommands: []*cli.Command{
					{
						Name: "create-token", Usage: "create a join token in the cluster", ArgsUsage: "CLUSTER",
						Flags: []cli.Flag{dataDirFlag(), &cli.StringFlag{Name: "ttl", Value: "1h"}, &cli.IntFlag{Name: "uses", Value: 1}, &cli.DurationFlag{Name: "wait", Value: 30 * time.Second, Usage: "wait this long for the result (0: do not wait)"}},
						Action: func(c *cli.Context) error {
							args, _ := json.Marshal(map[string]any{"ttl": c.String("ttl"), "uses": c.Int("uses")})
							return sendCommand(c, "create_token", args)
						},
					},
					{
						Name: "remove-node", Usage: "remove a node from the cluster", ArgsUsage: "CLUSTER NODE",
						Flags: []cli.Flag{dataDirFlag(), &cli.DurationFlag{Name: "wait", Value: 30 * time.Second}},
						Action: func(c *cli.Context) error {
							if c.NArg() != 2 {
								return errors.New("remove-node needs a cluster and a node name")
							}
							args, _ := json.Marshal(map[string]string{"name": c.Args().Get(1)})
							return sendCommand(c, "remove_node", args)
						},
					},
					{
						Name: "deploy-service", Usage: "deploy a catalog service in the cluster (prints the instance)", ArgsUsage: "CLUSTER SERVICE",
						Flags: []cli.Flag{dataDirFlag(), &cli.StringFlag{Name: "tier", Value: "lightweight"},
							&cli.StringSliceFlag{Name: "set", Usage: "KEY=VALUE override (repeatable)"}, &cli.DurationFlag{Name: "wait", Value: 30 * time.Second}},
						Action: func(c *cli.Context) error {
							if c.NArg() != 2 {
								return errors.New("deploy-service needs a cluster and a service name")
							}
							set, err := keyValues(c.StringSlice("set"), "--set")
							if err != nil {
								return err
							}
							args, _ := json.Marshal(api.ServiceRequest{Service: c.Args().Get(1), Tier: c.String("tier"), Set: set})
							return sendCommand(c, "deploy_service", args)
						},
					},
					{
						Name: "delete-service", Usage: "delete a service instance in the cluster", ArgsUsage: "CLUSTER OSID",
						Flags: []cli.Flag{dataDirFlag(), &cli.DurationFlag{Name: "wait", Value: 30 * time.Second}},
						Action: func(c *cli.Context) error {
							if c.NArg() != 2 {
								return errors.New("delete-service needs a cluster and an OSID")
							}
							args, _ := json.Marshal(map[string]string{"osid": c.Args().Get(1)})
							return sendCommand(c, "delete_service", args)
						},
					},
					{
						Name: "deploy-app", Usage: "deploy an app in the cluster (prints the app)", ArgsUsage: "CLUSTER NAME",
						Flags: []cli.Flag{dataDirFlag(), &cli.StringFlag{Name: "image", Required: true}, &cli.IntFlag{Name: "port"},
							&cli.StringSliceFlag{Name: "env", Usage: "KEY=VALUE (repeatable)"}, &cli.StringSliceFlag{Name: "use", Usage: "service OSID (repeatable)"},
							&cli.DurationFlag{Name: "wait", Value: 30 * time.Second}},
						Action: func(c *cli.Context) error {
							if c.NArg() != 2 {
								return errors.New("deploy-app needs a cluster and an app name")
							}
							env, err := keyValues(c.StringSlice("env"), "--env")
							if err != nil {
								return err
							}
							args, _ := json.Marshal(api.AppRequest{Name: c.Args().Get(1), Image: c.String("image"), Port: c.Int("port"), Env: env, Use: c.StringSlice("use")})
							return sendCommand(c, "deploy_app", args)
						},
					},
					{
						Name: "delete-app", Usage: "delete an app in the cluster", ArgsUsage: "CLUSTER OSID",
						Flags: []cli.Flag{dataDirFlag(), &cli.DurationFlag{Name: "wait", Value: 30 * time.Second}},
						Action: func(c *cli.Context) error {
							if c.NArg() != 2 {
								return errors.New("delete-app needs a cluster and an OSID")
							}
							args, _ := json.Marshal(map[string]string{"osid": c.Args().Get(1)})
							return sendCommand(c, "delete_app", args)
						},
					},
				},
			},
		},
	}
}

// keyValues parses KEY=VALUE flags.
func keyValues(in []string, flag string) (map[string]string, error) {
	out := map[string]string{}
	for _, kv := range in {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("%s %q: want KEY=VALUE", flag, kv)
		}
		out[k] = v
	}
	return out, nil
}

func sendCommand(c *cli.Context, kind string, args json.RawMessage) error {
	if c.NArg() < 1 {
		return errors.New("name the cluster")
	}
	cl := url.PathEscape(c.Args().First())
	var rec cloud.CommandRecord
	if err := call(c, http.MethodPost, "/api/clusters/"+cl+"/commands", cloud.CommandRequest{Kind: kind, Args: args}, &rec); err != nil {
		return err
	}
	deadline := time.Now().Add(c.Duration("wait"))
	for rec.State == cloud.CmdPending && time.Now().Before(deadline) {
		time.Sleep(200 * time.Millisecond)
		if err := call(c, http.MethodGet, "/api/clusters/"+cl+"/commands/"+rec.ID, nil, &rec); err != nil {
			return err
		}
	}
	return printJSON(c.App.Writer, rec)
}

// call talks to the running server through its admin socket.
func call(c *cli.Context, method, path string, in, out any) error {
	sock := filepath.Join(c.String("data-dir"), cloud.SocketName)
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}}
	var body io.Reader
	if in != nil {
		b, _ := json.Marshal(in)
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(c.Context, method, "http://cloud"+path, body)
	if err != nil {
		return err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("runos-cloud is not running on %s (start it with `runos-cloud serve`): %w", c.String("data-dir"), err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		var e api.Error
		if json.NewDecoder(io.LimitReader(resp.Body, 1<<16)).Decode(&e) == nil && e.Error != "" {
			return errors.New(e.Error)
		}
		return fmt.Errorf("runos-cloud answered %s", resp.Status)
	}
	if out == nil {
		return nil
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
