package raftstore

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/hashicorp/go-msgpack/v2/codec"
	"github.com/hashicorp/raft"
	"go.etcd.io/bbolt"
)

// The Raft log and its stable keys (term, vote) live in segment files under
// the Raft data dir (seglog.go): one write and one fdatasync per StoreLogs,
// where raft-boltdb synced twice (its pages, then its meta page) and
// rewrote B-tree pages for every append. Data dirs written before keep
// their log in raft.db; the first open copies it into the new log (see
// openLog).
const (
	logDir       = "log"
	logTmpDir    = "log.migrating"
	boltFile     = "raft.db"
	boltMigrated = "raft.db.migrated"
)

// maxBatch is the most entries one StoreLogs writes: Raft's
// MaxAppendEntries (64, left at its default) on the leader and per
// AppendEntries on a follower.
const maxBatch = 64

// openLog opens the Raft log of the Raft data dir dir. A dir written by an
// agent that kept its log in raft-boltdb is migrated first: its logs and
// stable keys are copied into a log built beside it (logTmpDir), which is
// synced and renamed into place in one step, and only then is raft.db
// renamed out of the way. A crash at any point leaves either the old
// raft.db alone (the half-built log is discarded and the copy starts over)
// or a complete log.
func openLog(dir string, log *slog.Logger) (*logStore, error) {
	final := filepath.Join(dir, logDir)
	old := filepath.Join(dir, boltFile)
	_, logErr := os.Stat(final)
	_, boltErr := os.Stat(old)
	switch {
	case logErr == nil:
		if boltErr == nil {
			// Migrated, and then stopped before raft.db was moved.
			if err := os.Rename(old, filepath.Join(dir, boltMigrated)); err != nil {
				return nil, err
			}
		}
	case !errors.Is(logErr, os.ErrNotExist):
		return nil, logErr
	case boltErr == nil:
		if err := migrateBolt(dir, log); err != nil {
			return nil, fmt.Errorf("migrate %s to the segment log: %w", old, err)
		}
	case !errors.Is(boltErr, os.ErrNotExist):
		return nil, boltErr
	}
	return openLogStore(final, log)
}

// migrateBolt copies raft.db in dir into a new log at dir/log.
func migrateBolt(dir string, log *slog.Logger) error {
	tmp := filepath.Join(dir, logTmpDir)
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
	dst, err := openLogStore(tmp, log)
	if err != nil {
		return err
	}
	if err := copyLogs(dst, bolt, first, last); err != nil {
		dst.Close()
		return err
	}
	if err := copyStable(dst, bolt); err != nil {
		dst.Close()
		return err
	}
	if err := dst.Close(); err != nil {
		return err
	}
	// Every append and the stable keys were synced as they were written;
	// the rename publishes the whole log at once.
	if err := os.Rename(tmp, filepath.Join(dir, logDir)); err != nil {
		return err
	}
	if err := syncDir(dir); err != nil {
		return err
	}
	if err := os.Rename(filepath.Join(dir, boltFile), filepath.Join(dir, boltMigrated)); err != nil {
		return err
	}
	log.Info("raft log moved from raft-boltdb to segment files", "first_index", first, "last_index", last,
		"old_file", filepath.Join(dir, boltMigrated))
	return syncDir(dir)
}

// copyLogs copies entries [first, last] of src into dst, in batches of
// maxBatch.
func copyLogs(dst raft.LogStore, src raft.LogStore, first, last uint64) error {
	if last == 0 {
		return nil
	}
	batch := make([]*raft.Log, 0, maxBatch)
	for idx := first; idx <= last; idx++ {
		e := new(raft.Log)
		if err := src.GetLog(idx, e); err != nil {
			return fmt.Errorf("read entry %d: %w", idx, err)
		}
		batch = append(batch, e)
		if len(batch) == maxBatch || idx == last {
			if err := dst.StoreLogs(batch); err != nil {
				return err
			}
			batch = batch[:0]
		}
	}
	return nil
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
