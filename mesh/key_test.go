package mesh

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// RFC 7748 §6.1, Alice's key pair, in the base64 form `wg` prints.
const (
	rfcPrivate = "dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo="
	rfcPublic  = "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo="
)

func TestKeyVector(t *testing.T) {
	priv, err := ParseKey(rfcPrivate)
	if err != nil {
		t.Fatal(err)
	}
	if got := priv.PublicKey().String(); got != rfcPublic {
		t.Fatalf("PublicKey() = %s, want %s", got, rfcPublic)
	}
	if got := priv.String(); got != rfcPrivate {
		t.Fatalf("String() = %s, want %s", got, rfcPrivate)
	}
	// The UAPI speaks hex; check it is the RFC's spelling of the same bytes.
	if got, want := priv.PublicKey().hex(), "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"; got != want {
		t.Fatalf("hex() = %s, want %s", got, want)
	}
}

func TestKeyRoundTrip(t *testing.T) {
	k, err := GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	if k.IsZero() {
		t.Fatal("generated zero key")
	}
	if k[0]&7 != 0 || k[31]&128 != 0 || k[31]&64 == 0 {
		t.Fatalf("generated key is not clamped: %x", k)
	}
	s := k.String()
	if len(s) != 44 || !strings.HasSuffix(s, "=") {
		t.Fatalf("String() = %q, want 44 chars of padded base64", s)
	}
	back, err := ParseKey(s)
	if err != nil || back != k {
		t.Fatalf("ParseKey(String()) = %v, %v; want %v", back, err, k)
	}
	hk, err := parseHexKey(k.hex())
	if err != nil || hk != k {
		t.Fatalf("parseHexKey(hex()) = %v, %v", hk, err)
	}

	type doc struct {
		Key Key `json:"key"`
	}
	b, err := json.Marshal(doc{k.PublicKey()})
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"key":"` + k.PublicKey().String() + `"}`; string(b) != want {
		t.Fatalf("json = %s, want %s", b, want)
	}
	var d doc
	if err := json.Unmarshal(b, &d); err != nil || d.Key != k.PublicKey() {
		t.Fatalf("json round trip = %v, %v", d.Key, err)
	}
	if err := json.Unmarshal([]byte(`{"key":"nope"}`), &d); err == nil {
		t.Fatal("json accepted a bad key")
	}
}

func TestParseKeyErrors(t *testing.T) {
	for _, s := range []string{
		"",
		"not base64!",
		"AAAA",
		rfcPrivate[:43],                // missing padding
		rfcPrivate + "AAAA",            // too long
		strings.Repeat("A", 42) + "B=", // non-zero padding bits: a second spelling of a key
		"8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a", // hex is not accepted
	} {
		if _, err := ParseKey(s); err == nil {
			t.Errorf("ParseKey(%q) succeeded", s)
		}
	}
}

func TestLoadOrCreatePrivateKey(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "wg.key")

	k1, err := LoadOrCreatePrivateKey(path)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Fatalf("key file mode = %04o, want 0600", perm)
	}
	k2, err := LoadOrCreatePrivateKey(path)
	if err != nil {
		t.Fatal(err)
	}
	if k1 != k2 {
		t.Fatal("reload returned a different key")
	}
	// No temporary files left next to the key.
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Fatalf("dir has %d entries, want only the key", len(entries))
	}

	// A key readable by others is refused, not silently used.
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreatePrivateKey(path); err == nil {
		t.Fatal("accepted a world-readable key file")
	}

	// A file written by `wg genkey > f` is read as is.
	wgPath := filepath.Join(dir, "from-wg.key")
	if err := os.WriteFile(wgPath, []byte(rfcPrivate+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	k3, err := LoadOrCreatePrivateKey(wgPath)
	if err != nil || k3.String() != rfcPrivate {
		t.Fatalf("load wg key = %v, %v", k3, err)
	}

	bad := filepath.Join(dir, "bad.key")
	if err := os.WriteFile(bad, []byte("garbage\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreatePrivateKey(bad); err == nil {
		t.Fatal("accepted a garbage key file")
	}
	if _, err := LoadOrCreatePrivateKey(filepath.Join(dir, "missing-dir", "wg.key")); err == nil {
		t.Fatal("created a key in a directory that does not exist")
	}
	if _, err := LoadOrCreatePrivateKey(""); err == nil {
		t.Fatal("accepted an empty path")
	}
}
