// Package bindtest holds conn.Bind wrappers that tests share.
package bindtest

import (
	"sync/atomic"

	"golang.zx2c4.com/wireguard/conn"
)

// Cuttable is a Bind whose sends can be cut: a node whose socket is cut and
// then closed never gets its goodbye out, which is how tests crash a node
// that runs on a real socket.
type Cuttable struct {
	conn.Bind
	cut atomic.Bool
}

var _ conn.Bind = (*Cuttable)(nil)

// NewCuttable wraps b.
func NewCuttable(b conn.Bind) *Cuttable { return &Cuttable{Bind: b} }

// Cut makes every later Send a silent drop (as a dead link would).
func (b *Cuttable) Cut() { b.cut.Store(true) }

// Send passes bufs on unless the bind was cut.
func (b *Cuttable) Send(bufs [][]byte, ep conn.Endpoint) error {
	if b.cut.Load() {
		return nil
	}
	return b.Bind.Send(bufs, ep)
}
