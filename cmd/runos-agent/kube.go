package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/runos/runos-agent/api"
)

// Services and apps on Kubernetes (issue 6): kube, services, apps.

func kubeCommands() []*cli.Command {
	jsonFlag := func() cli.Flag { return &cli.BoolFlag{Name: "json", Usage: "print JSON"} }
	return []*cli.Command{
		{
			Name:  "kube",
			Usage: "the Kubernetes cluster services and apps are deployed to",
			Subcommands: append(managedKubeCommands(),
				leaf(&cli.Command{
					Name:  "set",
					Usage: "store a kubeconfig (sealed in the cluster state; whichever node leads applies with it)",
					Flags: []cli.Flag{dataDirFlag(), &cli.StringFlag{Name: "kubeconfig", Usage: "kubeconfig `FILE` (its current context is used)"}},
				}, 0, func(c *cli.Context) error {
					path := c.String("kubeconfig")
					if path == "" {
						return errors.New("kube set needs --kubeconfig FILE")
					}
					b, err := os.ReadFile(path)
					if err != nil {
						return err
					}
					k, err := client(c).SetKube(c.Context, b)
					if err != nil {
						return err
					}
					fmt.Fprintf(c.App.Writer, "kubernetes target set: %s\n", k.Server)
					return nil
				}),
				leaf(&cli.Command{
					Name:  "show",
					Usage: "show the Kubernetes target",
					Flags: []cli.Flag{dataDirFlag(), jsonFlag()},
				}, 0, func(c *cli.Context) error {
					k, err := client(c).Kube(c.Context)
					if err != nil {
						return err
					}
					if c.Bool("json") {
						return printJSON(c.App.Writer, k)
					}
					if !k.Configured {
						fmt.Fprintln(c.App.Writer, "no Kubernetes cluster set (runos-agent kube set --kubeconfig FILE)")
						return nil
					}
					fmt.Fprintf(c.App.Writer, "server  %s\nset at  %s\n", k.Server, k.SetAt.Local().Format(time.RFC3339))
					if k.Error != "" {
						fmt.Fprintf(c.App.Writer, "error   %s\n", k.Error)
					}
					return nil
				}),
			),
		},
		{
			Name:  "services",
			Usage: "deploy and manage services (PostgreSQL, Redis, ...) on Kubernetes",
			Subcommands: []*cli.Command{
				leaf(&cli.Command{
					Name:  "catalog",
					Usage: "list the services that can be deployed, with their tiers",
					Flags: []cli.Flag{dataDirFlag(), jsonFlag()},
				}, 0, func(c *cli.Context) error {
					cat, err := client(c).Catalog(c.Context)
					if err != nil {
						return err
					}
					if c.Bool("json") {
						return printJSON(c.App.Writer, cat)
					}
					tw := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
					fmt.Fprintln(tw, "SERVICE\tKIND\tVERSION\tTIERS\tDESCRIPTION")
					for _, s := range cat {
						var tiers []string
						for _, t := range s.Tiers {
							tiers = append(tiers, t.Name)
						}
						fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", s.Name, s.Kind, s.Version, strings.Join(tiers, ","), s.Description)
					}
					return tw.Flush()
				}),
				leaf(&cli.Command{
					Name:      "deploy",
					Usage:     "deploy a service instance (accepted even while Kubernetes is unreachable)",
					ArgsUsage: "SERVICE",
					Flags: []cli.Flag{dataDirFlag(), jsonFlag(),
						&cli.StringFlag{Name: "tier", Value: "lightweight", Usage: "lightweight, ha or enterprise"},
						&cli.StringSliceFlag{Name: "set", Usage: "override a setting `KEY=VALUE` (repeatable; see services catalog --json)"},
					},
				}, 1, func(c *cli.Context) error {
					set, err := keyValues(c.StringSlice("set"), "--set")
					if err != nil {
						return err
					}
					s, err := client(c).DeployService(c.Context, api.ServiceRequest{Service: c.Args().First(), Tier: c.String("tier"), Set: set})
					if err != nil {
						return err
					}
					if c.Bool("json") {
						return printJSON(c.App.Writer, s)
					}
					fmt.Fprintf(c.App.Writer, "%s: %s %s, %s\n", s.OSID, s.Service, s.Tier, statusText(s.Status, s.Reason, s.Ready, s.Total))
					if s.TierNote != "" {
						fmt.Fprintf(c.App.Writer, "note: %s\n", s.TierNote)
					}
					fmt.Fprintf(c.App.Writer, "connection details: runos-agent services show %s\n", s.OSID)
					return nil
				}),
				leaf(&cli.Command{
					Name:  "list",
					Usage: "list service instances",
					Flags: []cli.Flag{dataDirFlag(), jsonFlag(), &cli.StringFlag{Name: "type", Usage: "only instances of `SERVICE`"}},
				}, 0, func(c *cli.Context) error {
					list, err := client(c).Services(c.Context, c.String("type"))
					if err != nil {
						return err
					}
					if c.Bool("json") {
						return printJSON(c.App.Writer, list)
					}
					tw := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
					fmt.Fprintln(tw, "OSID\tSERVICE\tTIER\tSTATUS\tREADY\tAGE")
					for _, s := range list {
						fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d/%d\t%s\n", s.OSID, s.Service, s.Tier, s.Status, s.Ready, s.Total, age(s.CreatedAt))
					}
					return tw.Flush()
				}),
				leaf(&cli.Command{
					Name:      "show",
					Usage:     "show an instance and its connection details",
					ArgsUsage: "OSID",
					Flags:     []cli.Flag{dataDirFlag(), jsonFlag(), &cli.BoolFlag{Name: "reveal", Usage: "include the password"}},
				}, 1, func(c *cli.Context) error {
					s, err := client(c).ServiceInfo(c.Context, c.Args().First(), c.Bool("reveal"))
					if err != nil {
						return err
					}
					if c.Bool("json") {
						return printJSON(c.App.Writer, s)
					}
					w := c.App.Writer
					fmt.Fprintf(w, "osid      %s\nservice   %s\ntier      %s\nstatus    %s\n", s.OSID, s.Service, s.Tier, statusText(s.Status, s.Reason, s.Ready, s.Total))
					if s.TierNote != "" {
						fmt.Fprintf(w, "tier note %s\n", s.TierNote)
					}
					for _, k := range slices.Sorted(maps.Keys(s.Set)) {
						fmt.Fprintf(w, "set       %s=%s\n", k, s.Set[k])
					}
					for _, cond := range s.Conditions {
						fmt.Fprintf(w, "condition %s\n", cond)
					}
					if len(s.UsedBy) > 0 {
						fmt.Fprintf(w, "used by   %s\n", strings.Join(s.UsedBy, ", "))
					}
					if cn := s.Connection; cn != nil {
						fmt.Fprintf(w, "host      %s\nport      %d\n", cn.Host, cn.Port)
						if cn.User != "" {
							fmt.Fprintf(w, "user      %s\n", cn.User)
						}
						if cn.Revealed {
							fmt.Fprintf(w, "password  %s\n", cn.Password)
						} else {
							fmt.Fprintf(w, "password  (hidden; --reveal shows it)\n")
						}
						if cn.Database != "" {
							fmt.Fprintf(w, "database  %s\n", cn.Database)
						}
						if cn.URL != "" {
							fmt.Fprintf(w, "url       %s\n", cn.URL)
						}
						fmt.Fprintf(w, "secret    %s/%s\n", s.OSID, cn.Secret)
						if len(cn.Env) > 0 {
							fmt.Fprintf(w, "app env   %s\n", strings.Join(cn.Env, " "))
						}
					}
					return nil
				}),
				leaf(&cli.Command{
					Name:      "delete",
					Usage:     "delete an instance: its namespace, then its record",
					ArgsUsage: "OSID",
					Flags:     []cli.Flag{dataDirFlag()},
				}, 1, func(c *cli.Context) error {
					if err := client(c).DeleteService(c.Context, c.Args().First()); err != nil {
						return err
					}
					fmt.Fprintf(c.App.Writer, "%s: deleting\n", c.Args().First())
					return nil
				}),
			},
		},
		{
			Name:  "apps",
			Usage: "deploy your own containers, connected to service instances",
			Subcommands: []*cli.Command{
				leaf(&cli.Command{
					Name:      "deploy",
					Usage:     "deploy an app; each --use injects that instance's connection details as env variables",
					ArgsUsage: "NAME",
					Flags: []cli.Flag{dataDirFlag(), jsonFlag(),
						&cli.StringFlag{Name: "image", Usage: "container `IMAGE` (required)"},
						&cli.IntFlag{Name: "port", Usage: "container `PORT` to expose as a Service"},
						&cli.StringSliceFlag{Name: "env", Usage: "environment variable `KEY=VALUE` (repeatable)"},
						&cli.StringSliceFlag{Name: "use", Usage: "service instance `OSID` to connect to (repeatable)"},
					},
				}, 1, func(c *cli.Context) error {
					if c.String("image") == "" {
						return errors.New("apps deploy needs --image IMAGE")
					}
					env, err := keyValues(c.StringSlice("env"), "--env")
					if err != nil {
						return err
					}
					a, err := client(c).DeployApp(c.Context, api.AppRequest{Name: c.Args().First(), Image: c.String("image"),
						Port: c.Int("port"), Env: env, Use: c.StringSlice("use")})
					if err != nil {
						return err
					}
					if c.Bool("json") {
						return printJSON(c.App.Writer, a)
					}
					fmt.Fprintf(c.App.Writer, "%s: %s (%s), %s\n", a.OSID, a.Name, a.Image, statusText(a.Status, a.Reason, a.Ready, a.Total))
					if len(a.InjectedEnv) > 0 {
						fmt.Fprintf(c.App.Writer, "injected env: %s\n", strings.Join(a.InjectedEnv, " "))
					}
					return nil
				}),
				leaf(&cli.Command{
					Name:  "list",
					Usage: "list apps",
					Flags: []cli.Flag{dataDirFlag(), jsonFlag()},
				}, 0, func(c *cli.Context) error {
					list, err := client(c).Apps(c.Context)
					if err != nil {
						return err
					}
					if c.Bool("json") {
						return printJSON(c.App.Writer, list)
					}
					tw := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
					fmt.Fprintln(tw, "OSID\tNAME\tIMAGE\tUSES\tSTATUS\tREADY\tAGE")
					for _, a := range list {
						fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d/%d\t%s\n", a.OSID, a.Name, a.Image, orDash(strings.Join(a.Uses, ",")), a.Status, a.Ready, a.Total, age(a.CreatedAt))
					}
					return tw.Flush()
				}),
				leaf(&cli.Command{
					Name:      "show",
					Usage:     "show an app",
					ArgsUsage: "OSID",
					Flags:     []cli.Flag{dataDirFlag(), jsonFlag()},
				}, 1, func(c *cli.Context) error {
					a, err := client(c).AppInfo(c.Context, c.Args().First())
					if err != nil {
						return err
					}
					if c.Bool("json") {
						return printJSON(c.App.Writer, a)
					}
					w := c.App.Writer
					fmt.Fprintf(w, "osid      %s\nname      %s\nimage     %s\nstatus    %s\n", a.OSID, a.Name, a.Image, statusText(a.Status, a.Reason, a.Ready, a.Total))
					if a.Port > 0 {
						fmt.Fprintf(w, "port      %d (%s.%s.svc.cluster.local)\n", a.Port, a.Name, a.OSID)
					}
					if len(a.Uses) > 0 {
						fmt.Fprintf(w, "uses      %s\n", strings.Join(a.Uses, ", "))
					}
					if len(a.InjectedEnv) > 0 {
						fmt.Fprintf(w, "injected  %s\n", strings.Join(a.InjectedEnv, " "))
					}
					for _, k := range slices.Sorted(maps.Keys(a.Env)) {
						fmt.Fprintf(w, "env       %s=%s\n", k, a.Env[k])
					}
					return nil
				}),
				leaf(&cli.Command{
					Name:      "delete",
					Usage:     "delete an app (its namespace)",
					ArgsUsage: "OSID",
					Flags:     []cli.Flag{dataDirFlag()},
				}, 1, func(c *cli.Context) error {
					if err := client(c).DeleteApp(c.Context, c.Args().First()); err != nil {
						return err
					}
					fmt.Fprintf(c.App.Writer, "%s: deleting\n", c.Args().First())
					return nil
				}),
			},
		},
	}
}

