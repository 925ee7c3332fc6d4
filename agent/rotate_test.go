package agent

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/runos/runos-agent/api"
	"github.com/runos/runos-agent/datadir"
	"github.com/runos/runos-agent/raftstore"
	"github.com/runos/runos-agent/seal"
)

// keysInDir is every data key a removed node has on disk: whatever the
// file's layout, each base64 word that parses as a key.
func keysInDir(t *testing.T, dir string) []seal.Key {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(dir, datadir.FileDataKey))
	if err != nil {
		t.Fatal(err)
	}
	var out []seal.Key
	for _, w := range strings.Fields(string(raw)) {
		if k, err := seal.ParseKey(w); err == nil {
			out = append(out, k)
		}
	}
	if len(out) == 0 {
		t.Fatal("no data key in the removed node's data dir")
	}
	return out
}

// sealedValues lists every sealed value in a state with its purpose.
func sealedValues(st *raftstore.State) map[string]string {
	out := map[string]string{}
	if st.UI.SessionKey != "" {
		out[datadir.UISessionKeyPurpose] = st.UI.SessionKey
	}
	if r := st.Cloud.Registration; r != nil {
		out[raftstore.CloudKeyPurpose] = r.ClientKeySealed
	}
	if k := st.Workloads.Kube; k != nil {
		out[raftstore.KubeconfigPurpose] = k.Kubeconfig
	}
	for id, r := range st.Workloads.Services {
		out[raftstore.CredentialsPurpose(id)] = r.Credentials
	}
	return out
}

func opensWithAny(keys []seal.Key, purpose, sealed string) bool {
	for _, k := range keys {
		if _, err := seal.Open(k, purpose, sealed); err == nil {
			return true
		}
	}
	return false
}

// Attack: a removed node keeps its data dir. Whatever is sealed after its
// removal (a new UI session key; everything re-sealed) must not open with
// the keys it has on disk.
func TestRemovedNodeDataKeyOpensNothingNew(t *testing.T) {
	c := newCluster(t, 3)
	victim := c.follower()
	victimDir := c.dirs[indexOf(c.agents, victim)]
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	l := c.waitLeader()
	if err := l.RemoveNode(ctx, victim.Name()); err != nil {
		t.Fatal(err)
	}
	// A secret written after the removal, through a remaining member.
	if _, err := c.waitLeader().ResetUIPassword(ctx); err != nil {
		t.Fatal(err)
	}
	stolen := append(keysInDir(t, victimDir), victim.dataKeys()...)
	eventually(t, "nothing in the state opens with the removed node's keys", func() error {
		st, _ := c.waitLeader().store.State()
		for purpose, v := range sealedValues(st) {
			if opensWithAny(stolen, purpose, v) {
				return fmt.Errorf("the removed node opens %s", purpose)
			}
		}
		return nil
	})
	// The remaining members still open everything.
	for _, a := range c.running() {
		if a == victim {
			continue
		}
		eventually(t, a.Name()+" opens the state", func() error {
			st, _ := a.store.State()
			for purpose, v := range sealedValues(st) {
				if !opensWithAny(a.dataKeys(), purpose, v) {
					return fmt.Errorf("%s cannot open %s", a.Name(), purpose)
				}
			}
			return nil
		})
	}
}

// privateKeyMarkers are what a PEM private key looks like in Raft data: in
// the clear, or as a JSON []byte (base64, the PEM at offset 0).
var privateKeyMarkers = [][]byte{
	[]byte("PRIVATE KEY"),
	[]byte(base64.StdEncoding.EncodeToString([]byte("-----BEGIN PRIVATE KEY-----"))),
}

func holdsPrivateKey(b []byte) bool {
	for _, m := range privateKeyMarkers {
		if bytes.Contains(b, m) {
			return true
		}
	}
	return false
}

