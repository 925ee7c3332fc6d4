package raftstore

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-msgpack/v2/codec"
	"go.etcd.io/bbolt"

	"github.com/hashicorp/raft"
	wal "github.com/hashicorp/raft-wal"
	walfs "github.com/hashicorp/raft-wal/fs"
	"github.com/hashicorp/raft-wal/metadb"
	"github.com/hashicorp/raft-wal/migrate"
	"github.com/hashicorp/raft-wal/segment"
	"github.com/hashicorp/raft-wal/types"
)

// The Raft log and its stable keys (term, vote) live in hashicorp/raft-wal:
// append-only segment files with a checksum per batch and one fsync per
// StoreLogs, where raft-boltdb synced twice (its pages, then its meta page)
// and rewrote B-tree pages for every append. Data dirs written before keep
// their log in raft.db; the first open copies it into the WAL (see openLog).
const (
	walDir        = "wal"
	walTmpDir     = "wal.migrating"
	boltFile      = "raft.db"
	boltMigrated  = "raft.db.migrated"
	walSegmentMiB = 4
)

// logStore is Raft's LogStore and StableStore.
type logStore struct {
	*wal.WAL
	// meta is raft-wal's metadata and stable-key database. raft-wal's
	// Close leaves it open (and its file lock held), so we own it.
	meta  *metadb.BoltMetaDB
	filer *segmentFiler
}

// segmentFiler remembers why the last new segment could not be created.
// raft-wal creates the next segment in the background once the tail is
// full, and when that fails (a full disk) it only logs it: every later
// append fails with "segment is sealed", which says nothing of the cause.
type segmentFiler struct {
	types.SegmentFiler
	createErr atomic.Pointer[error]
	// sealedTail is the segment open found sealed while the metadata
	// called it the open tail (see finishRotation); set only during open.
	sealedTail *sealedTail
}

type sealedTail struct {
	id, indexStart, lastIndex uint64
	real                      bool // a seal the writer makes: the segment is full
}

// RecoverTail recovers the open tail segment and notes whether it turns out
// to be sealed already.
func (f *segmentFiler) RecoverTail(info types.SegmentInfo) (types.SegmentWriter, error) {
	w, err := f.SegmentFiler.RecoverTail(info)
	if err != nil {
		return nil, err
	}
	if sealed, indexStart, err := w.Sealed(); err == nil && sealed {
		last := w.LastIndex()
		n := uint64(0)
		if last >= info.BaseIndex {
			n = last - info.BaseIndex + 1
		}
		// The writer seals the segment when the next append would take
		// it past its size limit, so its index ends there or beyond.
		f.sealedTail = &sealedTail{id: info.ID, indexStart: indexStart, lastIndex: last,
			real: indexStart+8+4*n+8 >= uint64(info.SizeLimit)}
	}
	return w, nil
}

func (f *segmentFiler) Create(info types.SegmentInfo) (types.SegmentWriter, error) {
	w, err := f.SegmentFiler.Create(info)
	if err != nil {
		f.createErr.Store(&err)
	} else {
		f.createErr.Store(nil)
	}
	return w, err
}

// Every entry carries its own checksum, appended to its Extensions on the
// way in and checked and removed on the way out: raft-wal checks only the
// last batch's checksum, when it recovers the tail, and a torn sector that
// holds garbage rather than its old or new bytes can pass that (the fuzzer
// in logstore_test.go found such sectors). Raft never sees the trailer.
const sumTrailerLen = 8

var (
	sumMagic   = [4]byte{'r', 's', 'u', 'm'}
	sumTable   = crc32.MakeTable(crc32.Castagnoli)
	errDamaged = errors.New("damaged")
)

// entrySum is the checksum of l as raft-wal encodes it, with ext as its
// Extensions.
func entrySum(l *raft.Log, ext []byte) (uint32, error) {
	c := *l
	c.Extensions = ext
	var buf bytes.Buffer
	if err := (&wal.BinaryCodec{}).Encode(&c, &buf); err != nil {
		return 0, err
	}
	return crc32.Checksum(buf.Bytes(), sumTable), nil
}

// StoreLogs appends logs, synced to disk when it returns nil.
func (l *logStore) StoreLogs(logs []*raft.Log) error {
	summed := make([]*raft.Log, len(logs))
	for i, in := range logs {
		sum, err := entrySum(in, in.Extensions)
		if err != nil {
			return err
		}
		c := *in
		c.Extensions = make([]byte, 0, len(in.Extensions)+sumTrailerLen)
		c.Extensions = append(c.Extensions, in.Extensions...)
		c.Extensions = binary.LittleEndian.AppendUint32(c.Extensions, sum)
		c.Extensions = append(c.Extensions, sumMagic[:]...)
		summed[i] = &c
	}
	err := l.WAL.StoreLogs(summed)
	if err != nil {
		if cerr := l.filer.createErr.Load(); cerr != nil {
			return fmt.Errorf("raft log: %w: no new segment: %w", err, *cerr)
		}
		return fmt.Errorf("raft log: %w", err)
	}
	return nil
}

