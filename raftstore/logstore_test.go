package raftstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	"go.uber.org/goleak"

	"github.com/runos/runos-agent/mesh"
)

// testEntries are log entries with random sizes and contents from index
// first on.
func testEntries(r *rand.Rand, first uint64, n int) []*raft.Log {
	out := make([]*raft.Log, n)
	for i := range out {
		data := make([]byte, 1+r.IntN(3000))
		for j := range data {
			data[j] = byte(r.Uint32())
		}
		out[i] = &raft.Log{Index: first + uint64(i), Term: 1 + uint64(i)/50, Type: raft.LogCommand, Data: data}
	}
	return out
}

// writeBatches appends logs in random batch sizes, as Raft does.
func writeBatches(t testing.TB, r *rand.Rand, l *logStore, logs []*raft.Log) {
	t.Helper()
	for len(logs) > 0 {
		n := min(len(logs), 1+r.IntN(16))
		if err := l.StoreLogs(logs[:n]); err != nil {
			t.Fatal(err)
		}
		logs = logs[n:]
	}
}

// checkPrefix asserts that l holds a prefix of want that starts at want's
// first entry, every entry exactly as written, and returns its length.
func checkPrefix(t testing.TB, l *logStore, want []*raft.Log) int {
	t.Helper()
	first, err := l.FirstIndex()
	if err != nil {
		t.Fatal(err)
	}
	last, err := l.LastIndex()
	if err != nil {
		t.Fatal(err)
	}
	if last == 0 {
		return 0
	}
	if first != want[0].Index || last > want[len(want)-1].Index {
		t.Fatalf("log holds [%d, %d], wrote [%d, %d]", first, last, want[0].Index, want[len(want)-1].Index)
	}
	for idx := first; idx <= last; idx++ {
		var got raft.Log
		if err := l.GetLog(idx, &got); err != nil {
			t.Fatalf("entry %d of [%d, %d]: %v", idx, first, last, err)
		}
		w := want[idx-first]
		if got.Index != w.Index || got.Term != w.Term || got.Type != w.Type || !bytes.Equal(got.Data, w.Data) {
			t.Fatalf("entry %d differs from what was written", idx)
		}
	}
	return int(last - first + 1)
}

var discard = slog.New(slog.DiscardHandler)

// tailSegment is the path of the newest segment file of the log in dir.
func tailSegment(t testing.TB, dir string) string {
	t.Helper()
	segs, err := filepath.Glob(filepath.Join(dir, "*"+segExt))
	if err != nil || len(segs) == 0 {
		t.Fatalf("no segment files in %s: %v", dir, err)
	}
	slices.Sort(segs)
	return segs[len(segs)-1]
}

func copyDir(t testing.TB, src, dst string) {
	t.Helper()
	if err := os.CopyFS(dst, os.DirFS(src)); err != nil {
		t.Fatal(err)
	}
}

// crashImages is a log after acked (acknowledged batches, all synced) and
// the tail segment's bytes before and after one more batch (inflight): a
// crash during that append leaves the bytes that batch changed in any mix
// of old, new and garbage, and nothing else different. before is padded
// with zeros to after's length (a file whose size grew before its data
// reached the disk).
type crashImages struct {
	dir         string // the WAL before inflight
	seg         string // tail segment file name
	before      []byte
	after       []byte
	from, to    int // the bytes inflight changed
	acked, more []*raft.Log
}

