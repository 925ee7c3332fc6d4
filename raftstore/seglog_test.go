package raftstore

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// What Raft deletes stays deleted across an open, and the log takes the
// appends Raft makes after each kind of delete: a suffix (a conflict with
// the leader; across segments), a prefix (compaction; the first index is
// inside a segment) and everything (before a snapshot is installed, after
// which the next append comes at any index).
func TestLogDeleteRange(t *testing.T) {
	r := rand.New(rand.NewPCG(21, 22))
	dir := t.TempDir()
	l, err := openLogStore(dir, discard)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { l.Close() }()
	reopen := func() {
		t.Helper()
		l.Close()
		if l, err = openLogStore(dir, discard); err != nil {
			t.Fatal(err)
		}
	}
	logs := testEntries(r, 1, 6000)
	writeBatches(t, r, l, logs)
	segs := func() int {
		s, _ := filepath.Glob(filepath.Join(dir, "*"+segExt))
		return len(s)
	}
	if segs() < 3 {
		t.Fatalf("%d segments", segs())
	}

	// Suffix from inside the first segment: the later ones go.
	if err := l.DeleteRange(1000, 6000); err != nil {
		t.Fatal(err)
	}
	if n := segs(); n != 1 {
		t.Fatalf("%d segments after deleting all but 999 entries", n)
	}
	other := testEntries(r, 1000, 500) // the new leader's entries
	writeBatches(t, r, l, other)
	want := append(slices.Clone(logs[:999]), other...)
	reopen()
	if n := checkPrefix(t, l, want); n != len(want) {
		t.Fatalf("after a suffix delete: %d of %d entries", n, len(want))
	}

	// Prefix, the first index inside the only segment: it stays hidden.
	if err := l.DeleteRange(1, 700); err != nil {
		t.Fatal(err)
	}
	reopen()
	if n := checkPrefix(t, l, want[700:]); n != len(want)-700 {
		t.Fatalf("after compaction: %d entries, want %d", n, len(want)-700)
	}
	var e raft.Log
	if err := l.GetLog(700, &e); !errors.Is(err, raft.ErrLogNotFound) {
		t.Fatalf("compacted entry 700: %v", err)
	}

	// Everything, then an append at a later index (a snapshot's).
	if err := l.DeleteRange(701, 1499); err != nil {
		t.Fatal(err)
	}
	if n := segs(); n != 0 {
		t.Fatalf("%d segments after deleting everything", n)
	}
	reopen()
	if first, _ := l.FirstIndex(); first != 0 {
		t.Fatalf("first index %d of an empty log", first)
	}
	if last, _ := l.LastIndex(); last != 0 {
		t.Fatalf("last index %d of an empty log", last)
	}
	fresh := testEntries(r, 9000, 30)
	writeBatches(t, r, l, fresh)
	reopen()
	if n := checkPrefix(t, l, fresh); n != len(fresh) {
		t.Fatalf("after a snapshot: %d of %d entries", n, len(fresh))
	}
	if err := l.StoreLogs(testEntries(r, 9100, 1)); err == nil {
		t.Fatal("an append with a gap was taken")
	}
}

// Raft's term and vote survive an open; a damaged meta file is refused
// with its name rather than read as no vote.
func TestLogStableKeys(t *testing.T) {
	dir := t.TempDir()
	l, err := openLogStore(dir, discard)
	if err != nil {
		t.Fatal(err)
	}
	if v, err := l.GetUint64([]byte("CurrentTerm")); err != nil || v != 0 {
		t.Fatalf("unset term: %d, %v", v, err)
	}
	if v, err := l.Get([]byte("LastVoteCand")); err != nil || v != nil {
		t.Fatalf("unset vote: %q, %v", v, err)
	}
	if err := l.SetUint64([]byte("CurrentTerm"), 7); err != nil {
		t.Fatal(err)
	}
	if err := l.Set([]byte("LastVoteCand"), []byte("n2")); err != nil {
		t.Fatal(err)
	}
	l.Close()
	if l, err = openLogStore(dir, discard); err != nil {
		t.Fatal(err)
	}
	if v, err := l.GetUint64([]byte("CurrentTerm")); err != nil || v != 7 {
		t.Fatalf("term %d, %v", v, err)
	}
	if v, err := l.Get([]byte("LastVoteCand")); err != nil || string(v) != "n2" {
		t.Fatalf("vote %q, %v", v, err)
	}
	l.Close()
	path := filepath.Join(dir, metaName)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b[metaSlotHeader] ^= 1
	b[metaSlotSize+metaSlotHeader] ^= 1
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := openLogStore(dir, discard); !errors.Is(err, errDamaged) || !strings.Contains(err.Error(), path) {
		t.Fatalf("open with both meta slots damaged: %v", err)
	}
}

