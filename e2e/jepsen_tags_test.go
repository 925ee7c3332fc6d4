//go:build jepsen

package e2e

// Under the jepsen tag the agents under test serve the test register.
func init() { agentBuildTags = "jepsen" }