// GetLog reads the entry at index. raft-wal's decoder panics on some
// damaged bytes (found by FuzzLogRecordDecode): that, like a checksum
// that does not match, is an error wrapping errDamaged, not a crash of the
// agent.
func (l *logStore) GetLog(index uint64, log *raft.Log) error {
	if err := guardDecode(index, func() error { return l.WAL.GetLog(index, log) }); err != nil {
		return err
	}
	return unseal(index, log)
}

// unseal checks and removes the checksum trailer StoreLogs added.
func unseal(index uint64, log *raft.Log) error {
	ext := log.Extensions
	n := len(ext) - sumTrailerLen
	if n < 0 || [4]byte(ext[n+4:]) != sumMagic || log.Index != index {
		return fmt.Errorf("raft log: entry %d is %w: no checksum", index, errDamaged)
	}
	want := binary.LittleEndian.Uint32(ext[n:])
	ext = ext[:n:n]
	if n == 0 {
		ext = nil
	}
	got, err := entrySum(log, ext)
	if err != nil {
		return err
	}
	if got != want {
		return fmt.Errorf("raft log: entry %d is %w: checksum mismatch", index, errDamaged)
	}
	log.Extensions = ext
	return nil
}

func guardDecode(index uint64, f func() error) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("raft log: entry %d is %w: %v", index, errDamaged, p)
		}
	}()
	return f()
}

// StoreLog appends one log (see StoreLogs).
func (l *logStore) StoreLog(log *raft.Log) error { return l.StoreLogs([]*raft.Log{log}) }

var (
	_ raft.LogStore          = (*logStore)(nil)
	_ raft.StableStore       = (*logStore)(nil)
	_ raft.MonotonicLogStore = (*logStore)(nil)
)

// openWAL opens (creating if needed) the WAL in dir.
func openWAL(dir string, hlog hclog.Logger) (*logStore, error) {
	l, tail, err := openWALOnce(dir, hlog)
	if err != nil || tail == nil || !tail.real {
		return l, err
	}
	l.Close()
	if err := finishRotation(dir, tail); err != nil {
		return nil, fmt.Errorf("raft log: finish the segment rotation a crash cut short: %w", err)
	}
	hlog.Warn("raft log: finished a segment rotation cut short by a crash", "segment", tail.id, "last_index", tail.lastIndex)
	l, _, err = openWALOnce(dir, hlog)
	return l, err
}

// finishRotation records in the metadata that segment tail.id is sealed.
// raft-wal writes a full segment's index in the same fsync as its last
// append and commits the metadata that seals it and starts the next
// segment afterwards, in the background; after a crash in between, v0.4.0
// reopens the sealed segment as the open tail and refuses every append
// ("segment is sealed"). Sealing it and listing the next segment in the
// metadata is the step the crash skipped.
func finishRotation(dir string, tail *sealedTail) error {
	meta := &metadb.BoltMetaDB{}
	defer meta.Close()
	ps, err := meta.Load(dir)
	if err != nil {
		return err
	}
	if len(ps.Segments) == 0 {
		return errors.New("no segments")
	}
	last := &ps.Segments[len(ps.Segments)-1]
	if last.ID != tail.id || !last.SealTime.IsZero() {
		return fmt.Errorf("segment %d is not the open tail", tail.id)
	}
	last.SealTime = time.Now()
	last.MaxIndex = tail.lastIndex
	last.IndexStart = tail.indexStart
	// And the next segment, as the rotation would have: an open that finds
	// no open tail starts one at index 1, which would replace the first
	// segment. Its file is created at open.
	ps.Segments = append(ps.Segments, types.SegmentInfo{
		ID: ps.NextSegmentID, BaseIndex: tail.lastIndex + 1, MinIndex: tail.lastIndex + 1,
		SizeLimit: last.SizeLimit, Codec: wal.CodecBinaryV1, CreateTime: time.Now(),
	})
	ps.NextSegmentID++
	return meta.CommitState(ps)
}

