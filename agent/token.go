package agent

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"strings"
)

// A join token carries the cluster CA's fingerprint (as k3s's secure tokens
// do), so a joiner holding only the token and a member's address can tell
// the real cluster from an impostor:
//
//	RO1<sha256 of the CA, 64 hex>::<token id, 12 hex>.<secret, 32 hex>
//
// Only a hash of the secret is stored in the cluster state.
const tokenPrefix = "RO1"

type joinToken struct {
	CAFingerprint string
	ID            string
	Secret        string
}

var errTokenFormat = errors.New("malformed join token (expected RO1<ca-fingerprint>::<id>.<secret>, as printed by `runos-agent token create`)")

func newJoinToken(caFingerprint string) joinToken {
	return joinToken{CAFingerprint: caFingerprint, ID: randomHex(6), Secret: randomHex(16)}
}

func (t joinToken) String() string {
	return tokenPrefix + t.CAFingerprint + "::" + t.ID + "." + t.Secret
}

func parseJoinToken(s string) (joinToken, error) {
	rest, ok := strings.CutPrefix(strings.TrimSpace(s), tokenPrefix)
	if !ok {
		return joinToken{}, errTokenFormat
	}
	fp, cred, ok := strings.Cut(rest, "::")
	if !ok {
		return joinToken{}, errTokenFormat
	}
	id, secret, ok := strings.Cut(cred, ".")
	if !ok || !isHex(fp, 64) || !isHex(id, 12) || !isHex(secret, 32) {
		return joinToken{}, errTokenFormat
	}
	return joinToken{CAFingerprint: fp, ID: id, Secret: secret}, nil
}

func isHex(s string, n int) bool {
	if len(s) != n {
		return false
	}
	_, err := hex.DecodeString(s)
	return err == nil && strings.ToLower(s) == s
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}
