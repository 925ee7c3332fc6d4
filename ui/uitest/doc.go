// Package uitest holds the web UI's end-to-end tests: a real in-process
// 3-node cluster (agenttest: userspace WireGuard over a natlab network, UIs
// on loopback), its UI servers, Go HTTP clients for the session rules
// across nodes, and headless Chromium (driven with chromedp) for the pages.
// It has no non-test code.
package uitest