func openWALOnce(dir string, hlog hclog.Logger) (*logStore, *sealedTail, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, nil, err
	}
	meta := &metadb.BoltMetaDB{}
	filer := &segmentFiler{SegmentFiler: segment.NewFiler(dir, walfs.New())}
	w, err := wal.Open(dir, wal.WithMetaStore(meta), wal.WithSegmentFiler(filer),
		wal.WithSegmentSize(walSegmentMiB<<20), wal.WithLogger(hlog.Named("wal")))
	if err != nil {
		meta.Close()
		return nil, nil, err
	}
	l := &logStore{WAL: w, meta: meta, filer: filer}
	tail := filer.sealedTail
	filer.sealedTail = nil
	if err := l.verify(hlog); err != nil {
		l.Close()
		return nil, nil, err
	}
	if tail != nil && !tail.real {
		hlog.Error("raft log: the open segment holds a seal that its size does not explain (damage after its last entry); appends will fail", "segment", tail.id)
	}
	return l, tail, nil
}

// maxBatch bounds the entries one StoreLogs writes: Raft's
// MaxAppendEntries (64, left at its default) on the leader and per
// AppendEntries on a follower.
const maxBatch = 64

// verify reads every entry once. A crash can only have damaged the batch
// that was being written, which was never acknowledged: damage within the
// last maxBatch entries is cut off there (raft-wal's tail truncation, which
// also starts a fresh segment). Damage further back is not a crash; the
// log is refused rather than silently shortened.
func (l *logStore) verify(hlog hclog.Logger) error {
	first, err := l.FirstIndex()
	if err != nil {
		return err
	}
	last, err := l.LastIndex()
	if err != nil || last == 0 {
		return err
	}
	for idx := first; idx <= last; idx++ {
		var e raft.Log
		err := l.GetLog(idx, &e)
		if err == nil {
			continue
		}
		if last-idx >= maxBatch {
			return fmt.Errorf("raft log [%d, %d]: %w; this is not the tail a crash leaves, so nothing was cut", first, last, err)
		}
		hlog.Warn("raft log: cutting a damaged tail (a write cut short by a crash)", "from", idx, "to", last, "err", err)
		return l.DeleteRange(idx, last)
	}
	return nil
}

// Close closes the WAL and its metadata. It is idempotent.
func (l *logStore) Close() error {
	err := l.WAL.Close()
	if cerr := l.meta.Close(); err == nil && cerr != nil && !errors.Is(cerr, os.ErrClosed) {
		err = cerr
	}
	return err
}

// openLog opens the Raft log of the Raft data dir dir. A dir written by an
// agent that kept its log in raft-boltdb is migrated first: its logs and
// stable keys are copied into a WAL built beside it (walTmpDir), which is
// synced and renamed into place in one step, and only then is raft.db
// renamed out of the way. A crash at any point leaves either the old
// raft.db alone (the half-built WAL is discarded and the copy starts over)
// or a complete WAL.
func openLog(dir string, log *slog.Logger, hlog hclog.Logger) (*logStore, error) {
	final := filepath.Join(dir, walDir)
	old := filepath.Join(dir, boltFile)
	_, walErr := os.Stat(final)
	_, boltErr := os.Stat(old)
	switch {
	case walErr == nil:
		if boltErr == nil {
			// Migrated, and then stopped before raft.db was moved.
			if err := os.Rename(old, filepath.Join(dir, boltMigrated)); err != nil {
				return nil, err
			}
		}
	case !errors.Is(walErr, os.ErrNotExist):
		return nil, walErr
	case boltErr == nil:
		if err := migrateBolt(dir, log, hlog); err != nil {
			return nil, fmt.Errorf("migrate %s to the WAL: %w", old, err)
		}
	case !errors.Is(boltErr, os.ErrNotExist):
		return nil, boltErr
	}
	return openWAL(final, hlog)
}

// migrateBolt copies raft.db in dir into a new WAL at dir/wal.
func migrateBolt(dir string, log *slog.Logger, hlog hclog.Logger) error {
	tmp := filepath.Join(dir, walTmpDir)
	if err := os.RemoveAll(tmp); err != nil {
		return err
	}
	bolt, err := openOldBolt(filepath.Join(dir, boltFile))
	if err != nil {
		return err
	}
	defer bolt.Close()
	first, err := bolt.FirstIndex()
	if err != nil {
		return err
	}
	last, err := bolt.LastIndex()
	if err != nil {
		return err
	}
	dst, err := openWAL(tmp, hlog)
	if err != nil {
		return err
	}
	if last > 0 {
		if err := migrate.CopyLogs(context.Background(), dst, bolt, 1<<20, nil); err != nil {
			dst.Close()
			return err
		}
	}
	if err := copyStable(dst, bolt); err != nil {
		dst.Close()
		return err
	}
	if err := dst.Close(); err != nil {
		return err
	}
	// Every append and the stable keys were synced as they were written;
	// the rename publishes the whole WAL at once.
	if err := os.Rename(tmp, filepath.Join(dir, walDir)); err != nil {
		return err
	}
	if err := syncDir(dir); err != nil {
		return err
	}
	if err := os.Rename(filepath.Join(dir, boltFile), filepath.Join(dir, boltMigrated)); err != nil {
		return err
	}
	log.Info("raft log moved from raft-boltdb to the WAL", "first_index", first, "last_index", last,
		"old_file", filepath.Join(dir, boltMigrated))
	return syncDir(dir)
}

