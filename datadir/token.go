package datadir

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

// Token is a parsed join token.
type Token struct {
	CAFingerprint string
	ID            string
	Secret        string
}

// ErrTokenFormat means a string is not a join token.
var ErrTokenFormat = errors.New("malformed join token (expected RO1<ca-fingerprint>::<id>.<secret>, as printed by `runos-agent token create`)")

// NewToken draws a fresh token ID and secret for the cluster whose CA has
// caFingerprint.
func NewToken(caFingerprint string) Token {
	return Token{CAFingerprint: caFingerprint, ID: randomHex(6), Secret: randomHex(16)}
}

// String is the token as users copy it.
func (t Token) String() string {
	return tokenPrefix + t.CAFingerprint + "::" + t.ID + "." + t.Secret
}

// ParseToken parses what String printed; anything else is ErrTokenFormat.
func ParseToken(s string) (Token, error) {
	rest, ok := strings.CutPrefix(strings.TrimSpace(s), tokenPrefix)
	if !ok {
		return Token{}, ErrTokenFormat
	}
	fp, cred, ok := strings.Cut(rest, "::")
	if !ok {
		return Token{}, ErrTokenFormat
	}
	id, secret, ok := strings.Cut(cred, ".")
	if !ok || !isHex(fp, 64) || !isHex(id, 12) || !isHex(secret, 32) {
		return Token{}, ErrTokenFormat
	}
	return Token{CAFingerprint: fp, ID: id, Secret: secret}, nil
}

// NewNodeID draws a node ID (16 lowercase hex digits).
func NewNodeID() string { return randomHex(8) }

// ValidNodeID reports whether id has the shape NewNodeID gives.
func ValidNodeID(id string) bool { return isHex(id, 16) }

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
