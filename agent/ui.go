package agent

import (
	"fmt"
	"net"

	"github.com/runos/runos-agent/ui"
)

// The web UI (issue 7).

// startUI serves the web UI (and the read-only API it uses) on loopback TCP.
func (a *Agent) startUI() error {
	if a.uiListen == "" {
		return nil
	}
	ln, err := net.Listen("tcp", a.uiListen)
	if err != nil {
		host, _, _ := net.SplitHostPort(a.uiListen)
		if ln, err = net.Listen("tcp", net.JoinHostPort(host, "0")); err != nil {
			return fmt.Errorf("ui: %w", err)
		}
		a.log.Info("ui address taken, using another port", "wanted", a.uiListen, "using", ln.Addr())
	}
	a.uiURL = "http://" + ln.Addr().String() + "/"
	a.serve(ln, ui.Handler(a.LocalAPIHandler()), "ui")
	a.log.Info("ui listening", "url", a.uiURL)
	return nil
}

// UIURL is the web UI's address, or "" when it is off.
func (a *Agent) UIURL() string { return a.uiURL }
