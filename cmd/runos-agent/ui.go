package main

import "github.com/urfave/cli/v2"

func uiCommands() []*cli.Command { return nil }