// copyStable copies the keys hashicorp/raft keeps in its StableStore (raft's
// keyCurrentTerm, keyLastVoteTerm, keyLastVoteCand). A node that never
// voted has no vote keys, which migrate.CopyStable would refuse.
func copyStable(dst, src raft.StableStore) error {
	for _, k := range []string{"CurrentTerm", "LastVoteTerm"} {
		v, err := src.GetUint64([]byte(k))
		if errors.Is(err, errOldKeyNotFound) {
			continue
		}
		if err != nil {
			return fmt.Errorf("read %s: %w", k, err)
		}
		if err := dst.SetUint64([]byte(k), v); err != nil {
			return err
		}
	}
	v, err := src.Get([]byte("LastVoteCand"))
	if errors.Is(err, errOldKeyNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read LastVoteCand: %w", err)
	}
	return dst.Set([]byte("LastVoteCand"), v)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// oldBolt reads a raft.db as hashicorp/raft-boltdb wrote it: bucket "logs"
// maps a big-endian index to a msgpack-encoded raft.Log, bucket "conf" holds
// the stable keys. It only reads, for the migration; raft-boltdb itself
// cannot be linked beside raft-wal, whose dependencies bring a go-msgpack
// that no longer decodes the times raft-boltdb wrote.
type oldBolt struct{ db *bbolt.DB }

var (
	oldBucketLogs     = []byte("logs")
	oldBucketConf     = []byte("conf")
	errOldKeyNotFound = errors.New("not found")
)

func openOldBolt(path string) (*oldBolt, error) {
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{ReadOnly: true, Timeout: 10 * time.Second})
	if err != nil {
		return nil, err
	}
	return &oldBolt{db: db}, nil
}

func (b *oldBolt) Close() error { return b.db.Close() }

func (b *oldBolt) edge(last bool) (uint64, error) {
	var idx uint64
	err := b.db.View(func(tx *bbolt.Tx) error {
		bk := tx.Bucket(oldBucketLogs)
		if bk == nil {
			return nil
		}
		c := bk.Cursor()
		k, _ := c.First()
		if last {
			k, _ = c.Last()
		}
		if k != nil {
			if len(k) != 8 {
				return fmt.Errorf("log key of %d bytes", len(k))
			}
			idx = binary.BigEndian.Uint64(k)
		}
		return nil
	})
	return idx, err
}

func (b *oldBolt) FirstIndex() (uint64, error) { return b.edge(false) }
func (b *oldBolt) LastIndex() (uint64, error)  { return b.edge(true) }

func (b *oldBolt) GetLog(idx uint64, l *raft.Log) error {
	return b.db.View(func(tx *bbolt.Tx) error {
		bk := tx.Bucket(oldBucketLogs)
		if bk == nil {
			return raft.ErrLogNotFound
		}
		v := bk.Get(binary.BigEndian.AppendUint64(nil, idx))
		if v == nil {
			return raft.ErrLogNotFound
		}
		// As hashicorp/raft decodes what older versions encoded: time.Time
		// in its binary form, not msgpack's timestamp extension.
		h := codec.MsgpackHandle{}
		h.TimeNotBuiltin = true
		if err := codec.NewDecoderBytes(v, &h).Decode(l); err != nil {
			return fmt.Errorf("log %d: %w", idx, err)
		}
		return nil
	})
}

func (b *oldBolt) StoreLog(*raft.Log) error      { return errors.ErrUnsupported }
func (b *oldBolt) StoreLogs([]*raft.Log) error   { return errors.ErrUnsupported }
func (b *oldBolt) DeleteRange(_, _ uint64) error { return errors.ErrUnsupported }
func (b *oldBolt) Set(_, _ []byte) error         { return errors.ErrUnsupported }
func (b *oldBolt) SetUint64([]byte, uint64) error {
	return errors.ErrUnsupported
}

func (b *oldBolt) Get(key []byte) ([]byte, error) {
	var out []byte
	err := b.db.View(func(tx *bbolt.Tx) error {
		if bk := tx.Bucket(oldBucketConf); bk != nil {
			if v := bk.Get(key); v != nil {
				out = slices.Clone(v)
				return nil
			}
		}
		return errOldKeyNotFound
	})
	return out, err
}

func (b *oldBolt) GetUint64(key []byte) (uint64, error) {
	v, err := b.Get(key)
	if err != nil {
		return 0, err
	}
	if len(v) != 8 {
		return 0, fmt.Errorf("stable key %s of %d bytes", key, len(v))
	}
	return binary.BigEndian.Uint64(v), nil
}
