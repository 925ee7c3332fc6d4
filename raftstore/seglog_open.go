package raftstore

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/hashicorp/raft"
)

// openLogStore opens (creating if needed) the Raft log in dir. A crash can
// only have damaged the batch being appended, never acknowledged: that is
// at the end of the newest segment, and everything from its first damaged
// record on is cut. Damage anywhere else (an older segment, or a record
// that a record of a later batch follows) is not what a crash leaves: the
// log is refused with the entry named, and nothing is cut.
func openLogStore(dir string, log *slog.Logger) (*logStore, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	metaf, meta, err := openMeta(dir, log)
	if err != nil {
		return nil, err
	}
	l := &logStore{dir: dir, log: log, meta: meta, metaf: metaf}
	ents, err := os.ReadDir(dir)
	if err != nil {
		metaf.f.Close()
		return nil, err
	}
	var segs []*segment
	sizes := map[*segment]int64{}
	for _, e := range ents {
		if !strings.HasSuffix(e.Name(), segExt) {
			continue
		}
		base, salt, err := parseSegName(e.Name())
		if err != nil {
			metaf.f.Close()
			return nil, err
		}
		info, err := e.Info()
		if err != nil {
			metaf.f.Close()
			return nil, err
		}
		s := &segment{base: base, salt: salt, saltSum: saltSum(salt), path: filepath.Join(dir, e.Name())}
		segs = append(segs, s)
		sizes[s] = info.Size()
	}
	slices.SortFunc(segs, func(a, b *segment) int { return cmp.Compare(a.base, b.base) })
	// The newest segment with anything in it is where an append can have
	// been cut short; an empty one after it was created for an append that
	// never got written.
	tailAt := len(segs) - 1
	for tailAt > 0 && sizes[segs[tailAt]] == 0 {
		tailAt--
	}
	fail := func(err error) (*logStore, error) {
		for _, s := range l.segs {
			s.f.Close()
		}
		metaf.f.Close()
		return nil, err
	}
	removed := false
	remove := func(s *segment) error {
		removed = true
		if s.f != nil {
			s.f.Close()
		}
		return os.Remove(s.path)
	}
	for i, s := range segs {
		// Wholly before the first index: compacted, or emptied, by a
		// DeleteRange that a crash cut short.
		if i+1 < len(segs) && segs[i+1].base <= meta.head {
			if err := remove(s); err != nil {
				return fail(err)
			}
			continue
		}
		if err := l.loadSegment(s, i >= tailAt); err != nil {
			s.f.Close()
			return fail(err)
		}
		if len(s.offs) == 0 || s.lastIndex() < meta.head {
			// Nothing in it (a crash before its first append
			// finished), or only entries before the first index.
			if err := remove(s); err != nil {
				return fail(err)
			}
			continue
		}
		if n := len(l.segs); n > 0 && l.segs[n-1].lastIndex()+1 != s.base {
			s.f.Close()
			return fail(fmt.Errorf("raft log: %s does not follow entry %d in %s", filepath.Base(s.path),
				l.segs[n-1].lastIndex(), filepath.Base(l.segs[n-1].path)))
		}
		l.segs = append(l.segs, s)
	}
	if removed {
		if err := syncDir(dir); err != nil {
			return fail(err)
		}
	}
	if n := len(l.segs); n > 0 {
		l.first = max(l.segs[0].base, meta.head)
		l.last = l.segs[n-1].lastIndex()
	}
	return l, nil
}

