package main

import (
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/runos/runos-agent/access"
	"github.com/runos/runos-agent/api"
	"github.com/urfave/cli/v2"
)

// User access (wg1): people's devices enter the cluster through a node.
func accessCommands() []*cli.Command {
	jsonFlag := func() cli.Flag { return &cli.BoolFlag{Name: "json", Usage: "print JSON"} }
	endpointFlag := func() cli.Flag {
		return &cli.StringFlag{Name: "endpoint", Usage: "`HOST[:PORT]` devices dial instead of the entry node's own public address (a port forward, a DNS name)"}
	}
	return []*cli.Command{{
		Name:  "access",
		Usage: "user devices (laptops, phones) on wg1: add one, scan its QR code, reach the cluster",
		Subcommands: []*cli.Command{
			leaf(&cli.Command{
				Name:      "add",
				Usage:     "add a device and print its WireGuard config (with its private key, shown only now) and a QR code",
				ArgsUsage: "NAME",
				Flags: []cli.Flag{dataDirFlag(), jsonFlag(), endpointFlag(),
					&cli.StringFlag{Name: "via", Usage: "entry `NODE` (default: this node)"},
					&cli.StringFlag{Name: "public-key", Usage: "the device's WireGuard public `KEY`, when you made the key pair yourself (wg genkey | wg pubkey)"},
					&cli.BoolFlag{Name: "allow-peers", Usage: "let this device reach other devices that allow it too (default: devices never see each other)"}},
			}, 1, func(c *cli.Context) error {
				res, err := client(c).AccessAdd(c.Context, api.AccessAddRequest{Name: c.Args().First(), Via: c.String("via"),
					PublicKey: c.String("public-key"), Endpoint: c.String("endpoint"), AllowPeers: c.Bool("allow-peers")})
				if err != nil {
					return err
				}
				if c.Bool("json") {
					return printJSON(c.App.Writer, res)
				}
				return printAccessConfig(c.App.Writer, res, "added")
			}),
			leaf(&cli.Command{
				Name:  "list",
				Usage: "list devices with their entry node, last handshake and traffic",
				Flags: []cli.Flag{dataDirFlag(), jsonFlag()},
			}, 0, func(c *cli.Context) error {
				res, err := client(c).AccessList(c.Context)
				if err != nil {
					return err
				}
				if c.Bool("json") {
					return printJSON(c.App.Writer, res)
				}
				return printAccessList(c.App.Writer, res.Devices, time.Now())
			}),
			leaf(&cli.Command{
				Name:      "remove",
				Usage:     "remove a device: its entry node drops it within seconds",
				ArgsUsage: "NAME",
				Flags:     []cli.Flag{dataDirFlag()},
			}, 1, func(c *cli.Context) error {
				if err := client(c).AccessRemove(c.Context, c.Args().First()); err != nil {
					return err
				}
				fmt.Fprintf(c.App.Writer, "device %s removed\n", c.Args().First())
				return nil
			}),
			leaf(&cli.Command{
				Name:      "move",
				Usage:     "give a device another entry node; it keeps its address and key, its config changes in the Endpoint only",
				ArgsUsage: "NAME",
				Flags: []cli.Flag{dataDirFlag(), jsonFlag(), endpointFlag(),
					&cli.StringFlag{Name: "to", Usage: "the new entry `NODE`"}},
			}, 1, func(c *cli.Context) error {
				if c.String("to") == "" {
					return fmt.Errorf("move needs --to NODE")
				}
				res, err := client(c).AccessMove(c.Context, c.Args().First(), api.AccessMoveRequest{To: c.String("to"), Endpoint: c.String("endpoint")})
				if err != nil {
					return err
				}
				if c.Bool("json") {
					return printJSON(c.App.Writer, res)
				}
				return printAccessConfig(c.App.Writer, res, "moved to "+res.Device.Via+"; set the device's Endpoint to the one below")
			}),
		},
	}}
}

func printAccessConfig(w io.Writer, res *api.AccessConfig, what string) error {
	d := res.Device
	fmt.Fprintf(w, "device %s %s: address %s, entry node %s\n\n%s\n", d.Name, what, d.Address, d.Via, res.Config)
	qr, err := access.QRText(res.Config)
	if err != nil {
		return err
	}
	fmt.Fprint(w, qr)
	fmt.Fprintln(w, "\nScan it with the WireGuard app, or save the config as a file (wg-quick up FILE). The private key is not kept anywhere: this is the only copy.")
	return nil
}

func printAccessList(w io.Writer, devices []api.AccessDevice, now time.Time) error {
	if len(devices) == 0 {
		fmt.Fprintln(w, "no devices (runos-agent access add NAME)")
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 2, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tADDRESS\tVIA\tLAST HANDSHAKE\tRX\tTX\tFROM")
	for _, d := range devices {
		hs := "never"
		if !d.LastHandshake.IsZero() {
			hs = now.Sub(d.LastHandshake).Round(time.Second).String() + " ago"
		}
		if d.StatsError != "" {
			hs = "? (" + d.StatsError + ")"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\t%s\n", d.Name, d.Address, d.Via, hs, d.RxBytes, d.TxBytes, orDash(d.Endpoint))
	}
	return tw.Flush()
}