func newCrashImages(t testing.TB, seed uint64) *crashImages {
	t.Helper()
	r := rand.New(rand.NewPCG(seed, seed+1))
	c := &crashImages{dir: t.TempDir()}
	l, err := openLogStore(c.dir, discard)
	if err != nil {
		t.Fatal(err)
	}
	c.acked = testEntries(r, 5, 30+r.IntN(100))
	writeBatches(t, r, l, c.acked)
	l.Close()
	c.seg = filepath.Base(tailSegment(t, c.dir))
	if c.before, err = os.ReadFile(filepath.Join(c.dir, c.seg)); err != nil {
		t.Fatal(err)
	}
	scratch := t.TempDir()
	copyDir(t, c.dir, scratch)
	if l, err = openLogStore(scratch, discard); err != nil {
		t.Fatal(err)
	}
	c.more = testEntries(r, c.acked[len(c.acked)-1].Index+1, 1+r.IntN(16))
	if err := l.StoreLogs(c.more); err != nil {
		t.Fatal(err)
	}
	l.Close()
	if c.after, err = os.ReadFile(filepath.Join(scratch, c.seg)); err != nil {
		t.Fatal(err)
	}
	c.diff(t)
	return c
}

// diff pads before to after's length and finds the bytes that differ.
func (c *crashImages) diff(t testing.TB) {
	t.Helper()
	if len(c.after) < len(c.before) {
		t.Fatalf("segment shrank %d → %d", len(c.before), len(c.after))
	}
	c.before = append(c.before, make([]byte, len(c.after)-len(c.before))...)
	c.from, c.to = -1, -1
	for i := range c.before {
		if c.before[i] != c.after[i] {
			if c.from < 0 {
				c.from = i
			}
			c.to = i + 1
		}
	}
	if c.from < 0 {
		t.Fatal("the append changed nothing")
	}
}

// check opens a copy of the log with the tail segment as image and asserts
// it holds every acknowledged entry, intact, and of the in-flight batch an
// intact prefix (perhaps all, perhaps none: it was never acknowledged);
// that it takes appends after that; and that a second open finds the same.
func (c *crashImages) check(t *testing.T, image []byte) {
	t.Helper()
	dir := t.TempDir()
	copyDir(t, c.dir, dir)
	if err := os.WriteFile(filepath.Join(dir, c.seg), image, 0o600); err != nil {
		t.Fatal(err)
	}
	l, err := openLogStore(dir, discard)
	if err != nil {
		t.Fatalf("open after a crash: %v", err)
	}
	defer l.Close()
	all := append(slices.Clone(c.acked), c.more...)
	n := checkPrefix(t, l, all)
	if n < len(c.acked) {
		t.Fatalf("recovered %d entries: want at least the %d acknowledged", n, len(c.acked))
	}
	next := testEntries(rand.New(rand.NewPCG(9, 9)), all[n-1].Index+1, 2)
	if err := l.StoreLogs(next); err != nil {
		t.Fatalf("append after recovering from a crash: %v", err)
	}
	want := append(all[:n:n], next...)
	checkPrefix(t, l, want)
	l.Close()
	if l, err = openLogStore(dir, discard); err != nil {
		t.Fatalf("second open after a crash: %v", err)
	}
	if m := checkPrefix(t, l, want); m != len(want) {
		t.Fatalf("second open: %d of %d entries", m, len(want))
	}
}

// mix builds a crash image: sector by sector (512 bytes) over the bytes the
// in-flight batch changed, choice picks old, new or garbage (from junk).
// Bytes before the batch are never touched: an append rewrites no byte of
// an acknowledged one (powersafe overwrites, as etcd and raft-wal assume
// too).
func (c *crashImages) mix(choice func(sector int) byte, junk func() byte) []byte {
	img := slices.Clone(c.before)
	for sec := c.from / 512; sec*512 < c.to; sec++ {
		lo, hi := max(sec*512, c.from), min(sec*512+512, c.to)
		switch choice(sec) % 3 {
		case 1:
			copy(img[lo:hi], c.after[lo:hi])
		case 2:
			for i := lo; i < hi; i++ {
				img[i] = junk()
			}
		}
	}
	return img
}

