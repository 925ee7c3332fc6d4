package datadir

import (
	"strings"
	"testing"
)

func TestJoinTokenRoundTrip(t *testing.T) {
	fp := strings.Repeat("ab", 32)
	tok := NewToken(fp)
	got, err := ParseToken(tok.String())
	if err != nil {
		t.Fatal(err)
	}
	if got != tok {
		t.Fatalf("got %+v, want %+v", got, tok)
	}
}

func FuzzParseJoinToken(f *testing.F) {
	f.Add(NewToken(strings.Repeat("0", 64)).String())
	f.Add("RO1::.")
	f.Add("garbage")
	f.Fuzz(func(t *testing.T, s string) {
		tok, err := ParseToken(s)
		if err != nil {
			return
		}
		again, err := ParseToken(tok.String())
		if err != nil || again != tok {
			t.Fatalf("round trip of %q failed: %v", s, err)
		}
	})
}