// Attack: the CA private key, read from a member's Raft data on disk (the
// log, a snapshot, a backup of either).
func TestCAKeyNotInRaftData(t *testing.T) {
	c := newCluster(t, 3)
	l := c.waitLeader()
	eventually(t, "no plaintext CA key in the state", func() error {
		st, _ := l.store.State()
		b, _ := json.Marshal(st)
		if holdsPrivateKey(b) || len(st.CAKeyPEM) > 0 {
			return errors.New("the state holds a PRIVATE KEY in plaintext")
		}
		return nil
	})
	// Snapshot, then look at every file of the Raft dir: the log holds
	// the bootstrap command, the snapshot the state.
	eventually(t, "a snapshot", l.store.Snapshot)
	for _, dir := range c.dirs {
		err := filepath.WalkDir(filepath.Join(dir, datadir.DirRaft), func(p string, d os.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			if holdsPrivateKey(b) {
				return fmt.Errorf("%s holds a PRIVATE KEY in plaintext", p)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	// Members still admit a joiner (the key opens for them).
	c.addNode(l)
}

// Attack: a removed node derives the secret of a join token the cloud
// creates after its removal (the ID and secret are an HMAC under the data
// key, see cloudlink.Link.tokenSecret).
func TestRemovedNodeCannotDeriveCloudTokens(t *testing.T) {
	c := newCluster(t, 3)
	victim := c.follower()
	victimDir := c.dirs[indexOf(c.agents, victim)]
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	if err := c.waitLeader().RemoveNode(ctx, victim.Name()); err != nil {
		t.Fatal(err)
	}
	stolen := append(keysInDir(t, victimDir), victim.dataKeys()...)
	const cmdID = "cloud-cmd-after-removal"
	eventually(t, "the removed node cannot derive the token", func() error {
		// What the leader's cloud link derives it with: its sealing key.
		m := hmac.New(sha256.New, c.waitLeader().dataKeys()[0][:])
		m.Write([]byte("runos cloud join token\x00" + cmdID))
		sum := m.Sum(nil)
		id, secret := hex.EncodeToString(sum[:6]), hex.EncodeToString(sum[6:22])
		for _, k := range stolen {
			m := hmac.New(sha256.New, k[:])
			m.Write([]byte("runos cloud join token\x00" + cmdID))
			sum := m.Sum(nil)
			if hex.EncodeToString(sum[:6]) == id || hex.EncodeToString(sum[6:22]) == secret {
				return errors.New("the removed node derives the token's ID and secret")
			}
		}
		return nil
	})
}

// Removing the leader: the rest agree it is gone and commit a write. With
// production Raft timing; the time is logged (the figure is for the
// report, not an assertion).
func TestRemoveLeaderProductionTiming(t *testing.T) {
	tuning := fastTuning
	tuning.RaftHeartbeat, tuning.RaftElection = 0, 0
	c := newClusterTuned(t, 3, tuning)
	old := c.waitLeader()
	var via *Agent
	for _, a := range c.running() {
		if a != old {
			via = a
			break
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	t0 := time.Now()
	if err := via.RemoveNode(ctx, old.Name()); err != nil {
		t.Fatal(err)
	}
	removed := time.Since(t0)
	for {
		err := func() error {
			for _, a := range c.running() {
				if a == old {
					continue
				}
				if st, _ := a.store.State(); st.NodeByName(old.Name()) != nil {
					return fmt.Errorf("%s still lists %s", a.Name(), old.Name())
				}
			}
			wctx, wcancel := context.WithTimeout(ctx, 2*time.Second)
			defer wcancel()
			_, err := via.CreateToken(wctx, api.TokenRequest{TTL: "1h"})
			return err
		}()
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("removal of the leader did not settle: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("leader removal: RemoveNode returned after %v, all agree and a write committed after %v", removed, time.Since(t0))
}

// A node that was down during a rotation unwraps its copy from the state
// when it comes back; a node joining after it gets the current key.
func TestOfflineNodeCatchesUpWithRotation(t *testing.T) {
	c := newCluster(t, 4)
	l := c.waitLeader()
	// Down: the non-voter (the voters keep quorum); removed: a voter.
	var down, gone *Agent
	nonvoters := l.store.Status().NonVoters
	for _, a := range c.running() {
		switch {
		case a == l:
		case slices.Contains(nonvoters, a.cfg.NodeID):
			down = a
		case gone == nil:
			gone = a
		}
	}
	if down == nil || gone == nil {
		t.Fatalf("no non-voter among 4 nodes (%v)", nonvoters)
	}
	downIdx := indexOf(c.agents, down)
	c.stop(downIdx)
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	if err := c.waitLeader().RemoveNode(ctx, gone.Name()); err != nil {
		t.Fatal(err)
	}
	st, _ := c.waitLeader().store.State()
	if st.Keys.CurrentEpoch() != 2 {
		t.Fatalf("epoch %d after the removal, want 2", st.Keys.CurrentEpoch())
	}
	c.start(downIdx)
	back := c.agents[downIdx]
	eventually(t, "the restarted node adopts epoch 2", func() error {
		if e := back.keys.Epoch(); e != 2 {
			return fmt.Errorf("epoch %d", e)
		}
		return nil
	})
	onDisk := keysInDir(t, c.dirs[downIdx])
	if onDisk[0] != back.keys.Current() {
		t.Fatal("the adopted key is not persisted first in data.key")
	}
	c.addNode(c.waitLeader())
	joiner := c.agents[len(c.agents)-1]
	if joiner.keys.Epoch() != 2 {
		t.Fatalf("joiner holds epoch %d, want 2", joiner.keys.Epoch())
	}
	for _, a := range []*Agent{back, joiner} {
		eventually(t, a.Name()+" opens the state", func() error {
			st, _ := a.store.State()
			for purpose, v := range sealedValues(st) {
				if !opensWithAny(a.dataKeys(), purpose, v) {
					return fmt.Errorf("cannot open %s", purpose)
				}
			}
			if _, err := a.clusterCA(st); err != nil {
				return err
			}
			return nil
		})
	}
}