// A crash mid-append (kill -9 or power loss while the batch is being
// written, before its fsync returned) leaves its bytes in any mix of old,
// new and garbage, sector by sector, or the file cut short anywhere after
// the acknowledged data. Open recovers every acknowledged entry, and of the
// in-flight batch an intact prefix; never a damaged entry.
func TestLogCrashMidAppend(t *testing.T) {
	for seed := range uint64(6) {
		c := newCrashImages(t, seed*10)
		r := rand.New(rand.NewPCG(seed, 99))
		t.Run(fmt.Sprintf("seed=%d/none", seed), func(t *testing.T) { c.check(t, c.before) })
		t.Run(fmt.Sprintf("seed=%d/all", seed), func(t *testing.T) { c.check(t, c.after) })
		for i := range 15 {
			t.Run(fmt.Sprintf("seed=%d/mix%d", seed, i), func(t *testing.T) {
				c.check(t, c.mix(func(int) byte { return byte(r.IntN(2)) }, nil))
			})
			t.Run(fmt.Sprintf("seed=%d/garbage%d", seed, i), func(t *testing.T) {
				c.check(t, c.mix(func(int) byte { return byte(r.IntN(3)) }, func() byte { return byte(r.Uint32()) }))
			})
			off := c.from + r.IntN(c.to-c.from+1)
			t.Run(fmt.Sprintf("seed=%d/cut@%d", seed, off), func(t *testing.T) {
				c.check(t, slices.Clone(c.after[:off]))
			})
		}
	}
}

// A torn sector at the start of the in-flight batch holding garbage that
// begins with byte 2 (what raft-wal v0.4.0, the log before this one, read as
// an index frame: it took the tail for sealed and refused every append):
// open keeps every acknowledged entry and the log takes appends, without a
// hand repair.
func TestLogTornSectorLikeIndexFrame(t *testing.T) {
	for seed := range uint64(4) {
		c := newCrashImages(t, seed*7+3)
		r := rand.New(rand.NewPCG(seed, 2))
		t.Run(fmt.Sprint("seed=", seed), func(t *testing.T) {
			img := slices.Clone(c.before)
			end := min((c.from/512+1)*512, len(img))
			for i := c.from; i < end; i++ {
				img[i] = byte(r.Uint32())
			}
			img[c.from] = 2
			c.check(t, img)
		})
	}
}

// newRotationCrashImages is like newCrashImages, but the in-flight batch is
// the first one in a new segment: acked fills the tail segment to its size.
func newRotationCrashImages(t testing.TB, seed uint64) *crashImages {
	t.Helper()
	r := rand.New(rand.NewPCG(seed, seed+3))
	live := t.TempDir()
	l, err := openLogStore(live, discard)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { l.Close() }()
	segs := func() []string {
		s, _ := filepath.Glob(filepath.Join(live, "*"+segExt))
		return s
	}
	c := &crashImages{dir: filepath.Join(t.TempDir(), "before")}
	for next := uint64(1); ; {
		if next > 20000 {
			t.Fatal("no new segment after 20,000 entries")
		}
		batch := testEntries(r, next, 1+r.IntN(16))
		n := len(segs())
		l.mu.RLock()
		full := n > 0 && l.segs[len(l.segs)-1].size >= segMaxBytes
		l.mu.RUnlock()
		if full {
			// This batch starts a new segment: keep the log before it.
			l.Close()
			copyDir(t, live, c.dir)
			if l, err = openLogStore(live, discard); err != nil {
				t.Fatal(err)
			}
		}
		if err := l.StoreLogs(batch); err != nil {
			t.Fatal(err)
		}
		next += uint64(len(batch))
		if n == 0 || len(segs()) == n {
			c.acked = append(c.acked, batch...)
			continue
		}
		c.more = batch
		break
	}
	c.seg = filepath.Base(tailSegment(t, live))
	if _, err := os.Stat(filepath.Join(c.dir, c.seg)); err == nil {
		t.Fatal("the new segment was there before the batch")
	}
	if c.after, err = os.ReadFile(filepath.Join(live, c.seg)); err != nil {
		t.Fatal(err)
	}
	c.diff(t)
	return c
}

