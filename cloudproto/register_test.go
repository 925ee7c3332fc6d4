package cloudproto

import (
	"strings"
	"testing"
)

func TestRegTokenParse(t *testing.T) {
	tok := RegToken{CAFingerprint: strings.Repeat("ab", 32), ID: "0123456789ab", Secret: strings.Repeat("c", 32)}
	got, err := ParseRegToken(" " + tok.String() + "\n")
	if err != nil || got != tok {
		t.Fatalf("%+v %v", got, err)
	}
	for _, bad := range []string{"", "RC1", "RO1" + tok.String()[3:], strings.ToUpper(tok.String()), tok.String() + "0"} {
		if _, err := ParseRegToken(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
