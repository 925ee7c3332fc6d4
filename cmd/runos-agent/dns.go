package main

import (
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/runos/runos-agent/api"
)

// The node resolver (issue 16): dns status, dns zone, dns resolved-config.

func dnsCommands() []*cli.Command {
	jsonFlag := func() cli.Flag { return &cli.BoolFlag{Name: "json", Usage: "print JSON"} }
	return []*cli.Command{{
		Name:  "dns",
		Usage: "the node resolver: NODE.<zone> and OSID.<zone> from the cluster state, cluster.local, everything else forwarded",
		Subcommands: []*cli.Command{
			leaf(&cli.Command{
				Name:  "status",
				Usage: "show this node's resolver: zone, addresses, upstreams, query counts",
				Flags: []cli.Flag{dataDirFlag(), jsonFlag()},
			}, 0, func(c *cli.Context) error {
				s, err := client(c).DNS(c.Context)
				if err != nil {
					return err
				}
				if c.Bool("json") {
					return printJSON(c.App.Writer, s)
				}
				printDNS(c.App.Writer, s)
				return nil
			}),
			{
				Name:  "zone",
				Usage: "show or change the cluster's zone (default runos.internal)",
				Subcommands: []*cli.Command{
					leaf(&cli.Command{
						Name:      "set",
						Usage:     "set the cluster's zone; every node answers NODE.ZONE and OSID.ZONE from then on",
						ArgsUsage: "ZONE",
						Flags:     []cli.Flag{dataDirFlag()},
					}, 1, func(c *cli.Context) error { return setZone(c, c.Args().First()) }),
					leaf(&cli.Command{
						Name:  "reset",
						Usage: "go back to the default zone (runos.internal)",
						Flags: []cli.Flag{dataDirFlag()},
					}, 0, func(c *cli.Context) error { return setZone(c, "") }),
					leaf(&cli.Command{
						Name:  "show",
						Usage: "print the cluster's zone",
						Flags: []cli.Flag{dataDirFlag()},
					}, 0, func(c *cli.Context) error {
						s, err := client(c).DNS(c.Context)
						if err != nil {
							return err
						}
						fmt.Fprintln(c.App.Writer, s.Zone)
						return nil
					}),
				},
			},
			leaf(&cli.Command{
				Name: "resolved-config",
				Usage: "print a systemd-resolved drop-in sending the zone to this node's resolver " +
					"(save it as /etc/systemd/resolved.conf.d/runos.conf, then systemctl restart systemd-resolved)",
				Flags: []cli.Flag{dataDirFlag()},
			}, 0, func(c *cli.Context) error {
				s, err := client(c).DNS(c.Context)
				if err != nil {
					return err
				}
				conf, err := resolvedConfig(s)
				if err != nil {
					return err
				}
				fmt.Fprint(c.App.Writer, conf)
				return nil
			}),
		},
	}}
}

func printDNS(w io.Writer, s *api.DNSStatus) {
	fmt.Fprintf(w, "zone:       %s (%d names)\n", s.Zone, s.Names)
	if !s.Enabled {
		fmt.Fprintln(w, "resolver:   off on this node")
		return
	}
	fmt.Fprintf(w, "listening:  %s\n", orNone(s.Listen))
	if s.ListenError != "" {
		fmt.Fprintf(w, "not bound:  %s\n", s.ListenError)
	}
	fmt.Fprintf(w, "upstreams:  %s\n", orNone(s.Upstreams))
	if len(s.Mounted) > 0 {
		fmt.Fprintf(w, "in process: %s\n", strings.Join(s.Mounted, ", "))
	}
	keys := make([]string, 0, len(s.Queries))
	for k, n := range s.Queries {
		if n > 0 {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s %d", k, s.Queries[k]))
	}
	fmt.Fprintf(w, "queries:    %s\n", orNone(parts))
	fmt.Fprintf(w, "cache:      %d answers\n", s.CacheEntries)
}

func orNone(list []string) string {
	if len(list) == 0 {
		return "none"
	}
	return strings.Join(list, ", ")
}

// resolvedConfig is the drop-in: the zone is routed to the resolver on
// port 53 of a non-loopback address (the mesh IP, in kernel mode) or of a
// loopback one (--dns-listen, in userspace mode). systemd-resolved only
// talks to port 53.
func resolvedConfig(s *api.DNSStatus) (string, error) {
	var servers []string
	for _, l := range s.Listen {
		ap, err := netip.ParseAddrPort(l)
		if err != nil || ap.Port() != 53 || netip.MustParsePrefix("172.24.200.0/21").Contains(ap.Addr()) {
			continue // wg1 addresses are for devices
		}
		servers = append(servers, ap.Addr().String())
	}
	if !s.Enabled || len(servers) == 0 {
		return "", fmt.Errorf("this node's resolver listens on no port 53 the host can use (listening: %s)", orNone(s.Listen))
	}
	return fmt.Sprintf(`# /etc/systemd/resolved.conf.d/runos.conf
# Names under %[1]s go to this node's runos-agent resolver; other names
# keep using the host's resolvers (the agent never forwards to itself).
[Resolve]
DNS=%[2]s
Domains=~%[1]s
`, s.Zone, strings.Join(servers, " ")), nil
}

// setZone sets the cluster's zone ("" for the default) and prints it.
func setZone(c *cli.Context, zone string) error {
	s, err := client(c).SetDNSZone(c.Context, zone)
	if err != nil {
		return err
	}
	fmt.Fprintf(c.App.Writer, "zone: %s\n", s.Zone)
	return nil
}
