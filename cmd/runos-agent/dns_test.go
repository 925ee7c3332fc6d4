package main

import (
	"strings"
	"testing"

	"github.com/runos/runos-agent/api"
)

// The drop-in routes only the zone, to the port-53 addresses the host can
// use: not a wg1 address (those are for devices), not another port.
func TestResolvedConfig(t *testing.T) {
	conf, err := resolvedConfig(&api.DNSStatus{Enabled: true, Zone: "lab.example",
		Listen: []string{"172.24.0.3:53", "172.24.200.1:53", "127.0.0.1:5353"}})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(conf, "\nDNS=172.24.0.3\n") || !strings.Contains(conf, "\nDomains=~lab.example\n") || !strings.Contains(conf, "[Resolve]") {
		t.Fatalf("drop-in:\n%s", conf)
	}
	if _, err := resolvedConfig(&api.DNSStatus{Enabled: true, Zone: "runos.internal", Listen: []string{"127.0.0.1:5353"}}); err == nil {
		t.Fatal("a drop-in without a port-53 address")
	}
	if _, err := resolvedConfig(&api.DNSStatus{Zone: "runos.internal"}); err == nil {
		t.Fatal("a drop-in for a node without its resolver")
	}
}