// A crash in the middle of saving the term leaves the slot being written
// torn; the open takes the other slot, the last term Raft was told was
// saved. A slot damaged otherwise (its header gone) refuses the log.
func TestLogMetaTornWrite(t *testing.T) {
	dir := t.TempDir()
	l, err := openLogStore(dir, discard)
	if err != nil {
		t.Fatal(err)
	}
	for term := uint64(1); term <= 5; term++ {
		if err := l.SetUint64([]byte("CurrentTerm"), term); err != nil {
			t.Fatal(err)
		}
	}
	newest, seq := l.metaf.slot, l.metaf.seq
	l.Close()
	path := filepath.Join(dir, metaName)
	good, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	// The write of term 6: its header landed, its payload did not.
	torn := slices.Clone(good)
	next, _ := encodeMetaSlot(logMeta{keys: map[string][]byte{"CurrentTerm": binary.LittleEndian.AppendUint64(nil, 6)}}, seq+1)
	off := (1 - newest) * metaSlotSize
	copy(torn[off:], next[:metaSlotHeader+4])
	if err := os.WriteFile(path, torn, 0o600); err != nil {
		t.Fatal(err)
	}
	if l, err = openLogStore(dir, discard); err != nil {
		t.Fatalf("open after a torn meta write: %v", err)
	}
	if v, err := l.GetUint64([]byte("CurrentTerm")); err != nil || v != 5 {
		t.Fatalf("term %d, %v after a torn write of term 6, want 5", v, err)
	}
	if err := l.SetUint64([]byte("CurrentTerm"), 6); err != nil {
		t.Fatal(err)
	}
	l.Close()
	if l, err = openLogStore(dir, discard); err != nil {
		t.Fatal(err)
	}
	if v, _ := l.GetUint64([]byte("CurrentTerm")); v != 6 {
		t.Fatalf("term %d after writing over the torn slot, want 6", v)
	}
	l.Close()

	bad := slices.Clone(good)
	bad[off] ^= 0xff // the older slot's magic
	bad[off+metaSlotHeader] ^= 1
	if err := os.WriteFile(path, bad, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := openLogStore(dir, discard); !errors.Is(err, errDamaged) {
		t.Fatalf("open with a slot damaged beyond its header: %v", err)
	}
}

// A meta file of the single-copy format (before slots) is read and
// rewritten in slots.
func TestLogMetaOlderFormat(t *testing.T) {
	dir := t.TempDir()
	old := logMeta{head: 3, keys: map[string][]byte{"CurrentTerm": binary.LittleEndian.AppendUint64(nil, 9), "LastVoteCand": []byte("n3")}}
	if err := os.WriteFile(filepath.Join(dir, metaName), old.encode(), 0o600); err != nil {
		t.Fatal(err)
	}
	l, err := openLogStore(dir, discard)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if v, _ := l.GetUint64([]byte("CurrentTerm")); v != 9 {
		t.Fatalf("term %d from the older format, want 9", v)
	}
	if v, _ := l.Get([]byte("LastVoteCand")); string(v) != "n3" {
		t.Fatalf("vote %q from the older format, want n3", v)
	}
	if info, err := os.Stat(filepath.Join(dir, metaName)); err != nil || info.Size() != 2*metaSlotSize {
		t.Fatalf("meta file after the open: %v, %v; want two slots", info, err)
	}
}

// On a full disk Raft's term and vote are still saved: the meta file's
// slots were allocated when it was made (hashicorp/raft panics when it
// cannot save its term). Needs root for a small tmpfs.
func TestLogMetaFullDisk(t *testing.T) {
	dir, _ := smallTmpfs(t)
	l, err := openLogStore(dir, discard)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { l.Close() }()
	if _, werr := fillLog(t, rand.New(rand.NewPCG(9, 9)), l); !errors.Is(werr, syscall.ENOSPC) {
		t.Fatalf("filling the disk: %v", werr)
	}
	rest, err := os.Create(filepath.Join(dir, "rest"))
	if err != nil {
		t.Fatal(err)
	}
	for err == nil {
		_, err = rest.Write(make([]byte, 64<<10))
	}
	if !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("taking the last blocks of the disk: %v, want ENOSPC", err)
	}
	rest.Close()
	for term := uint64(40); term < 44; term++ {
		if err := l.SetUint64([]byte("CurrentTerm"), term); err != nil {
			t.Fatalf("save term %d on a full disk: %v", term, err)
		}
	}
	if err := l.Set([]byte("LastVoteCand"), []byte("n2")); err != nil {
		t.Fatalf("save a vote on a full disk: %v", err)
	}
	l.Close()
	if l, err = openLogStore(dir, discard); err != nil {
		t.Fatal(err)
	}
	if v, _ := l.GetUint64([]byte("CurrentTerm")); v != 43 {
		t.Fatalf("term %d after reopening, want 43", v)
	}
}

