package cloudlink

import (
	"io"
	"log/slog"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/runos/runos-agent/seal"
)

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

// Attack (unit level): a node removed at a rotation keeps the old data key;
// the secret of a token the cloud creates after the rotation must not be
// derivable from it, and the link must follow the rotation without restart.
func TestTokenSecretFollowsRotation(t *testing.T) {
	k1, _ := seal.NewKey()
	ring, _ := seal.NewKeyring(seal.EpochKey{Epoch: 1, Key: k1})
	l := &Link{cfg: Config{DataKey: ring}}
	removed := &Link{cfg: Config{DataKey: k1}} // what the removed node can compute
	id1, s1 := l.tokenSecret("cmd")
	if id2, s2 := removed.tokenSecret("cmd"); id1 != id2 || s1 != s2 {
		t.Fatal("before the rotation the derivation differs")
	}
	k2, _ := seal.NewKey()
	if err := ring.Add(seal.EpochKey{Epoch: 2, Key: k2}); err != nil {
		t.Fatal(err)
	}
	id, s := l.tokenSecret("cmd-after")
	if rid, rs := removed.tokenSecret("cmd-after"); rid == id || rs == s {
		t.Fatal("the removed node derives a token created after the rotation")
	}
}
