package raftstore

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// The Raft log is a directory of append-only segment files, with the Raft
// stable keys (term, vote) and the log's first index in a small meta file
// beside them (seglog_meta.go). Each StoreLogs is one write and one fdatasync at the end of
// the newest segment; a segment that has reached segMaxBytes is left as it
// is and the next append starts a new one. A new segment is filled with
// zeros to segMaxBytes (and synced) before its first append, so appends
// overwrite allocated blocks and an fdatasync has no file size or extent
// to commit, only the data; a full disk shows there, before any entry is
// written. After the last record a segment holds only zeros. Compaction drops whole segments
// (the first index, persisted in meta, hides the entries before it in the
// oldest one); a suffix delete truncates the segment at the first removed
// entry and removes the segments after it.
//
// A segment is named by the index of its first entry and a random salt:
// "<base>-<salt>.seg". Each entry is one record:
//
//	[0:4]   CRC32-C of the salt and bytes 4:24 (the header's checksum)
//	[4:8]   payload length
//	[8:16]  entry index
//	[16:20] entry index minus the index of the first entry of its batch
//	[20:24] CRC32-C of the payload
//	[24:]   payload (encodeEntry)
//
// The salt makes a header found by scanning (see scanSegment) one written
// to this segment, never bytes from a Raft command that happen to look like
// one. The batch offset tells, at open, the batch that was in flight at a
// crash (anything after the last intact record that belongs to it) from
// damage to acknowledged data (a record of a later batch beyond the damage).
const (
	segExt        = ".seg"
	segMaxBytes   = 4 << 20
	recHeaderLen  = 24
	entryFixedLen = 8 + 1 + 1 + 8 + 4 + 4
	metaName      = "meta"
	metaTmpName   = "meta.tmp"
	// maxRecordLen bounds a record's payload: far above any Raft entry the
	// agent writes, well below what would make a damaged length costly.
	maxRecordLen = 256 << 20
)

var (
	crcTable   = crc32.MakeTable(crc32.Castagnoli)
	errDamaged = errors.New("damaged")
)

// segment is one segment file. base and salt never change; offs and size
// change only for the tail, by the writer, under logStore.mu.
type segment struct {
	base, salt uint64
	saltSum    uint32 // saltSum(salt)
	path       string
	f          *os.File
	offs       []int64 // offs[i]: offset of the record of entry base+i
	size       int64   // bytes of intact records; zeros follow, or, after a failed append, what logStore.dirty says
}

// lastIndex is the index of the segment's last entry, base-1 if none.
func (s *segment) lastIndex() uint64 { return s.base + uint64(len(s.offs)) - 1 }

// span is where entry idx's record lies in the file.
func (s *segment) span(idx uint64) (off, end int64) {
	i := idx - s.base
	off, end = s.offs[i], s.size
	if int(i)+1 < len(s.offs) {
		end = s.offs[i+1]
	}
	return off, end
}

func segName(base, salt uint64) string { return fmt.Sprintf("%020d-%016x%s", base, salt, segExt) }

func parseSegName(name string) (base, salt uint64, err error) {
	b, s, ok := strings.Cut(strings.TrimSuffix(name, segExt), "-")
	if ok {
		if base, err = strconv.ParseUint(b, 10, 64); err == nil {
			salt, err = strconv.ParseUint(s, 16, 64)
		}
	}
	if !ok || err != nil || len(b) != 20 || len(s) != 16 {
		return 0, 0, fmt.Errorf("raft log: %s is not a segment name", name)
	}
	return base, salt, nil
}