// A full disk fails the write with the reason and leaves nothing of it:
// the same batch fails again, and an open on the still-full disk finds
// every acknowledged entry and no more. Needs root for a small tmpfs.
func TestLogFullDisk(t *testing.T) {
	dir, filler := smallTmpfs(t)
	r := rand.New(rand.NewPCG(5, 6))
	l, err := openLogStore(dir, discard)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { l.Close() }()
	acked, werr := fillLog(t, r, l)
	if !errors.Is(werr, syscall.ENOSPC) {
		t.Fatalf("write on a full disk: %v, want the reason (no space left on device)", werr)
	}
	next := acked[len(acked)-1].Index + 1
	failed := testEntries(rand.New(rand.NewPCG(1, 1)), next, 8)
	for i := range 2 {
		if err := l.StoreLogs(failed); !errors.Is(err, syscall.ENOSPC) {
			t.Fatalf("write %d of a big batch on a full disk: %v", i, err)
		}
	}
	if last, _ := l.LastIndex(); last != next-1 {
		t.Fatalf("last index %d after failed writes, want %d", last, next-1)
	}
	l.Close()
	if l, err = openLogStore(dir, discard); err != nil {
		t.Fatalf("reopen on a full disk: %v", err)
	}
	if got := checkPrefix(t, l, acked); got != len(acked) {
		t.Fatalf("%d of %d acknowledged entries after reopening", got, len(acked))
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	more := testEntries(r, next, 50)
	writeBatches(t, r, l, more)
	checkPrefix(t, l, append(acked, more...))
}

// A full disk fails the write with the reason; once space is freed the
// same process appends again (no restart), every acknowledged entry kept.
func TestLogFullDiskRecoversInProcess(t *testing.T) {
	dir, filler := smallTmpfs(t)
	r := rand.New(rand.NewPCG(7, 8))
	l, err := openLogStore(dir, discard)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { l.Close() }()
	acked, werr := fillLog(t, r, l)
	if !errors.Is(werr, syscall.ENOSPC) {
		t.Fatalf("write on a full disk: %v, want the reason (no space left on device)", werr)
	}
	next := acked[len(acked)-1].Index + 1
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	more := testEntries(r, next, 40)
	for i, b := range [][]*raft.Log{more[:1], more[1:8], more[8:]} {
		if err := l.StoreLogs(b); err != nil {
			t.Fatalf("append %d after space was freed, same process: %v", i, err)
		}
	}
	all := append(slices.Clone(acked), more...)
	if n := checkPrefix(t, l, all); n != len(all) {
		t.Fatalf("%d of %d entries after the disk was full", n, len(all))
	}
	l.Close()
	if l, err = openLogStore(dir, discard); err != nil {
		t.Fatal(err)
	}
	if n := checkPrefix(t, l, all); n != len(all) {
		t.Fatalf("%d of %d entries after reopening", n, len(all))
	}
}

// smallTmpfs mounts a 10 MB tmpfs for the test and fills 3 MB of it with a
// file that the test can delete to free space. Needs root.
func smallTmpfs(t *testing.T) (dir, filler string) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("RUNOS_LAB_REQUIRED") == "1" {
			t.Fatal("root required (RUNOS_LAB_REQUIRED=1) to mount a small tmpfs")
		}
		t.Skip("needs root to mount a small tmpfs")
	}
	dir = t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=10m", "tmpfs", dir).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", dir).Run() })
	filler = filepath.Join(dir, "filler")
	if err := os.WriteFile(filler, make([]byte, 3<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	return dir, filler
}

// fillLog appends batches of 8 entries until one fails, and returns the
// acknowledged entries and the error.
func fillLog(t *testing.T, r *rand.Rand, l *logStore) ([]*raft.Log, error) {
	t.Helper()
	var acked []*raft.Log
	for next := uint64(1); next < 100000; {
		batch := testEntries(r, next, 8)
		if err := l.StoreLogs(batch); err != nil {
			t.Logf("full after %d entries: %v", len(acked), err)
			return acked, err
		}
		acked = append(acked, batch...)
		next += uint64(len(batch))
	}
	t.Fatal("10 MB filesystem never filled")
	return nil, nil
}

// FuzzLogRecordDecode: arbitrary bytes as a record get an error wrapping
// errDamaged or an entry that encodes back to the same bytes; never a panic.
func FuzzLogRecordDecode(f *testing.F) {
	salt := saltSum(7)
	for _, e := range []*raft.Log{
		{Index: 3, Term: 2, Type: raft.LogCommand, Data: []byte("hello"), Extensions: []byte("x")},
		{Index: 9, Term: 1, Type: raft.LogConfiguration, AppendedAt: time.Unix(1700000000, 5)},
	} {
		f.Add(e.Index, appendRecord(nil, salt, e, 0))
	}
	f.Add(uint64(1), []byte{})
	f.Fuzz(func(t *testing.T, index uint64, b []byte) {
		var l raft.Log
		if err := decodeRecord(salt, index, b, &l); err != nil {
			if !errors.Is(err, errDamaged) {
				t.Fatalf("error without errDamaged: %v", err)
			}
			// The payload decoder alone, past the checksums.
			decodeEntry(b, &l)
			return
		}
		h, _ := parseHeader(salt, b)
		if again := appendRecord(nil, salt, &l, uint32(h.batchOff)); !bytes.Equal(again, b) {
			t.Fatalf("entry %d decoded from %x encodes to %x", index, b, again)
		}
	})
}

// FuzzLogEntryDecode: arbitrary bytes as an entry's payload (past the
// checksums, as damage the checksums missed would be) get an error or an
// entry, never a panic.
func FuzzLogEntryDecode(f *testing.F) {
	f.Add(appendEntry(nil, &raft.Log{Term: 2, Type: raft.LogCommand, Data: []byte("hello"), Extensions: []byte("x")}))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		var l raft.Log
		if err := decodeEntry(b, &l); err != nil {
			return
		}
		if again := appendEntry(nil, &l); len(again) != len(b) {
			t.Fatalf("%x decodes to an entry of %d bytes", b, len(again))
		}
	})
}

