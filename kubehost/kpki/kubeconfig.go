package kpki

import (
	"encoding/base64"
	"encoding/json"
	"strings"
)

// clusterName names the one cluster in the kubeconfigs this package
// renders; kubectl shows it, nothing keys on it.
const clusterName = "runos"

// Kubeconfig renders a kubeconfig for server (an https URL) with the CA,
// client certificate and key embedded as data, never as file paths: the
// agent's kube.Validate refuses file references, and an embedded file is
// one thing to write atomically. user names the user and the context
// (default "admin").
func Kubeconfig(server string, caPEM, certPEM, keyPEM []byte, user string) []byte {
	if user == "" {
		user = "admin"
	}
	context := user + "@" + clusterName
	b64 := base64.StdEncoding.EncodeToString
	var sb strings.Builder
	line := func(s ...string) {
		for _, p := range s {
			sb.WriteString(p)
		}
		sb.WriteByte('\n')
	}
	line("apiVersion: v1")
	line("kind: Config")
	line("clusters:")
	line("- name: ", quote(clusterName))
	line("  cluster:")
	line("    server: ", quote(server))
	line("    certificate-authority-data: ", b64(caPEM))
	line("users:")
	line("- name: ", quote(user))
	line("  user:")
	line("    client-certificate-data: ", b64(certPEM))
	line("    client-key-data: ", b64(keyPEM))
	line("contexts:")
	line("- name: ", quote(context))
	line("  context:")
	line("    cluster: ", quote(clusterName))
	line("    user: ", quote(user))
	line("current-context: ", quote(context))
	line("preferences: {}")
	return []byte(sb.String())
}

// quote makes s a YAML scalar whatever it holds: a JSON string is a valid
// YAML double-quoted scalar, so a user name with ':' or '#' or a newline
// cannot break the document or inject keys.
func quote(s string) string {
	b, _ := json.Marshal(s) // a string always marshals
	return string(b)
}