// A crash during the first append into a new segment (the log moves on to
// one once the newest has reached its size) leaves that batch's bytes in
// any mix of zeros, new and garbage, or the new file empty: open keeps
// every acknowledged entry, in the segments before, and takes appends.
func TestLogCrashWhileStartingSegment(t *testing.T) {
	for seed := range uint64(2) {
		c := newRotationCrashImages(t, seed+40)
		r := rand.New(rand.NewPCG(seed, 41))
		junk := func() byte { return byte(r.Uint32()) }
		t.Run(fmt.Sprintf("seed=%d/empty", seed), func(t *testing.T) { c.check(t, nil) })
		t.Run(fmt.Sprintf("seed=%d/zeros", seed), func(t *testing.T) { c.check(t, c.before) })
		t.Run(fmt.Sprintf("seed=%d/all", seed), func(t *testing.T) { c.check(t, c.after) })
		for i := range 8 {
			t.Run(fmt.Sprintf("seed=%d/garbage%d", seed, i), func(t *testing.T) {
				c.check(t, c.mix(func(int) byte { return byte(r.IntN(3)) }, junk))
			})
		}
	}
}

// Close and open keep every entry, across segment rotations, and head
// truncation (Raft's compaction after a snapshot) drops whole segments.
func TestLogReopenAndCompact(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	dir := t.TempDir()
	l, err := openLogStore(dir, discard)
	if err != nil {
		t.Fatal(err)
	}
	logs := testEntries(r, 1, 6000) // ≈ 9 MB: a few 4 MiB segments
	writeBatches(t, r, l, logs)
	if err := l.SetUint64([]byte("CurrentTerm"), 7); err != nil {
		t.Fatal(err)
	}
	l.Close()
	segs, _ := filepath.Glob(filepath.Join(dir, "*"+segExt))
	if len(segs) < 2 {
		t.Fatalf("%d segments: no rotation", len(segs))
	}
	if l, err = openLogStore(dir, discard); err != nil {
		t.Fatal(err)
	}
	if got := checkPrefix(t, l, logs); got != len(logs) {
		t.Fatalf("reopened with %d of %d entries", got, len(logs))
	}
	if v, err := l.GetUint64([]byte("CurrentTerm")); err != nil || v != 7 {
		t.Fatalf("CurrentTerm %d, %v", v, err)
	}
	if err := l.DeleteRange(1, 5000); err != nil {
		t.Fatal(err)
	}
	l.Close()
	after, _ := filepath.Glob(filepath.Join(dir, "*"+segExt))
	if len(after) >= len(segs) {
		t.Fatalf("compaction kept %d of %d segment files", len(after), len(segs))
	}
	if l, err = openLogStore(dir, discard); err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if got := checkPrefix(t, l, logs[5000:]); got != 1000 {
		t.Fatalf("after compaction: %d entries, want 1000", got)
	}
}

// FuzzLogCrashMidAppend: the fuzzer picks, sector by sector, what a crash
// left of the in-flight batch (old bytes, new bytes or its garbage; see
// mix); open recovers the acknowledged entries intact and never a damaged
// one.
func FuzzLogCrashMidAppend(f *testing.F) {
	c := newCrashImages(f, 1)
	f.Add([]byte{1, 1, 2}, []byte{0xff})
	f.Add([]byte{0, 1}, []byte{0})
	f.Add([]byte("21"), []byte{3})
	f.Add([]byte("2"), []byte{2})
	f.Fuzz(func(t *testing.T, choices, junk []byte) {
		if len(choices) == 0 {
			choices = []byte{0}
		}
		if len(junk) == 0 {
			junk = []byte{0}
		}
		j := 0
		c.check(t, c.mix(func(sec int) byte { return choices[sec%len(choices)] }, func() byte {
			j++
			return junk[j%len(junk)]
		}))
	})
}

// openTestStore opens a one-voter Store on dir listening on 127.0.0.1.
func openTestStore(t *testing.T, p *testPKI, dir string) *Store {
	t.Helper()
	return openTestStoreAt(t, p, dir, freeLoopback(t))
}