// logStore is Raft's LogStore and StableStore.
type logStore struct {
	dir string
	log *slog.Logger

	// writeMu serializes the writers (StoreLogs, DeleteRange, Set,
	// SetUint64, Close); a writer holds it across its disk I/O, and mu only
	// to publish the result, so readers are not held up by an fsync.
	writeMu sync.Mutex
	// dirty: the tail file holds bytes after tail.size (a failed append
	// whose truncation failed too). pending: segment files to remove, and
	// unsynced: the directory to sync, before the next write (a failed
	// removal). All guarded by writeMu.
	dirty    bool
	pending  []string
	unsynced bool
	// meta is replaced by writers (holding writeMu) under mu; readers of
	// the stable keys hold mu. metaf is its file, written with writeMu held.
	meta  logMeta
	metaf *metaFile

	mu     sync.RWMutex
	segs   []*segment // guarded by mu (changed only with writeMu held too); the last is the tail
	first  uint64     // guarded by mu; index of the first entry, when last > 0
	last   uint64     // guarded by mu; 0 when the log is empty
	closed bool       // guarded by mu
}

var (
	_ raft.LogStore          = (*logStore)(nil)
	_ raft.StableStore       = (*logStore)(nil)
	_ raft.MonotonicLogStore = (*logStore)(nil)
)

// IsMonotonic tells Raft that the log takes appends only at its end (or
// anywhere when empty), so after installing a snapshot Raft empties it.
func (l *logStore) IsMonotonic() bool { return true }

func (l *logStore) FirstIndex() (uint64, error) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.last == 0 {
		return 0, nil
	}
	return l.first, nil
}

func (l *logStore) LastIndex() (uint64, error) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.last, nil
}

// findLocked is the segment holding idx, which must be in [first, last].
func (l *logStore) findLocked(idx uint64) *segment {
	i := sort.Search(len(l.segs), func(i int) bool { return l.segs[i].base > idx })
	return l.segs[i-1]
}

// GetLog reads the entry at index, checking its checksums: damage since
// open is an error wrapping errDamaged, never a wrong entry.
func (l *logStore) GetLog(index uint64, out *raft.Log) error {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.closed {
		return errors.New("raft log: closed")
	}
	if l.last == 0 || index < l.first || index > l.last {
		return raft.ErrLogNotFound
	}
	s := l.findLocked(index)
	off, end := s.span(index)
	buf := make([]byte, end-off)
	if _, err := s.f.ReadAt(buf, off); err != nil {
		return fmt.Errorf("raft log: read entry %d: %w", index, err)
	}
	if err := decodeRecord(s.saltSum, index, buf, out); err != nil {
		return fmt.Errorf("raft log: entry %d in %s: %w", index, filepath.Base(s.path), err)
	}
	return nil
}

// StoreLog appends one entry (see StoreLogs).
func (l *logStore) StoreLog(log *raft.Log) error { return l.StoreLogs([]*raft.Log{log}) }

// StoreLogs appends logs, synced to disk when it returns nil. When it fails
// (a full disk), what it wrote is cut off again, so the next call (Raft
// retries the same entries) starts clean: nothing to restart or repair once
// there is space.
func (l *logStore) StoreLogs(logs []*raft.Log) error {
	if len(logs) == 0 {
		return nil
	}
	l.writeMu.Lock()
	defer l.writeMu.Unlock()
	from, to := logs[0].Index, logs[len(logs)-1].Index
	for i, e := range logs {
		if e.Index != from+uint64(i) {
			return fmt.Errorf("raft log: append of entries %d..%d that do not follow each other", from, to)
		}
	}
	_, last, tail, err := l.writerView()
	if err != nil {
		return err
	}
	if last != 0 && from != last+1 {
		return fmt.Errorf("raft log: append at %d after %d: not the next index", from, last)
	}
	if err := l.finishPending(tail); err != nil {
		return err
	}
	if last == 0 && from < l.meta.head {
		m := l.meta.clone()
		m.head = from
		if err := l.writeMeta(m); err != nil {
			return err
		}
	}
	if tail != nil && (tail.size >= segMaxBytes || last == 0 && tail.base != from) {
		tail = nil
	}
	if tail == nil {
		var err error
		if tail, err = l.newSegment(from); err != nil {
			return err
		}
	}
	buf := make([]byte, 0, recordsLen(logs))
	for i, e := range logs {
		buf = appendRecord(buf, tail.saltSum, e, uint32(i))
	}
	_, err = tail.f.WriteAt(buf, tail.size)
	if err == nil {
		err = fdatasync(tail.f)
	}
	if err != nil {
		if terr := tail.f.Truncate(tail.size); terr != nil {
			l.dirty = true
		}
		return fmt.Errorf("raft log: append %d..%d: %w", from, to, err)
	}
	l.mu.Lock()
	off := tail.size
	for _, e := range logs {
		tail.offs = append(tail.offs, off)
		off += recHeaderLen + int64(entryLen(e))
	}
	tail.size = off
	if l.last == 0 {
		l.first = from
	}
	l.last = to
	l.mu.Unlock()
	return nil
}

