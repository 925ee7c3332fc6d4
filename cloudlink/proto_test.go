package cloudlink

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/runos/runos-agent/seal"
)

func TestFrameRoundTripAndLimits(t *testing.T) {
	var buf bytes.Buffer
	in := &Msg{Type: MsgChanges, Changes: []Change{{Index: 5, Op: "join"}}}
	if err := WriteFrame(&buf, in); err != nil {
		t.Fatal(err)
	}
	out, err := ReadFrame(&buf)
	if err != nil || out.Type != MsgChanges || out.Changes[0].Index != 5 {
		t.Fatalf("%+v %v", out, err)
	}
	big := binary.BigEndian.AppendUint32(nil, MaxFrame+1)
	if _, err := ReadFrame(bytes.NewReader(big)); !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("oversized: %v", err)
	}
	trunc := append(binary.BigEndian.AppendUint32(nil, 10), "{}"...)
	if _, err := ReadFrame(bytes.NewReader(trunc)); !errors.Is(err, ErrMalformed) {
		t.Fatalf("truncated: %v", err)
	}
	huge := &Msg{Type: MsgError, Error: strings.Repeat("x", MaxFrame)}
	if err := WriteFrame(io.Discard, huge); !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("writing oversized: %v", err)
	}
}

func FuzzReadFrame(f *testing.F) {
	var buf bytes.Buffer
	WriteFrame(&buf, &Msg{Type: MsgAck, Index: 3})
	f.Add(buf.Bytes())
	f.Add([]byte{0, 0, 0, 2, '{', '}'})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := ReadFrame(bytes.NewReader(b))
		if err == nil && m.Type == "" {
			t.Fatal("frame without a type accepted")
		}
	})
}

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

func TestBackoffFullJitterWithinCeiling(t *testing.T) {
	key, _ := seal.NewKey()
	l, err := New(Config{Host: nil, DataKey: key, NodeName: "n", JoinToken: func(a, b string) (string, string) { return "", "" }}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err == nil {
		t.Fatal("missing Host accepted")
	}
	l = &Link{cfg: Config{BackoffMin: time.Second, BackoffMax: 60 * time.Second}}
	for attempt, ceil := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 16 * time.Second, 32 * time.Second, 60 * time.Second, 60 * time.Second} {
		var maxSeen time.Duration
		for range 2000 {
			d := l.backoff(attempt)
			if d <= 0 || d > ceil {
				t.Fatalf("attempt %d: %v outside (0, %v]", attempt, d, ceil)
			}
			maxSeen = max(maxSeen, d)
		}
		if maxSeen < ceil/2 {
			t.Errorf("attempt %d: never above %v of %v: not full jitter", attempt, maxSeen, ceil)
		}
	}
	if d := l.backoff(1000); d > 60*time.Second {
		t.Fatalf("huge attempt: %v", d)
	}
}

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
