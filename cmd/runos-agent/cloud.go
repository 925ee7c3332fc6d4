package main

import (
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/runos/runos-agent/api"
)

func cloudCommands() []*cli.Command {
	return []*cli.Command{{
		Name:  "cloud",
		Usage: "link the cluster to a runos-cloud backend (a mirror and remote control; nothing local waits for it)",
		Subcommands: []*cli.Command{
			{
				Name:      "connect",
				Usage:     "register the cluster with a cloud; the Raft leader (now and later) holds the session",
				ArgsUsage: "URL",
				Flags: []cli.Flag{
					dataDirFlag(),
					&cli.StringFlag{Name: "token", Required: true, EnvVars: []string{"RUNOS_CLOUD_TOKEN"}, Usage: "registration token from `runos-cloud token create`"},
					allowFlag(),
				},
				Action: func(c *cli.Context) error {
					if c.NArg() != 1 {
						return errors.New("cloud connect needs exactly one URL (https://HOST:PORT)")
					}
					if err := checkAllow(c.String("allow")); err != nil {
						return err
					}
					s, err := client(c).CloudConnect(c.Context, api.CloudConnectRequest{URL: c.Args().First(), Token: c.String("token"), Allow: c.String("allow")})
					if err != nil {
						return err
					}
					fmt.Fprintf(c.App.Writer, "registered with %s as cloud cluster %s; the cloud may %s\n", s.URL, s.CloudClusterID, allowWords(s.Allow))
					return nil
				},
			},
			{
				Name:      "allow",
				Usage:     "change what the cloud may do: read (the mirror only), deploy (workloads) or admin (also join tokens and node removal)",
				ArgsUsage: "read|deploy|admin",
				Flags:     []cli.Flag{dataDirFlag()},
				Action: func(c *cli.Context) error {
					if c.NArg() != 1 {
						return errors.New("cloud allow needs exactly one level: read, deploy or admin")
					}
					if err := checkAllow(c.Args().First()); err != nil {
						return err
					}
					s, err := client(c).CloudAllow(c.Context, c.Args().First())
					if err != nil {
						return err
					}
					fmt.Fprintf(c.App.Writer, "the cloud may %s\n", allowWords(s.Allow))
					return nil
				},
			},
			{
				Name:  "status",
				Usage: "show the cloud link: state, since, next retry, pending outbox, last ack",
				Flags: []cli.Flag{dataDirFlag(), &cli.BoolFlag{Name: "json", Usage: "print JSON"}},
				Action: func(c *cli.Context) error {
					s, err := client(c).CloudStatus(c.Context)
					if err != nil {
						return err
					}
					if c.Bool("json") {
						return printJSON(c.App.Writer, s)
					}
					printCloudStatus(c.App.Writer, s)
					return nil
				},
			},
			{
				Name:  "disconnect",
				Usage: "forget the cloud registration; the session ends",
				Flags: []cli.Flag{dataDirFlag()},
				Action: func(c *cli.Context) error {
					if _, err := client(c).CloudDisconnect(c.Context); err != nil {
						return err
					}
					fmt.Fprintln(c.App.Writer, "disconnected from the cloud")
					return nil
				},
			},
		},
	}}
}

func allowFlag() cli.Flag {
	return &cli.StringFlag{Name: "allow", Value: "deploy", Usage: "what the cloud may do: read (the mirror only), deploy (workloads) or admin (also join tokens and node removal)"}
}

func checkAllow(allow string) error {
	switch allow {
	case "read", "deploy", "admin":
		return nil
	}
	return fmt.Errorf("unknown cloud permission %q: read, deploy or admin", allow)
}

func allowWords(allow string) string {
	switch allow {
	case "read":
		return "read (the mirror only; no command runs)"
	case "deploy":
		return "deploy (services and apps)"
	case "admin":
		return "admin (services and apps, join tokens, node removal)"
	}
	return allow
}

func printCloudStatus(w io.Writer, s *api.CloudStatus) {
	if !s.Registered {
		fmt.Fprintln(w, "not connected to a cloud (runos-agent cloud connect --token TOKEN URL)")
		return
	}
	ago := func(t time.Time) string {
		if t.IsZero() {
			return "never"
		}
		return time.Since(t).Round(time.Second).String() + " ago"
	}
	fmt.Fprintf(w, "cloud:       %s (cluster %s)\n", s.URL, s.CloudClusterID)
	fmt.Fprintf(w, "allowed:     %s\n", allowWords(s.Allow))
	if s.RotatePending {
		fmt.Fprintln(w, "credential:  re-issue pending (the leader's session renews it)")
	}
	state := s.State
	if s.State == "standby" {
		state += fmt.Sprintf(" (the leader, %s, holds the session)", orDash(s.Holder))
	}
	fmt.Fprintf(w, "state:       %s since %s\n", state, ago(s.Since))
	if !s.NextRetry.IsZero() {
		fmt.Fprintf(w, "next retry:  in %s\n", time.Until(s.NextRetry).Round(100*time.Millisecond))
	}
	if s.LastError != "" {
		fmt.Fprintf(w, "last error:  %s\n", s.LastError)
	}
	fmt.Fprintf(w, "pending:     %d changes not yet acknowledged\n", s.Pending)
	fmt.Fprintf(w, "last ack:    index %d, %s (state index %d)\n", s.AckIndex, ago(s.AckTime), s.Index)
	fmt.Fprintln(w, "everything local works without the cloud; changes queue and sync when it is back")
}