// finishPending redoes what a failed write or delete left undone, so the
// next write starts from the state the log claims.
func (l *logStore) finishPending(tail *segment) error {
	if l.dirty && tail != nil {
		if err := tail.f.Truncate(tail.size); err != nil {
			return fmt.Errorf("raft log: cut a failed append: %w", err)
		}
		l.dirty = false
	}
	for len(l.pending) > 0 {
		if err := os.Remove(l.pending[0]); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("raft log: remove a deleted segment: %w", err)
		}
		l.pending = l.pending[1:]
		l.unsynced = true
	}
	if l.unsynced {
		if err := syncDir(l.dir); err != nil {
			return fmt.Errorf("raft log: sync %s: %w", l.dir, err)
		}
		l.unsynced = false
	}
	return nil
}

// newSegment creates the segment file for entries from base on and makes it
// the tail. An empty tail (the first append into it failed) is replaced.
func (l *logStore) newSegment(base uint64) (*segment, error) {
	s := &segment{base: base, salt: rand.Uint64()}
	s.saltSum = saltSum(s.salt)
	s.path = filepath.Join(l.dir, segName(s.base, s.salt))
	f, err := os.OpenFile(s.path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("raft log: new segment: %w", err)
	}
	// The zeros, and the entry in the directory, must be on disk before
	// the first append into the file is acknowledged.
	err = zeroFill(f, segMaxBytes)
	if err == nil {
		err = fdatasync(f)
	}
	if err == nil {
		err = syncDir(l.dir)
	}
	if err != nil {
		f.Close()
		os.Remove(s.path)
		return nil, fmt.Errorf("raft log: new segment: %w", err)
	}
	s.f = f
	l.mu.Lock()
	var drop *segment
	if n := len(l.segs); n > 0 && len(l.segs[n-1].offs) == 0 {
		drop = l.segs[n-1]
		l.segs = l.segs[:n-1]
	}
	l.segs = append(l.segs, s)
	l.mu.Unlock()
	if drop != nil {
		drop.f.Close()
		l.pending = append(l.pending, drop.path)
	}
	return s, nil
}

var zeros [1 << 20]byte

// zeroFill writes n zero bytes at the start of f.
func zeroFill(f *os.File, n int64) error {
	for off := int64(0); off < n; {
		k := min(n-off, int64(len(zeros)))
		if _, err := f.WriteAt(zeros[:k], off); err != nil {
			return err
		}
		off += k
	}
	return nil
}