func statusText(status, reason string, ready, total int) string {
	s := status
	if total > 0 {
		s += fmt.Sprintf(" (%d/%d ready)", ready, total)
	}
	if reason != "" && !strings.HasSuffix(reason, "replicas ready") {
		s += ": " + reason
	}
	return s
}

func age(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := time.Since(t)
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}

func keyValues(list []string, flagName string) (map[string]string, error) {
	if len(list) == 0 {
		return nil, nil
	}
	out := map[string]string{}
	for _, kv := range list {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("%s %q: want KEY=VALUE", flagName, kv)
		}
		out[k] = v
	}
	return out, nil
}

// leaf makes a command accept its flags before and after its positional
// arguments (`services deploy postgres --tier ha`). urfave/cli stops at the
// first argument, so the command skips its parsing and leaf parses: flags
// are moved in front of the positional arguments (a flag that takes a value
// takes the next argument along), then parsed by the standard flag package
// with the command's own flag definitions (defaults and env vars included).
// An unknown flag is an error, never ignored. nargs is the exact number of
// positional arguments.
func leaf(cmd *cli.Command, nargs int, action cli.ActionFunc) *cli.Command {
	cmd.SkipFlagParsing = true
	cmd.Action = func(c *cli.Context) error {
		set := flag.NewFlagSet(cmd.Name, flag.ContinueOnError)
		set.SetOutput(io.Discard)
		valued := map[string]bool{}
		for _, f := range cmd.Flags {
			if err := f.Apply(set); err != nil {
				return err
			}
			_, isBool := f.(*cli.BoolFlag)
			for _, n := range f.Names() {
				valued[n] = !isBool
			}
		}
		args, err := reorderArgs(c.Args().Slice(), valued)
		if err != nil {
			return fmt.Errorf("%s: %w", cmd.FullName(), err)
		}
		if err := set.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return cli.ShowCommandHelp(c.Lineage()[1], cmd.Name)
			}
			return fmt.Errorf("%s: %w", cmd.FullName(), err)
		}
		if h := set.Lookup("help"); h != nil && h.Value.String() == "true" {
			return cli.ShowCommandHelp(c.Lineage()[1], cmd.Name)
		}
		if err := normalizeAliases(set, cmd.Flags); err != nil {
			return err
		}
		nc := cli.NewContext(c.App, set, c.Lineage()[1])
		nc.Command = cmd
		if got := set.NArg(); got != nargs {
			what := "no arguments"
			if nargs > 0 {
				what = fmt.Sprintf("exactly %d argument (%s)", nargs, cmd.ArgsUsage)
			}
			return fmt.Errorf("%s takes %s, got %d: %s", cmd.FullName(), what, got, strings.Join(set.Args(), " "))
		}
		return action(nc)
	}
	return cmd
}