// FuzzLogMetaDecode: arbitrary bytes as the meta file get an error or the
// keys, never a panic.
func FuzzLogMetaDecode(f *testing.F) {
	f.Add(logMeta{head: 5, keys: map[string][]byte{"CurrentTerm": {1, 0, 0, 0, 0, 0, 0, 0}, "LastVoteCand": []byte("n1")}}.encode())
	f.Add([]byte("rlm1"))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := decodeMeta(b)
		if err != nil {
			return
		}
		if again := m.encode(); !bytes.Equal(again, b) {
			t.Fatalf("%x decodes to meta that encodes to %x", b, again)
		}
	})
}

// FuzzLogMetaSlots: arbitrary bytes in the two slots get an error or a
// meta, never a panic, and an intact slot beside a never-written one is
// always the one read.
func FuzzLogMetaSlots(f *testing.F) {
	one, _ := encodeMetaSlot(logMeta{head: 5, keys: map[string][]byte{"CurrentTerm": {1, 0, 0, 0, 0, 0, 0, 0}}}, 7)
	f.Add(one, []byte{})
	f.Add(one, one)
	f.Add([]byte("rlm2"), one)
	f.Fuzz(func(t *testing.T, a, b []byte) {
		file := make([]byte, 2*metaSlotSize)
		copy(file[:metaSlotSize], a)
		copy(file[metaSlotSize:], b)
		m, _, _, err := pickMetaSlot(file, discard)
		if err != nil {
			return
		}
		if len(b) == 0 {
			if want, _, _, err := decodeMetaSlot(file[:metaSlotSize]); err != nil || !bytes.Equal(want.encode(), m.encode()) {
				t.Fatalf("slot 0 %x beside an empty slot: read %v, decodes alone to %v, %v", a, m, want, err)
			}
		}
	})
}