// DeleteRange removes the entries [min, max], which Raft asks only for a
// prefix (compaction), a suffix (a conflict with the leader's log) or all
// of them (before it installs a snapshot).
func (l *logStore) DeleteRange(min, max uint64) error {
	l.writeMu.Lock()
	defer l.writeMu.Unlock()
	first, last, tail, err := l.writerView()
	if err != nil {
		return err
	}
	if last == 0 || min > max || max < first || min > last {
		return nil
	}
	if err := l.finishPending(tail); err != nil {
		return err
	}
	if min <= first {
		// The first index goes to disk before any file goes, so an open
		// after a crash in between hides what is left below it.
		m := l.meta.clone()
		m.head = max + 1
		if err := l.writeMeta(m); err != nil {
			return err
		}
		var drop []*segment
		l.mu.Lock()
		if max >= last {
			drop, l.segs, l.last = l.segs, nil, 0
		} else {
			for len(l.segs) > 1 && l.segs[1].base <= max+1 {
				drop = append(drop, l.segs[0])
				l.segs = l.segs[1:]
			}
		}
		l.first = max + 1
		l.mu.Unlock()
		if max >= last {
			l.dirty = false
		}
		return l.removeSegments(drop)
	}
	if max < last {
		return fmt.Errorf("raft log: delete %d..%d of %d..%d: only a prefix or a suffix can go", min, max, first, last)
	}
	// Suffix: later segments go first, newest first, then the one holding
	// min is cut; a crash in between leaves a prefix of the log.
	l.mu.Lock()
	i := sort.Search(len(l.segs), func(i int) bool { return l.segs[i].base >= min })
	drop := slices.Clone(l.segs[i:])
	slices.Reverse(drop)
	l.segs = l.segs[:i]
	s := l.segs[len(l.segs)-1]
	cut := s.size
	if k := min - s.base; k < uint64(len(s.offs)) {
		cut = s.offs[k]
		s.offs = s.offs[:k]
	}
	s.size = cut
	l.last = min - 1
	l.mu.Unlock()
	if err := l.removeSegments(drop); err != nil {
		l.dirty = true
		return err
	}
	err = s.f.Truncate(cut)
	if err == nil {
		err = fdatasync(s.f)
	}
	if err != nil {
		l.dirty = true
		return fmt.Errorf("raft log: delete %d..%d: %w", min, max, err)
	}
	return nil
}

// removeSegments closes and removes segments no longer in l.segs; what
// fails to go is retried before the next write.
func (l *logStore) removeSegments(drop []*segment) error {
	for _, s := range drop {
		s.f.Close()
		l.pending = append(l.pending, s.path)
	}
	if len(l.pending) == 0 {
		return nil
	}
	return l.finishPending(nil)
}

// Close closes the files. It is idempotent.
func (l *logStore) Close() error {
	l.writeMu.Lock()
	defer l.writeMu.Unlock()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil
	}
	l.closed = true
	err := l.metaf.f.Close()
	for _, s := range l.segs {
		if cerr := s.f.Close(); err == nil {
			err = cerr
		}
	}
	return err
}

// recordsLen is the bytes appendRecord writes for logs.
func recordsLen(logs []*raft.Log) int {
	n := 0
	for _, e := range logs {
		n += recHeaderLen + entryLen(e)
	}
	return n
}

func entryLen(e *raft.Log) int { return entryFixedLen + len(e.Data) + len(e.Extensions) }

// appendRecord appends e's record, batchOff entries into its batch.
func appendRecord(b []byte, saltSum uint32, e *raft.Log, batchOff uint32) []byte {
	start := len(b)
	b = append(b, make([]byte, recHeaderLen)...)
	b = appendEntry(b, e)
	h := b[start : start+recHeaderLen]
	binary.LittleEndian.PutUint32(h[4:], uint32(len(b)-start-recHeaderLen))
	binary.LittleEndian.PutUint64(h[8:], e.Index)
	binary.LittleEndian.PutUint32(h[16:], batchOff)
	binary.LittleEndian.PutUint32(h[20:], crc32.Checksum(b[start+recHeaderLen:], crcTable))
	binary.LittleEndian.PutUint32(h[0:], crc32.Update(saltSum, crcTable, h[4:]))
	return b
}

// saltSum is the checksum of a segment's salt, where its record headers'
// checksums start.
func saltSum(salt uint64) uint32 {
	var s [8]byte
	binary.LittleEndian.PutUint64(s[:], salt)
	return crc32.Checksum(s[:], crcTable)
}

// recHeader is a record header whose own checksum holds.
type recHeader struct {
	payloadLen      uint32
	index, batchOff uint64
	payloadSum      uint32
}

func (h recHeader) batchFirst() uint64 { return h.index - h.batchOff }

