package ui

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/argon2"
)

// AdminUser is the UI's one account.
const AdminUser = "admin"

// Argon2id parameters for new hashes (RFC 9106's second recommendation:
// 64 MiB, one pass, four lanes). They are stored in each hash, so raising
// them later keeps old hashes verifiable.
const (
	argonTime    = 1
	argonMemory  = 64 * 1024 // KiB
	argonThreads = 4
	argonKeyLen  = 32
	argonSaltLen = 16
)

// passwordAlphabet has no look-alikes (0/O, 1/l/I) so a password read off a
// terminal can be typed back.
const passwordAlphabet = "abcdefghjkmnpqrstuvwxyz23456789"

// NewPassword returns a random admin password: 20 characters from a 31-letter
// alphabet (99 bits), in groups of five.
func NewPassword() (string, error) {
	var b strings.Builder
	buf := make([]byte, 1)
	for i := 0; i < 20; {
		if _, err := rand.Read(buf); err != nil {
			return "", err
		}
		// Rejection sampling keeps every letter equally likely.
		if int(buf[0]) >= 256/len(passwordAlphabet)*len(passwordAlphabet) {
			continue
		}
		if i > 0 && i%5 == 0 {
			b.WriteByte('-')
		}
		b.WriteByte(passwordAlphabet[int(buf[0])%len(passwordAlphabet)])
		i++
	}
	return b.String(), nil
}

// NewSessionKey returns a fresh key for signing sessions.
func NewSessionKey() ([]byte, error) {
	k := make([]byte, 32)
	_, err := rand.Read(k)
	return k, err
}

// HashPassword returns the argon2id hash of password in PHC string form.
func HashPassword(password string) (string, error) {
	salt := make([]byte, argonSaltLen)
	if _, err := rand.Read(salt); err != nil {
		return "", err
	}
	sum := argon2.IDKey([]byte(password), salt, argonTime, argonMemory, argonThreads, argonKeyLen)
	b64 := base64.RawStdEncoding
	return fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s", argon2.Version, argonMemory, argonTime, argonThreads,
		b64.EncodeToString(salt), b64.EncodeToString(sum)), nil
}

var errBadHash = errors.New("malformed password hash")

// VerifyPassword checks password against a HashPassword result in constant
// time. Parameters are bounded so a corrupt hash cannot exhaust memory.
func VerifyPassword(encoded, password string) (bool, error) {
	parts := strings.Split(encoded, "$")
	if len(parts) != 6 || parts[0] != "" || parts[1] != "argon2id" || parts[2] != fmt.Sprintf("v=%d", argon2.Version) {
		return false, errBadHash
	}
	var m, t uint32
	var p uint8
	if _, err := fmt.Sscanf(parts[3], "m=%d,t=%d,p=%d", &m, &t, &p); err != nil {
		return false, errBadHash
	}
	if m < 8 || m > 1<<20 || t < 1 || t > 16 || p < 1 || p > 16 {
		return false, errBadHash
	}
	b64 := base64.RawStdEncoding
	salt, err := b64.DecodeString(parts[4])
	if err != nil || len(salt) < 8 {
		return false, errBadHash
	}
	want, err := b64.DecodeString(parts[5])
	if err != nil || len(want) < 16 || len(want) > 64 {
		return false, errBadHash
	}
	got := argon2.IDKey([]byte(password), salt, t, m, p, uint32(len(want)))
	return subtle.ConstantTimeCompare(got, want) == 1, nil
}

// session is a signed-in browser. The cookie carries everything (ID,
// expiry, HMAC under the cluster's session key), so any node validates it
// from its own copy of the state; a new key (password reset) kills them all.
type session struct {
	ID      string
	Expires time.Time
}

const cookieVersion = "v1"

func mac(key []byte, purpose, msg string) []byte {
	h := hmac.New(sha256.New, key)
	h.Write([]byte(purpose))
	h.Write([]byte{0})
	h.Write([]byte(msg))
	return h.Sum(nil)
}

