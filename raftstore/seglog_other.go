//go:build !linux

package raftstore

import "os"

func fdatasync(f *os.File) error { return f.Sync() }
