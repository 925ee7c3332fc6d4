//go:build !linux

package raftstore

import (
	"io"
	"os"
)

func fdatasync(f *os.File) error { return f.Sync() }

// readSegmentFile reads f's first size bytes (see the Linux version).
func readSegmentFile(f *os.File, size int64) (data []byte, release func(), err error) {
	data = make([]byte, size)
	if _, err := io.ReadFull(io.NewSectionReader(f, 0, size), data); err != nil {
		return nil, nil, err
	}
	return data, func() {}, nil
}
