package raftstore

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"log/slog"
	"os"
	"path/filepath"
)

// The meta file is two slots of metaSlotSize bytes, allocated when the file
// is made and then overwritten in turn, so saving Raft's term or vote needs
// no new disk blocks. hashicorp/raft panics when it cannot save its term: a
// meta written aside and renamed over the old one needed space, and on a
// full disk it stopped the agent. Each write is one sector-sized write and
// an fdatasync of one slot; a crash can tear only that slot, whose content
// Raft had not been told was saved, and the other slot still holds the meta
// from before.
//
// A slot: [0:4] "rlm2", [4:8] CRC32-C of [8:20+n], [8:16] its sequence
// number, [16:20] n, [20:20+n] the meta (logMeta.encode).
const (
	metaSlotSize   = 4096
	metaSlotHeader = 20
)

var (
	metaSlotMagic = []byte("rlm2")
	// errSlotEmpty: a slot never written (all zeros).
	errSlotEmpty = errors.New("never written")
)

// metaFile is the open meta file. Its writer holds logStore.writeMu.
type metaFile struct {
	f    *os.File
	seq  uint64 // of the newest slot
	slot int    // the newest slot, 0 or 1
}

func encodeMetaSlot(m logMeta, seq uint64) ([]byte, error) {
	payload := m.encode()
	if metaSlotHeader+len(payload) > metaSlotSize {
		return nil, fmt.Errorf("raft log: stable keys of %d bytes do not fit the meta file", len(payload))
	}
	b := make([]byte, metaSlotHeader, metaSlotHeader+len(payload))
	copy(b, metaSlotMagic)
	binary.LittleEndian.PutUint64(b[8:], seq)
	binary.LittleEndian.PutUint32(b[16:], uint32(len(payload)))
	b = append(b, payload...)
	binary.LittleEndian.PutUint32(b[4:], crc32.Checksum(b[8:], crcTable))
	return b, nil
}

// decodeMetaSlot reads one slot. seq is its sequence number, read even
// from a damaged slot when its magic is intact (headerOK).
func decodeMetaSlot(b []byte) (m logMeta, seq uint64, headerOK bool, err error) {
	if len(b) != metaSlotSize {
		return m, 0, false, fmt.Errorf("%w: slot of %d bytes", errDamaged, len(b))
	}
	if bytes.Count(b, []byte{0}) == len(b) {
		return m, 0, false, errSlotEmpty
	}
	if !bytes.Equal(b[:4], metaSlotMagic) {
		return m, 0, false, fmt.Errorf("%w: no slot header", errDamaged)
	}
	seq = binary.LittleEndian.Uint64(b[8:])
	n := int(binary.LittleEndian.Uint32(b[16:]))
	if n > metaSlotSize-metaSlotHeader || binary.LittleEndian.Uint32(b[4:]) != crc32.Checksum(b[8:metaSlotHeader+n], crcTable) {
		return m, seq, true, fmt.Errorf("%w: slot checksum mismatch", errDamaged)
	}
	m, err = decodeMeta(b[metaSlotHeader : metaSlotHeader+n])
	return m, seq, true, err
}

// pickMetaSlot chooses the slot to trust from the file's two: the newer of
// two intact ones; an intact one beside one never written; an intact one
// beside a damaged one whose header shows it older, or the write after it
// (torn by a crash before Raft was told it was saved). Anything else
// refuses the file: the term and vote it holds may not be guessed.
func pickMetaSlot(b []byte, log *slog.Logger) (m logMeta, seq uint64, slot int, err error) {
	var (
		ms   [2]logMeta
		seqs [2]uint64
		hdr  [2]bool
		errs [2]error
	)
	for i := range 2 {
		ms[i], seqs[i], hdr[i], errs[i] = decodeMetaSlot(b[i*metaSlotSize : (i+1)*metaSlotSize])
	}
	for i := range 2 {
		j := 1 - i
		if errs[i] != nil {
			continue
		}
		switch {
		case errs[j] == nil:
			if seqs[j] > seqs[i] {
				i = j
			}
		case errors.Is(errs[j], errSlotEmpty):
		case hdr[j] && (seqs[j] < seqs[i] || seqs[j] == seqs[i]+1):
			log.Warn("raft log: one meta slot damaged (a write torn by a crash, or an older copy); using the other",
				"damaged_slot", j, "damaged_seq", seqs[j], "used_seq", seqs[i], "err", errs[j])
		default:
			continue
		}
		return ms[i], seqs[i], i, nil
	}
	return m, 0, 0, fmt.Errorf("%w: slot 0: %v; slot 1: %v", errDamaged, errs[0], errs[1])
}

// openMeta opens dir's meta file, making it when there is none, and
// turning a meta file of the older, single-copy format into slots.
func openMeta(dir string, log *slog.Logger) (*metaFile, logMeta, error) {
	path := filepath.Join(dir, metaName)
	if err := os.Remove(filepath.Join(dir, metaTmpName)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, logMeta{}, err
	}
	b, err := os.ReadFile(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		m := logMeta{keys: map[string][]byte{}}
		mf, err := createMeta(dir, m)
		return mf, m, err
	case err != nil:
		return nil, logMeta{}, err
	case len(b) != 2*metaSlotSize && bytes.HasPrefix(b, metaMagic):
		m, err := decodeMeta(b)
		if err != nil {
			return nil, logMeta{}, fmt.Errorf("raft log: %s: %w", path, err)
		}
		mf, err := createMeta(dir, m)
		if err == nil {
			log.Info("raft log: meta file rewritten in two slots")
		}
		return mf, m, err
	case len(b) != 2*metaSlotSize:
		return nil, logMeta{}, fmt.Errorf("raft log: %s: %w: %d bytes", path, errDamaged, len(b))
	}
	m, seq, slot, err := pickMetaSlot(b, log)
	if err != nil {
		return nil, logMeta{}, fmt.Errorf("raft log: %s: %w", path, err)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, logMeta{}, err
	}
	return &metaFile{f: f, seq: seq, slot: slot}, m, nil
}

// createMeta writes a meta file holding m in slot 0 aside, and renames it
// into place.
func createMeta(dir string, m logMeta) (*metaFile, error) {
	slot, err := encodeMetaSlot(m, 1)
	if err != nil {
		return nil, err
	}
	b := make([]byte, 2*metaSlotSize)
	copy(b, slot)
	tmp, path := filepath.Join(dir, metaTmpName), filepath.Join(dir, metaName)
	err = func() error {
		f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
		if err != nil {
			return err
		}
		_, err = f.Write(b)
		if err == nil {
			err = f.Sync()
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err == nil {
			err = os.Rename(tmp, path)
		}
		if err == nil {
			err = syncDir(dir)
		}
		return err
	}()
	if err != nil {
		os.Remove(tmp)
		return nil, fmt.Errorf("raft log: create %s: %w", metaName, err)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	return &metaFile{f: f, seq: 1, slot: 0}, nil
}

// write saves m in the slot that does not hold the newest meta. A failed
// write leaves the newest slot as it was, and the next write goes to the
// same other slot.
func (mf *metaFile) write(m logMeta) error {
	slot, seq := 1-mf.slot, mf.seq+1
	b, err := encodeMetaSlot(m, seq)
	if err != nil {
		return err
	}
	if _, err := mf.f.WriteAt(b, int64(slot)*metaSlotSize); err != nil {
		return err
	}
	if err := fdatasync(mf.f); err != nil {
		return err
	}
	mf.slot, mf.seq = slot, seq
	return nil
}