// reorderArgs moves flags (with their values) in front of positional
// arguments. valued says, per flag name, whether it takes a value.
func reorderArgs(in []string, valued map[string]bool) ([]string, error) {
	var flags, pos []string
	for i := 0; i < len(in); i++ {
		a := in[i]
		if a == "--" {
			pos = append(pos, in[i+1:]...)
			break
		}
		if len(a) < 2 || a[0] != '-' {
			pos = append(pos, a)
			continue
		}
		name := strings.TrimLeft(a, "-")
		name, _, hasValue := strings.Cut(name, "=")
		flags = append(flags, a)
		if name == "h" || name == "help" {
			continue
		}
		takes, known := valued[name]
		if !known {
			return nil, fmt.Errorf("unknown flag %s", a)
		}
		if takes && !hasValue {
			if i+1 >= len(in) {
				return nil, fmt.Errorf("flag %s needs a value", a)
			}
			i++
			flags = append(flags, in[i])
		}
	}
	return append(append(flags, "--"), pos...), nil
}

// normalizeAliases gives every name of a flag the value set through any of
// them (-d and --data-dir), as urfave/cli does after its own parsing.
func normalizeAliases(set *flag.FlagSet, flags []cli.Flag) error {
	visited := map[string]bool{}
	set.Visit(func(f *flag.Flag) { visited[f.Name] = true })
	for _, f := range flags {
		names := f.Names()
		if len(names) < 2 {
			continue
		}
		var from *flag.Flag
		for _, n := range names {
			if visited[n] {
				from = set.Lookup(n)
			}
		}
		if from == nil {
			continue
		}
		for _, n := range names {
			to := set.Lookup(n)
			if to == nil || n == from.Name || to.Value == from.Value {
				continue // slice flags share one value across names
			}
			if err := set.Set(n, from.Value.String()); err != nil {
				return err
			}
		}
	}
	return nil
}
