package main

import "github.com/urfave/cli/v2"

func cloudCommands() []*cli.Command { return nil }
