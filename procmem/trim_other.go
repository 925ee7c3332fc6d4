//go:build !linux

package procmem

import "errors"

// TrimExecutable is Linux only; see trim_linux.go.
func TrimExecutable() (Trimmed, error) {
	return Trimmed{}, errors.New("procmem: trimming the executable's pages is supported on Linux only")
}
