package seal

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

func TestSealOpen(t *testing.T) {
	k, err := NewKey()
	if err != nil {
		t.Fatal(err)
	}
	s, err := Seal(k, "svc/pw", []byte("hunter2"))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(s, "hunter2") {
		t.Fatal("plaintext visible in sealed value")
	}
	got, err := Open(k, "svc/pw", s)
	if err != nil || !bytes.Equal(got, []byte("hunter2")) {
		t.Fatalf("Open = %q, %v", got, err)
	}
	other, _ := NewKey()
	if _, err := Open(other, "svc/pw", s); !errors.Is(err, ErrOpen) {
		t.Fatalf("other key: %v", err)
	}
	if _, err := Open(k, "svc/user", s); !errors.Is(err, ErrOpen) {
		t.Fatalf("other purpose: %v", err)
	}
	if _, err := Open(k, "svc/pw", s[:len(s)-3]); !errors.Is(err, ErrOpen) {
		t.Fatalf("cut: %v", err)
	}
	if _, err := Open(k, "svc/pw", "plain"); err == nil {
		t.Fatal("unsealed value opened")
	}
	k2, err := ParseKey(k.String())
	if err != nil || k2 != k {
		t.Fatalf("ParseKey round trip: %v", err)
	}
	if _, err := ParseKey("short"); err == nil {
		t.Fatal("bad key parsed")
	}
}

func FuzzOpen(f *testing.F) {
	k, _ := NewKey()
	s, _ := Seal(k, "p", []byte("x"))
	f.Add(s)
	f.Add("sealed1:")
	f.Fuzz(func(t *testing.T, in string) {
		Open(k, "p", in) // must not panic
	})
}

func TestDeriveSeparatesPurposes(t *testing.T) {
	k, _ := NewKey()
	a, b := Derive(k, "memberlist"), Derive(k, "heartbeat")
	if a == b || a == k || a.IsZero() {
		t.Fatal("derived keys must differ per purpose and from the data key")
	}
	if Derive(k, "memberlist") != a {
		t.Fatal("Derive is not deterministic")
	}
	k2, _ := NewKey()
	if Derive(k2, "memberlist") == a {
		t.Fatal("a new data key must give a new derived key")
	}
}