func newSession(ttl time.Duration, now time.Time) (session, error) {
	id := make([]byte, 16)
	if _, err := rand.Read(id); err != nil {
		return session{}, err
	}
	return session{ID: base64.RawURLEncoding.EncodeToString(id), Expires: now.Add(ttl).Truncate(time.Second)}, nil
}

// encode returns the cookie value.
func (s session) encode(key []byte) string {
	body := cookieVersion + "." + s.ID + "." + strconv.FormatInt(s.Expires.Unix(), 10)
	return body + "." + base64.RawURLEncoding.EncodeToString(mac(key, "runos-ui-session", body))
}

var (
	errNoSession      = errors.New("not signed in")
	errSessionExpired = errors.New("session expired: sign in again")
	errSessionEnded   = errors.New("session ended (signed out, or the admin password was reset): sign in again")
)

// parseSession checks a cookie value's signature and expiry.
func parseSession(value string, key []byte, now time.Time) (session, error) {
	parts := strings.Split(value, ".")
	if len(parts) != 4 || parts[0] != cookieVersion {
		return session{}, errSessionEnded
	}
	body := strings.Join(parts[:3], ".")
	sig, err := base64.RawURLEncoding.DecodeString(parts[3])
	if err != nil || !hmac.Equal(sig, mac(key, "runos-ui-session", body)) {
		return session{}, errSessionEnded
	}
	exp, err := strconv.ParseInt(parts[2], 10, 64)
	if err != nil {
		return session{}, errSessionEnded
	}
	s := session{ID: parts[1], Expires: time.Unix(exp, 0)}
	if !now.Before(s.Expires) {
		return session{}, errSessionExpired
	}
	return s, nil
}

// csrfToken is the value a signed-in page must send in the X-CSRF-Token
// header with every change. It is bound to the session and derived from
// the key, so every node checks it without shared storage; a page on
// another origin cannot read it (it is never in a cookie).
func (s session) csrfToken(key []byte) string {
	return base64.RawURLEncoding.EncodeToString(mac(key, "runos-ui-csrf", s.ID))
}

func (s session) checkCSRF(key []byte, token string) bool {
	return token != "" && subtle.ConstantTimeCompare([]byte(token), []byte(s.csrfToken(key))) == 1
}

// knownGood recognizes the admin password without argon2 once this process
// has verified it: an HMAC under a key that never leaves memory, bound to
// the stored hash (a reset forgets it). It lets the right password in when
// the sign-in budgets are spent, which is what a local user flooding wrong
// passwords from 127.0.0.1 (the admin's address too) spends them on. It
// adds nothing for an attacker who can read the agent's memory: the
// session key is there as well.
type knownGood struct {
	key [32]byte // random per process

	mu   sync.Mutex
	hash string   // guarded by mu: the stored hash the password was verified against
	sum  [32]byte // guarded by mu
}

func newKnownGood() (*knownGood, error) {
	k := &knownGood{}
	if _, err := rand.Read(k.key[:]); err != nil {
		return nil, err
	}
	return k, nil
}

func (k *knownGood) mac(hash, password string) [32]byte {
	h := hmac.New(sha256.New, k.key[:])
	h.Write([]byte(hash))
	h.Write([]byte{0})
	h.Write([]byte(password))
	var sum [32]byte
	h.Sum(sum[:0])
	return sum
}

// remember records that password verified against hash.
func (k *knownGood) remember(hash, password string) {
	sum := k.mac(hash, password)
	k.mu.Lock()
	k.hash, k.sum = hash, sum
	k.mu.Unlock()
}

// match reports whether password is the one verified against hash; false
// when none has been (then only argon2 can tell).
func (k *knownGood) match(hash, password string) bool {
	sum := k.mac(hash, password)
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.hash != "" && k.hash == hash && subtle.ConstantTimeCompare(sum[:], k.sum[:]) == 1
}
