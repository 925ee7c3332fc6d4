package main

import (
	"fmt"
	"io"

	"github.com/urfave/cli/v2"
)

func uiCommands() []*cli.Command {
	return []*cli.Command{{
		Name:  "ui",
		Usage: "manage the web UI's sign-in",
		Subcommands: []*cli.Command{{
			Name:  "reset-password",
			Usage: "replace the UI admin password with a new random one (printed once); signs out every UI session on every node",
			Flags: []cli.Flag{dataDirFlag(), &cli.BoolFlag{Name: "json", Usage: "print JSON"}},
			Action: func(c *cli.Context) error {
				pw, err := client(c).ResetUIPassword(c.Context)
				if err != nil {
					return err
				}
				if c.Bool("json") {
					return printJSON(c.App.Writer, pw)
				}
				fmt.Fprintf(c.App.Writer, "new web UI password for user %s (shown only now; every UI session was signed out):\n  %s\n", pw.User, pw.Password)
				return nil
			},
		}},
	}}
}

// printUIPassword shows init's admin password, the only time it is shown.
func printUIPassword(w io.Writer, password, dir string) {
	if password == "" { // a restart: the password was shown when it was made
		fmt.Fprintf(w, "web UI sign-in: user admin (forgot the password? runos-agent ui reset-password --data-dir %s)\n", dir)
		return
	}
	fmt.Fprintf(w, "web UI sign-in (shown only now): user admin, password %s\n  (lost it? runos-agent ui reset-password --data-dir %s)\n", password, dir)
}
