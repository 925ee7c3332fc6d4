package gossip

import (
	"context"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"strings"

	"github.com/hashicorp/memberlist"
)

// meshMTU is the overlay's MTU (mesh.DefaultMTU: 1500 less WireGuard's
// overhead).
const meshMTU = 1420

// MemberlistConfig returns memberlist's LAN defaults set up to run on t:
// the node name, the transport and its address, the keyring, and
// memberlist's logging routed to log. t must not be nil. keys are the
// gossip keys (32 bytes each, AES-256-GCM), the first of them primary: it
// encrypts what this node sends, and any of them opens what it receives.
// The caller may adjust the config (delegates, timings) before
// memberlist.Create, and rotate keys later through its Keyring.
//
// What differs from DefaultLANConfig and why:
//   - UDPBufferSize fits one gossip packet in one mesh packet. The default
//     of 1400 plus IP and UDP headers exceeds the mesh MTU of 1420, so
//     every full packet would be fragmented inside the tunnel, and a lost
//     fragment loses the whole packet.
//   - Every packet and stream is encrypted and authenticated with the
//     keyring, both ways (GossipVerifyIncoming/Outgoing): WireGuard
//     authenticates the peer that sent a packet into the tunnel, but in
//     kernel mode any local process or pod reaches the mesh IP from inside
//     the node, and one alive message would make it a member.
func MemberlistConfig(name string, t *Transport, keys [][]byte, log *slog.Logger) (*memberlist.Config, error) {
	if len(keys) == 0 {
		return nil, errors.New("gossip: a memberlist key is required")
	}
	keyring, err := memberlist.NewKeyring(keys[1:], keys[0])
	if err != nil {
		return nil, fmt.Errorf("gossip: keyring: %w", err)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := memberlist.DefaultLANConfig()
	c.Name = name
	c.Transport = t
	addr := t.Addr()
	c.BindAddr = addr.Addr().String()
	c.BindPort = int(addr.Port()) // also the default port for Join addresses without one
	c.AdvertiseAddr = c.BindAddr
	c.AdvertisePort = c.BindPort

	headers := 20 + 8 // IPv4 + UDP
	if addr.Addr().Is6() {
		headers = 40 + 8
	}
	c.UDPBufferSize = meshMTU - headers // memberlist subtracts encryption's overhead itself

	c.Keyring = keyring
	c.GossipVerifyIncoming = true
	c.GossipVerifyOutgoing = true

	c.LogOutput = nil // memberlist refuses both LogOutput and Logger
	c.Logger = NewStdLogger(log.With("component", "memberlist"))
	return c, nil
}

// NewStdLogger returns a *log.Logger for libraries such as memberlist that
// log through the standard logger with a "[LEVEL]" prefix. The prefix
// becomes the slog level, so memberlist's chatty DEBUG lines stay out of
// logs that are not at debug level.
func NewStdLogger(l *slog.Logger) *log.Logger {
	return log.New(levelWriter{l}, "", 0)
}

type levelWriter struct{ log *slog.Logger }

func (w levelWriter) Write(p []byte) (int, error) {
	msg := strings.TrimSpace(string(p))
	level := slog.LevelInfo
	if rest, ok := strings.CutPrefix(msg, "["); ok {
		if tag, after, ok := strings.Cut(rest, "]"); ok {
			known := true
			switch tag {
			case "TRACE", "DEBUG":
				level = slog.LevelDebug
			case "INFO":
				level = slog.LevelInfo
			case "WARN":
				level = slog.LevelWarn
			case "ERR", "ERROR":
				level = slog.LevelError
			default:
				known = false
			}
			if known {
				msg = strings.TrimSpace(after)
			}
		}
	}
	msg = strings.TrimPrefix(msg, "memberlist: ")
	w.log.Log(context.Background(), level, msg)
	return len(p), nil
}
