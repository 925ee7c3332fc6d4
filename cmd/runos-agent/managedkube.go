package main

import (
	"fmt"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/runos/runos-agent/api"
	"github.com/urfave/cli/v2"
)

// Managed Kubernetes (issue 13): the agents run the cluster.
func managedKubeCommands() []*cli.Command {
	jsonFlag := func() cli.Flag { return &cli.BoolFlag{Name: "json", Usage: "print JSON"} }
	return []*cli.Command{
		leaf(&cli.Command{
			Name:  "enable",
			Usage: "run Kubernetes on the cluster's nodes: control plane on the voters, a kubelet everywhere (kernel mode, root)",
			Flags: []cli.Flag{dataDirFlag(), jsonFlag(),
				&cli.StringFlag{Name: "version", Value: api.DefaultKubeVersion, Usage: "Kubernetes `VERSION` of the binaries in --kube-bin-dir on every node"}},
		}, 0, func(c *cli.Context) error {
			st, err := client(c).EnableKube(c.Context, api.KubeEnableRequest{Version: c.String("version")})
			if err != nil {
				return err
			}
			if c.Bool("json") {
				return printJSON(c.App.Writer, st)
			}
			fmt.Fprintf(c.App.Writer, "managed Kubernetes %s enabled; nodes come up within a minute (runos-agent kube status)\n", st.Version)
			return nil
		}),
		leaf(&cli.Command{
			Name:  "disable",
			Usage: "stop managed Kubernetes on every node (refused while services or apps exist)",
			Flags: []cli.Flag{dataDirFlag()},
		}, 0, func(c *cli.Context) error {
			if err := client(c).DisableKube(c.Context); err != nil {
				return err
			}
			fmt.Fprintln(c.App.Writer, "managed Kubernetes disabled")
			return nil
		}),
		leaf(&cli.Command{
			Name:  "status",
			Usage: "every node's Kubernetes components and readiness",
			Flags: []cli.Flag{dataDirFlag(), jsonFlag()},
		}, 0, func(c *cli.Context) error {
			st, err := client(c).KubeStatus(c.Context)
			if err != nil {
				return err
			}
			if c.Bool("json") {
				return printJSON(c.App.Writer, st)
			}
			return printKubeStatus(c, st)
		}),
		leaf(&cli.Command{
			Name:  "kubeconfig",
			Usage: "print a cluster-admin kubeconfig (server: the node's local API balancer, https://127.0.0.1:6444)",
			Flags: []cli.Flag{dataDirFlag()},
		}, 0, func(c *cli.Context) error {
			kc, err := client(c).AdminKubeconfig(c.Context)
			if err != nil {
				return err
			}
			_, err = c.App.Writer.Write(kc)
			return err
		}),
		leaf(&cli.Command{
			Name:      "import",
			Usage:     "load an image archive (docker save / OCI tar) into every node's containerd",
			ArgsUsage: "IMAGE.tar",
			Flags:     []cli.Flag{dataDirFlag(), jsonFlag()},
		}, 1, func(c *cli.Context) error {
			f, err := os.Open(c.Args().First())
			if err != nil {
				return err
			}
			defer f.Close()
			res, err := client(c).ImportImage(c.Context, f)
			if err != nil {
				return err
			}
			if c.Bool("json") {
				return printJSON(c.App.Writer, res)
			}
			var failed []string
			for _, n := range res.Nodes {
				if n.Error != "" {
					fmt.Fprintf(c.App.Writer, "%s: %s\n", n.Name, n.Error)
					failed = append(failed, n.Name)
				} else {
					fmt.Fprintf(c.App.Writer, "%s: imported\n", n.Name)
				}
			}
			if len(failed) > 0 {
				return fmt.Errorf("import failed on %s", strings.Join(failed, ", "))
			}
			return nil
		}),
	}
}

func printKubeStatus(c *cli.Context, st *api.KubeStatus) error {
	w := c.App.Writer
	if !st.Managed {
		fmt.Fprintln(w, "managed Kubernetes is off (runos-agent kube enable)")
		return nil
	}
	fmt.Fprintf(w, "Kubernetes %s, managed\n", st.Version)
	if st.APIError != "" {
		fmt.Fprintf(w, "API: %s\n", st.APIError)
	}
	for _, m := range st.Etcd {
		fmt.Fprintf(w, "etcd member %s: %s\n", m.Node, m.Phase)
	}
	tw := tabwriter.NewWriter(w, 0, 2, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tREADY\tCOMPONENT\tRUNNING\tVERSION\tRESTARTS\tLAST ERROR")
	for _, n := range st.Nodes {
		if n.Error != "" || len(n.Components) == 0 {
			fmt.Fprintf(tw, "%s\t%v\t-\t-\t-\t-\t%s\n", n.Name, n.Ready, n.Error)
		}
		for _, comp := range n.Components {
			fmt.Fprintf(tw, "%s\t%v\t%s\t%v\t%s\t%d\t%s\n", n.Name, n.Ready, comp.Name, comp.Running, comp.Version, comp.Restarts, comp.LastError)
		}
	}
	return tw.Flush()
}