// freeLoopback is a 127.0.0.1 address with a port free a moment ago.
func freeLoopback(t *testing.T) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return netip.MustParseAddrPort(ln.Addr().String())
}

// openTestStoreAt opens node n1's Store on dir listening on addr, and
// waits until it leads (dir holds a one-voter configuration).
func openTestStoreAt(t *testing.T, p *testPKI, dir string, addr netip.AddrPort) *Store {
	t.Helper()
	srv, cli, _ := p.node(t, "n1", true)
	s, err := New(Config{
		Dir: dir, NodeID: "n1", Addr: addr, Net: mesh.NewHostNet(addr.Addr()), Sources: streamSources,
		ServerTLS: srv, ClientTLS: cli,
		Forward: func(context.Context, string, *Command) (*Result, error) {
			return nil, errors.New("no forwarding in this test")
		},
		Alive: func(string) bool { return true },
	}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	deadline := time.Now().Add(30 * time.Second)
	for !s.IsLeader() {
		if time.Now().After(deadline) {
			t.Fatal("no leader")
		}
		time.Sleep(10 * time.Millisecond)
	}
	return s
}

// waitState waits until the store's state passes ok (a restarted leader
// applies its log after it commits an entry of its own term).
func waitState(t *testing.T, s *Store, what string, ok func(*State) bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		st, _ := s.State()
		if ok(st) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: state %+v", what, st)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A data dir written before the WAL (testdata/raft-boltdb-v0: raft.db as the
// agent wrote it with raft-boltdb, a bootstrap and 20 updates) opens with
// its state, takes writes, and keeps them across restarts; raft.db is set
// aside once copied.
func TestLogMigratesBoltDataDir(t *testing.T) {
	opt := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, opt) })
	dir := t.TempDir()
	copyDir(t, filepath.Join("testdata", "raft-boltdb-v0"), dir)
	p := newTestPKI(t)
	s := openTestStore(t, p, dir)
	waitState(t, s, "migrated state", func(st *State) bool {
		return st.ClusterID == "c-old" && st.Nodes["n1"] != nil && st.Nodes["n1"].Version == "v0.t"
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if res, err := s.Apply(ctx, &Command{Op: OpUpdateNode, UpdateNode: &UpdateNodeCmd{NodeID: "n1", Version: "v1.new"}}); err != nil || res.Error() != nil {
		t.Fatal(err, res.Error())
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, boltFile)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("raft.db still in place after migration: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, boltMigrated)); err != nil {
		t.Fatal(err)
	}
	s = openTestStore(t, p, dir)
	waitState(t, s, "after restart", func(st *State) bool {
		return st.ClusterID == "c-old" && st.Nodes["n1"] != nil && st.Nodes["n1"].Version == "v1.new"
	})
	s.Close()
}

// A migration cut short (a crash while the WAL was being built) starts over
// from raft.db; one that finished but had not yet moved raft.db keeps the WAL.
func TestLogMigrationInterrupted(t *testing.T) {
	p := newTestPKI(t)
	t.Run("half-built WAL", func(t *testing.T) {
		dir := t.TempDir()
		copyDir(t, filepath.Join("testdata", "raft-boltdb-v0"), dir)
		junk := filepath.Join(dir, logTmpDir)
		if err := os.MkdirAll(junk, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(junk, "00000000000000000001-0000000000000001"+segExt), []byte("torn"), 0o600); err != nil {
			t.Fatal(err)
		}
		s := openTestStore(t, p, dir)
		waitState(t, s, "redone migration", func(st *State) bool {
			return st.Nodes["n1"] != nil && st.Nodes["n1"].Version == "v0.t"
		})
	})
	t.Run("raft.db not yet moved", func(t *testing.T) {
		dir := t.TempDir()
		copyDir(t, filepath.Join("testdata", "raft-boltdb-v0"), dir)
		s := openTestStore(t, p, dir)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := s.Apply(ctx, &Command{Op: OpUpdateNode, UpdateNode: &UpdateNodeCmd{NodeID: "n1", Version: "v1.wal"}}); err != nil {
			t.Fatal(err)
		}
		s.Close()
		// The old file back in place, as if the rename had not happened.
		if err := os.Rename(filepath.Join(dir, boltMigrated), filepath.Join(dir, boltFile)); err != nil {
			t.Fatal(err)
		}
		s = openTestStore(t, p, dir)
		waitState(t, s, "the WAL, not the old raft.db", func(st *State) bool {
			return st.Nodes["n1"] != nil && st.Nodes["n1"].Version == "v1.wal"
		})
	})
}

// A flipped byte in an acknowledged entry: when a later append follows it
// (or it is in an older segment) that is not what a crash leaves, and the
// log is refused with the entry named, nothing cut; in the last append it
// is indistinguishable from that append cut short, and the log is cut
// there.
func TestLogDamagedEntry(t *testing.T) {
	r := rand.New(rand.NewPCG(11, 12))
	src := t.TempDir()
	l, err := openLogStore(src, discard)
	if err != nil {
		t.Fatal(err)
	}
	logs := testEntries(r, 1, 300)
	writeBatches(t, r, l, logs[:290])
	if err := l.StoreLogs(logs[290:]); err != nil {
		t.Fatal(err)
	}
	l.Close()
	seg := filepath.Base(tailSegment(t, src))
	for _, tc := range []struct {
		idx     int // entry whose data gets a flipped byte
		refused bool
	}{{10, true}, {280, true}, {290, true}, {291, false}, {295, false}, {300, false}} {
		t.Run(fmt.Sprint(tc.idx), func(t *testing.T) {
			dir := t.TempDir()
			copyDir(t, src, dir)
			path := filepath.Join(dir, seg)
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			data := logs[tc.idx-1].Data
			at := bytes.Index(b, data)
			if at < 0 {
				t.Fatal("entry not found in the segment")
			}
			b[at+len(data)/2] ^= 0x40
			if err := os.WriteFile(path, b, 0o600); err != nil {
				t.Fatal(err)
			}
			l, err := openLogStore(dir, discard)
			if tc.refused {
				if err == nil || !errors.Is(err, errDamaged) || !strings.Contains(err.Error(), fmt.Sprintf("entry %d ", tc.idx)) {
					t.Fatalf("open: %v, want entry %d named as damaged", err, tc.idx)
				}
				after, rerr := os.ReadFile(path)
				if rerr != nil || !bytes.Equal(after, b) {
					t.Fatalf("the refused segment was changed (%v)", rerr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			if n := checkPrefix(t, l, logs); n != tc.idx-1 {
				t.Fatalf("kept %d entries, want the last append cut at entry %d", n, tc.idx)
			}
		})
	}
	t.Run("older segment", func(t *testing.T) {
		dir := t.TempDir()
		l, err := openLogStore(dir, discard)
		if err != nil {
			t.Fatal(err)
		}
		big := testEntries(r, 1, 3500)
		writeBatches(t, r, l, big)
		l.Close()
		segs, _ := filepath.Glob(filepath.Join(dir, "*"+segExt))
		slices.Sort(segs)
		if len(segs) < 2 {
			t.Fatal("one segment")
		}
		b, err := os.ReadFile(segs[0])
		if err != nil {
			t.Fatal(err)
		}
		b[len(b)-1] ^= 1 // the last entry of the older segment
		if err := os.WriteFile(segs[0], b, 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := openLogStore(dir, discard); !errors.Is(err, errDamaged) || !strings.Contains(err.Error(), "not in the newest segment") {
			t.Fatalf("open: %v, want the damage in the older segment refused", err)
		}
	})
}

// recFSM records every command it applies.
type recFSM struct {
	mu   sync.Mutex
	seen map[string]bool // guarded by mu
}

func (f *recFSM) Apply(l *raft.Log) any {
	f.mu.Lock()
	f.seen[string(l.Data)] = true
	f.mu.Unlock()
	return nil
}
func (f *recFSM) Snapshot() (raft.FSMSnapshot, error) { return nil, errors.New("not supported") }
func (f *recFSM) Restore(r io.ReadCloser) error       { return r.Close() }

func (f *recFSM) missing(want []string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, w := range want {
		if !f.seen[w] {
			n++
		}
	}
	return n
}

// Three Raft voters on the WAL take writes from many clients, all stop, and
// all start again from their data dirs: every acknowledged write is applied
// again on every voter, and the cluster takes writes after that.
func TestLogRaftClusterRestartKeepsAcknowledgedWrites(t *testing.T) {
	const n = 3
	dirs := make([]string, n)
	var servers []raft.Server
	for i := range n {
		dirs[i] = t.TempDir()
		servers = append(servers, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(fmt.Sprint("n", i)), Address: raft.ServerAddress(fmt.Sprint("addr", i))})
	}
	type node struct {
		r    *raft.Raft
		fsm  *recFSM
		logs *logStore
	}
	start := func() []node {
		nodes := make([]node, n)
		transes := make([]*raft.InmemTransport, n)
		for i := range n {
			_, transes[i] = raft.NewInmemTransport(servers[i].Address)
		}
		for i := range n {
			for j := range n {
				if i != j {
					transes[i].Connect(servers[j].Address, transes[j])
				}
			}
			l, err := openLogStore(filepath.Join(dirs[i], logDir), discard)
			if err != nil {
				t.Fatal(err)
			}
			conf := raft.DefaultConfig()
			conf.LocalID = servers[i].ID
			conf.Logger = hclog.NewNullLogger()
			conf.HeartbeatTimeout, conf.ElectionTimeout, conf.LeaderLeaseTimeout = 200*time.Millisecond, 200*time.Millisecond, 100*time.Millisecond
			conf.SnapshotThreshold = 1 << 30 // replay the whole log at restart
			fsm := &recFSM{seen: map[string]bool{}}
			r, err := raft.NewRaft(conf, fsm, l, l, raft.NewInmemSnapshotStore(), transes[i])
			if err != nil {
				t.Fatal(err)
			}
			nodes[i] = node{r, fsm, l}
		}
		return nodes
	}
	stop := func(nodes []node) {
		for _, nd := range nodes {
			if err := nd.r.Shutdown().Error(); err != nil {
				t.Error(err)
			}
			nd.logs.Close()
		}
	}
	leader := func(nodes []node) *raft.Raft {
		deadline := time.Now().Add(30 * time.Second)
		for time.Now().Before(deadline) {
			for _, nd := range nodes {
				if nd.r.State() == raft.Leader {
					return nd.r
				}
			}
			time.Sleep(10 * time.Millisecond)
		}
		t.Fatal("no leader")
		return nil
	}
	nodes := start()
	if err := nodes[0].r.BootstrapCluster(raft.Configuration{Servers: servers}).Error(); err != nil {
		t.Fatal(err)
	}
	l := leader(nodes)
	var mu sync.Mutex
	var acked []string
	var wg sync.WaitGroup
	for w := range 16 {
		wg.Go(func() {
			for i := range 40 {
				cmd := fmt.Sprintf("w%d-%d", w, i)
				if err := l.Apply([]byte(cmd), 10*time.Second).Error(); err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				acked = append(acked, cmd)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	stop(nodes)
	if t.Failed() {
		return
	}

	nodes = start()
	defer stop(nodes)
	l = leader(nodes)
	if err := l.Apply([]byte("after"), 10*time.Second).Error(); err != nil {
		t.Fatal(err)
	}
	for i, nd := range nodes {
		deadline := time.Now().Add(30 * time.Second)
		for nd.fsm.missing(append(acked, "after")) > 0 {
			if time.Now().After(deadline) {
				t.Fatalf("voter %d after restart: %d of %d acknowledged writes missing", i, nd.fsm.missing(acked), len(acked))
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}