// parseHeader reads the header at the start of b, if it is one written to
// the segment whose salt has the checksum saltSum.
func parseHeader(saltSum uint32, b []byte) (recHeader, bool) {
	if len(b) < recHeaderLen || binary.LittleEndian.Uint32(b) != crc32.Update(saltSum, crcTable, b[4:recHeaderLen]) {
		return recHeader{}, false
	}
	h := recHeader{
		payloadLen: binary.LittleEndian.Uint32(b[4:]),
		index:      binary.LittleEndian.Uint64(b[8:]),
		batchOff:   uint64(binary.LittleEndian.Uint32(b[16:])),
		payloadSum: binary.LittleEndian.Uint32(b[20:]),
	}
	if h.payloadLen > maxRecordLen || h.batchOff > h.index {
		return recHeader{}, false
	}
	return h, true
}

// decodeRecord decodes the record in b (exactly one), which must hold entry
// index and be intact.
func decodeRecord(saltSum uint32, index uint64, b []byte, out *raft.Log) error {
	h, ok := parseHeader(saltSum, b)
	switch {
	case !ok:
		return fmt.Errorf("%w: header checksum mismatch", errDamaged)
	case h.index != index:
		return fmt.Errorf("%w: holds entry %d", errDamaged, h.index)
	case int(h.payloadLen) != len(b)-recHeaderLen:
		return fmt.Errorf("%w: length %d in a record of %d bytes", errDamaged, h.payloadLen, len(b)-recHeaderLen)
	case crc32.Checksum(b[recHeaderLen:], crcTable) != h.payloadSum:
		return fmt.Errorf("%w: checksum mismatch", errDamaged)
	}
	if err := decodeEntry(b[recHeaderLen:], out); err != nil {
		return fmt.Errorf("%w: %w", errDamaged, err)
	}
	out.Index = index
	return nil
}

// appendEntry encodes e without its index (the record header has it):
// term, type, whether AppendedAt is set, AppendedAt in Unix nanoseconds,
// then Data and Extensions, each after its length.
func appendEntry(b []byte, e *raft.Log) []byte {
	b = binary.LittleEndian.AppendUint64(b, e.Term)
	b = append(b, byte(e.Type))
	var at int64
	if e.AppendedAt.IsZero() {
		b = append(b, 0)
	} else {
		b = append(b, 1)
		at = e.AppendedAt.UnixNano()
	}
	b = binary.LittleEndian.AppendUint64(b, uint64(at))
	b = binary.LittleEndian.AppendUint32(b, uint32(len(e.Data)))
	b = append(b, e.Data...)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(e.Extensions)))
	return append(b, e.Extensions...)
}

// decodeEntry decodes what appendEntry wrote; anything else is an error.
func decodeEntry(b []byte, out *raft.Log) error {
	if len(b) < entryFixedLen {
		return fmt.Errorf("entry of %d bytes", len(b))
	}
	e := raft.Log{Term: binary.LittleEndian.Uint64(b), Type: raft.LogType(b[8])}
	switch b[9] {
	case 0:
	case 1:
		e.AppendedAt = time.Unix(0, int64(binary.LittleEndian.Uint64(b[10:])))
	default:
		return fmt.Errorf("entry flags %#x", b[9])
	}
	rest := b[18:]
	n := uint64(binary.LittleEndian.Uint32(rest))
	if n > uint64(len(rest)-8) {
		return fmt.Errorf("data of %d bytes in an entry of %d", n, len(b))
	}
	if n > 0 {
		e.Data = rest[4 : 4+n]
	}
	rest = rest[4+n:]
	if m := uint64(binary.LittleEndian.Uint32(rest)); m != uint64(len(rest)-4) {
		return fmt.Errorf("extensions of %d bytes where %d are left", m, len(rest)-4)
	}
	if len(rest) > 4 {
		e.Extensions = rest[4:]
	}
	*out = e
	return nil
}

// writerView is what a writer (holding writeMu) starts from: the log's
// first and last index and its newest segment (nil: none).
func (l *logStore) writerView() (first, last uint64, tail *segment, err error) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.closed {
		return 0, 0, nil, errors.New("raft log: closed")
	}
	if len(l.segs) > 0 {
		tail = l.segs[len(l.segs)-1]
	}
	return l.first, l.last, tail, nil
}
