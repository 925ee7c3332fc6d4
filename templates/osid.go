package templates

import (
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"strings"

	"golang.org/x/crypto/bcrypt"
)

// osidAlphabet has lowercase letters and digits without look-alikes
// (0/o, 1/l/i): 31 symbols, so 5 of them give ~28.6 M suffixes per service.
const osidAlphabet = "23456789abcdefghjkmnpqrstuvwxyz"

const osidSuffixLen = 5

// maxNameLen keeps an OSID a valid namespace (DNS label, 63) with room for
// the "-<suffix>" part.
const maxNameLen = 63 - 1 - osidSuffixLen

// NewOSID returns "<service>-<5 chars>". Uniqueness is the caller's job (it
// checks the state and draws again on a clash). service may be an app name.
func NewOSID(rand io.Reader, service string) (string, error) {
	if err := validName(service); err != nil {
		return "", err
	}
	s, err := randomString(rand, osidAlphabet, osidSuffixLen)
	if err != nil {
		return "", err
	}
	return service + "-" + s, nil
}

// ValidOSID checks the form "<name>-<5 chars>": name a DNS-label prefix,
// suffix from the OSID alphabet.
func ValidOSID(osid string) error {
	i := strings.LastIndexByte(osid, '-')
	if i < 0 {
		return fmt.Errorf("osid %q: want <service>-<%d chars>", osid, osidSuffixLen)
	}
	if err := validName(osid[:i]); err != nil {
		return fmt.Errorf("osid %q: %w", osid, err)
	}
	suf := osid[i+1:]
	if len(suf) != osidSuffixLen {
		return fmt.Errorf("osid %q: suffix must be %d characters", osid, osidSuffixLen)
	}
	for _, c := range []byte(suf) {
		if strings.IndexByte(osidAlphabet, c) < 0 {
			return fmt.Errorf("osid %q: suffix character %q not in %s", osid, c, osidAlphabet)
		}
	}
	return nil
}

// validName accepts a DNS-label-like name: lowercase letters, digits and
// inner dashes, starting with a letter, at most maxNameLen characters.
func validName(name string) error {
	if name == "" {
		return errors.New("empty name")
	}
	if len(name) > maxNameLen {
		return fmt.Errorf("name %q longer than %d characters", name, maxNameLen)
	}
	for i, c := range []byte(name) {
		switch {
		case c >= 'a' && c <= 'z':
		case c >= '0' && c <= '9' && i > 0:
		case c == '-' && i > 0 && i < len(name)-1:
		default:
			return fmt.Errorf("name %q: only lowercase letters, digits and inner dashes, starting with a letter", name)
		}
	}
	return nil
}

// randomString draws n symbols uniformly from alphabet (rejection sampling,
// no modulo bias).
func randomString(rand io.Reader, alphabet string, n int) (string, error) {
	if rand == nil {
		return "", errors.New("no random source")
	}
	limit := 256 - 256%len(alphabet)
	out := make([]byte, 0, n)
	buf := make([]byte, n*2)
	for len(out) < n {
		if _, err := io.ReadFull(rand, buf); err != nil {
			return "", fmt.Errorf("random: %w", err)
		}
		for _, b := range buf {
			if int(b) < limit && len(out) < n {
				out = append(out, alphabet[int(b)%len(alphabet)])
			}
		}
	}
	return string(out), nil
}

// credSpec is one generated credential.
type credSpec struct {
	key  string
	kind string // "password", "user:<name>", "db:<name>", "token", "kraft-id", "opensearch-password"
}

const alnum = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789"

// NewCredentials generates the credentials a service needs, from rand
// (crypto/rand in production). Passwords are 32 URL-safe characters, so
// they go into connection URLs without escaping.
func NewCredentials(rand io.Reader, service string) (map[string]string, error) {
	d, err := lookupDef(service)
	if err != nil {
		return nil, err
	}
	out := make(map[string]string, len(d.creds))
	for _, c := range d.creds {
		if from, ok := strings.CutPrefix(c.kind, "bcrypt:"); ok {
			// A bcrypt hash of an earlier credential, for servers that
			// want hashes in their config (its salt comes from
			// crypto/rand inside x/crypto/bcrypt).
			h, err := bcrypt.GenerateFromPassword([]byte(out[from]), bcrypt.DefaultCost)
			if err != nil {
				return nil, fmt.Errorf("%s credentials: %w", service, err)
			}
			out[c.key] = string(h)
			continue
		}
		v, err := genCred(rand, c.kind)
		if err != nil {
			return nil, fmt.Errorf("%s credentials: %w", service, err)
		}
		out[c.key] = v
	}
	return out, nil
}

func genCred(rand io.Reader, kind string) (string, error) {
	switch {
	case strings.HasPrefix(kind, "user:"), strings.HasPrefix(kind, "db:"):
		return kind[strings.IndexByte(kind, ':')+1:], nil
	case kind == "password":
		return randomString(rand, alnum, 32)
	case kind == "token":
		return randomString(rand, alnum, 48)
	case kind == "complex-password":
		// OpenSearch-style policy: upper, lower, digit and a special
		// character; "-" and "_" stay URL-safe.
		for range 100 {
			s, err := randomString(rand, alnum+"-_", 32)
			if err != nil {
				return "", err
			}
			if strings.ContainsAny(s, "ABCDEFGHJKLMNPQRSTUVWXYZ") && strings.ContainsAny(s, "abcdefghijkmnopqrstuvwxyz") &&
				strings.ContainsAny(s, "23456789") && strings.ContainsAny(s, "-_") {
				return s, nil
			}
		}
		return "", errors.New("could not draw a password meeting the policy")
	case kind == "kraft-id":
		// A Kafka KRaft cluster id is a UUID, base64url without padding;
		// like Kafka's Uuid.randomUuid, never one starting with "-",
		// which kafka-storage's command line would take for a flag.
		b := make([]byte, 16)
		for {
			if _, err := io.ReadFull(rand, b); err != nil {
				return "", fmt.Errorf("random: %w", err)
			}
			b[6] = b[6]&0x0f | 0x40
			b[8] = b[8]&0x3f | 0x80
			if id := base64.RawURLEncoding.EncodeToString(b); id[0] != '-' {
				return id, nil
			}
		}
	}
	return "", fmt.Errorf("unknown credential kind %q", kind)
}
