//go:build !linux

package mesh

import (
	"errors"
	"log/slog"
	"net/netip"
)

// Kernel mode configures the interface and routes with Linux netlink; other
// systems get the userspace mode only. New rejects ModeKernel before it gets
// here, so these exist only to keep the package building.

var errKernelUnsupported = errors.New("mesh: kernel mode is only supported on Linux")

type kernelLink struct {
	name   string
	cfg    Config
	log    *slog.Logger
	routes map[netip.Prefix]struct{}
}

func (k *kernelLink) setup() error                  { return errKernelUnsupported }
func (k *kernelLink) syncRoutes(map[Key]Peer) error { return errKernelUnsupported }
func (k *kernelLink) close() error                  { return nil }
func (k *kernelLink) recheckInput()                 {}