// loadSegment opens s's file and indexes its records, cutting a torn tail
// when s is the newest segment.
func (l *logStore) loadSegment(s *segment, tail bool) error {
	f, err := os.OpenFile(s.path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	s.f = f
	info, err := f.Stat()
	if err != nil {
		return err
	}
	name := filepath.Base(s.path)
	data, release, err := readSegmentFile(f, info.Size())
	if err != nil {
		return fmt.Errorf("raft log: read %s: %w", name, err)
	}
	off, why := s.scan(data)
	s.size = int64(off)
	idx := s.base + uint64(len(s.offs))
	garbage := why != nil && slices.ContainsFunc(data[off:], func(b byte) bool { return b != 0 })
	var later uint64
	var isLater bool
	if garbage && tail {
		later, isLater = laterBatch(s.saltSum, data[off:], idx)
	}
	release() // data is not read after this
	switch {
	case !garbage:
		return nil // the zeros a new segment is filled with
	case !tail:
		return fmt.Errorf("raft log: entry %d in %s (offset %d) is %w: %v; it is not in the newest segment, so nothing was cut",
			idx, name, off, errDamaged, why)
	case isLater:
		return fmt.Errorf("raft log: entry %d in %s (offset %d) is %w: %v; entry %d of a later append follows it, so this is not a write cut short by a crash and nothing was cut",
			idx, name, off, errDamaged, why, later)
	}
	l.log.Warn("raft log: cutting the end of an append cut short by a crash", "segment", name,
		"from_entry", idx, "offset", off, "bytes", info.Size()-int64(off), "reason", why.Error())
	if err := f.Truncate(int64(off)); err != nil {
		return fmt.Errorf("raft log: cut %s at %d: %w", name, off, err)
	}
	return fdatasync(f)
}

// scan indexes the intact records at the start of data (the segment's
// file) and returns where they end, and why the bytes after that are not
// a record, if there are any.
func (s *segment) scan(data []byte) (int, error) {
	off := 0
	for off < len(data) {
		idx := s.base + uint64(len(s.offs))
		h, ok := parseHeader(s.saltSum, data[off:])
		if !ok {
			return off, errors.New("no record header")
		}
		if h.index != idx {
			return off, fmt.Errorf("the record holds entry %d", h.index)
		}
		end := off + recHeaderLen + int(h.payloadLen)
		if end > len(data) {
			return off, fmt.Errorf("a record of %d bytes where %d are left", h.payloadLen, len(data)-off-recHeaderLen)
		}
		var e raft.Log
		if err := decodeRecord(s.saltSum, idx, data[off:end], &e); err != nil {
			return off, err
		}
		s.offs = append(s.offs, int64(off))
		off = end
	}
	return off, nil
}

// laterBatch looks through rest (what follows the last intact record in a
// segment, whose next entry would be idx) for a record header of a batch
// after the one holding idx: one that was appended, and so acknowledged,
// after it.
func laterBatch(saltSum uint32, rest []byte, idx uint64) (uint64, bool) {
	// A header holds an index, never 0: none starts after the last
	// non-zero byte (the zeros of a new segment need no look).
	last := bytes.LastIndexFunc(rest, func(r rune) bool { return r != 0 })
	for p := 1; p <= last && p+recHeaderLen <= len(rest); p++ {
		if h, ok := parseHeader(saltSum, rest[p:]); ok && h.batchFirst() > idx {
			return h.index, true
		}
	}
	return 0, false
}

// logMeta is what the meta file holds: the first index (entries before it
// are deleted even if a segment still holds them) and Raft's stable keys.
type logMeta struct {
	head uint64
	keys map[string][]byte
}

func (m logMeta) clone() logMeta {
	m.keys = maps.Clone(m.keys)
	if m.keys == nil {
		m.keys = map[string][]byte{}
	}
	return m
}

var metaMagic = []byte("rlm1")

// encode: magic, CRC32-C of the rest, head, the number of keys, then each
// key and value after its length.
func (m logMeta) encode() []byte {
	b := slices.Clone(metaMagic)
	b = append(b, 0, 0, 0, 0)
	b = binary.LittleEndian.AppendUint64(b, m.head)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(m.keys)))
	for _, k := range slices.Sorted(maps.Keys(m.keys)) {
		b = binary.LittleEndian.AppendUint32(b, uint32(len(k)))
		b = append(b, k...)
		b = binary.LittleEndian.AppendUint32(b, uint32(len(m.keys[k])))
		b = append(b, m.keys[k]...)
	}
	binary.LittleEndian.PutUint32(b[4:], crc32.Checksum(b[8:], crcTable))
	return b
}

func decodeMeta(b []byte) (logMeta, error) {
	m := logMeta{keys: map[string][]byte{}}
	if len(b) < 20 || !bytes.Equal(b[:4], metaMagic) || binary.LittleEndian.Uint32(b[4:]) != crc32.Checksum(b[8:], crcTable) {
		return m, fmt.Errorf("%w: checksum mismatch", errDamaged)
	}
	m.head = binary.LittleEndian.Uint64(b[8:])
	n := binary.LittleEndian.Uint32(b[16:])
	rest := b[20:]
	field := func() ([]byte, bool) {
		if len(rest) < 4 {
			return nil, false
		}
		k := uint64(binary.LittleEndian.Uint32(rest))
		if k > uint64(len(rest)-4) {
			return nil, false
		}
		f := rest[4 : 4+k]
		rest = rest[4+k:]
		return f, true
	}
	for range n {
		k, ok1 := field()
		v, ok2 := field()
		if !ok1 || !ok2 {
			return m, fmt.Errorf("%w: truncated", errDamaged)
		}
		m.keys[string(k)] = slices.Clone(v)
	}
	if len(rest) != 0 {
		return m, fmt.Errorf("%w: %d bytes after the keys", errDamaged, len(rest))
	}
	return m, nil
}

// writeMeta saves m in the meta file, then makes it l.meta. The caller
// holds writeMu.
func (l *logStore) writeMeta(m logMeta) error {
	if err := l.metaf.write(m); err != nil {
		return fmt.Errorf("raft log: write %s: %w", metaName, err)
	}
	l.mu.Lock()
	l.meta = m
	l.mu.Unlock()
	return nil
}

// Set stores a stable key, on disk when it returns nil.
func (l *logStore) Set(key, val []byte) error {
	l.writeMu.Lock()
	defer l.writeMu.Unlock()
	if l.isClosed() {
		return errors.New("raft log: closed")
	}
	m := l.meta.clone()
	m.keys[string(key)] = slices.Clone(val)
	return l.writeMeta(m)
}

// Get returns a stable key's value, nil if it was never set.
func (l *logStore) Get(key []byte) ([]byte, error) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.closed {
		return nil, errors.New("raft log: closed")
	}
	return slices.Clone(l.meta.keys[string(key)]), nil
}

func (l *logStore) SetUint64(key []byte, val uint64) error {
	return l.Set(key, binary.LittleEndian.AppendUint64(nil, val))
}

// GetUint64 returns a stable key set by SetUint64, 0 if it was never set.
func (l *logStore) GetUint64(key []byte) (uint64, error) {
	v, err := l.Get(key)
	if err != nil || v == nil {
		return 0, err
	}
	if len(v) != 8 {
		return 0, fmt.Errorf("raft log: stable key %s holds %d bytes, not a number", key, len(v))
	}
	return binary.LittleEndian.Uint64(v), nil
}

func (l *logStore) isClosed() bool {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.closed
}
