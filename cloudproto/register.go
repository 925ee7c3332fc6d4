package cloudproto

import (
	"encoding/hex"
	"errors"
	"strings"
)

// A registration token carries the cloud CA's fingerprint, like the
// agent's join token:
//
//	RC1<sha256 of the cloud CA, 64 hex>::<token id, 12 hex>.<secret, 32 hex>
const regTokenPrefix = "RC1"

// RegToken is a parsed registration token.
type RegToken struct {
	CAFingerprint string
	ID            string
	Secret        string
}

func (t RegToken) String() string {
	return regTokenPrefix + t.CAFingerprint + "::" + t.ID + "." + t.Secret
}

var errRegTokenFormat = errors.New("malformed cloud registration token (expected RC1<ca-fingerprint>::<id>.<secret>, as printed by `runos-cloud token create`)")

// ParseRegToken parses a registration token.
func ParseRegToken(s string) (RegToken, error) {
	rest, ok := strings.CutPrefix(strings.TrimSpace(s), regTokenPrefix)
	if !ok {
		return RegToken{}, errRegTokenFormat
	}
	fp, cred, ok := strings.Cut(rest, "::")
	if !ok {
		return RegToken{}, errRegTokenFormat
	}
	id, secret, ok := strings.Cut(cred, ".")
	if !ok || !isHex(fp, 64) || !isHex(id, 12) || !isHex(secret, 32) {
		return RegToken{}, errRegTokenFormat
	}
	return RegToken{CAFingerprint: fp, ID: id, Secret: secret}, nil
}

func isHex(s string, n int) bool {
	if len(s) != n {
		return false
	}
	_, err := hex.DecodeString(s)
	return err == nil && strings.ToLower(s) == s
}

// RegisterRequest is POST /v1/register.
type RegisterRequest struct {
	Token     string `json:"token"`
	CSR       string `json:"csr"` // PEM
	ClusterID string `json:"cluster_id"`
}

// RegisterResponse answers a registration.
type RegisterResponse struct {
	CloudClusterID string `json:"cloud_cluster_id"`
	Name           string `json:"name"`
	ClientCertPEM  string `json:"client_cert_pem"`
	CACertPEM      string `json:"ca_cert_pem"`
}
