package cloud

import (
	"errors"
	"log/slog"
	"net"

	"github.com/pion/stun/v3"
)

// stunResponder answers STUN Binding requests with the sender's address,
// so nodes can learn their public mapping from the cloud as from any
// member. (The nat package's encoder is internal to its Bind, which owns
// its socket; this is the same few lines over pion/stun on a socket of
// its own.)
type stunResponder struct {
	pc  net.PacketConn
	log *slog.Logger
}

func newSTUNResponder(addr string, log *slog.Logger) (*stunResponder, error) {
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		return nil, err
	}
	return &stunResponder{pc: pc, log: log}, nil
}

func (r *stunResponder) Addr() net.Addr { return r.pc.LocalAddr() }

func (r *stunResponder) close() { r.pc.Close() }

func (r *stunResponder) serve() {
	buf := make([]byte, 1500)
	for {
		n, from, err := r.pc.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		resp, err := stunAnswer(buf[:n], from)
		if err != nil {
			continue // not a Binding request: ignored
		}
		r.pc.WriteTo(resp, from)
	}
}

// stunAnswer builds the Binding success response to req from addr.
func stunAnswer(req []byte, from net.Addr) ([]byte, error) {
	if !stun.IsMessage(req) {
		return nil, errors.New("not STUN")
	}
	m := new(stun.Message)
	if err := stun.Decode(req, m); err != nil {
		return nil, err
	}
	if m.Type != stun.BindingRequest {
		return nil, errors.New("not a Binding request")
	}
	ua, ok := from.(*net.UDPAddr)
	if !ok {
		return nil, errors.New("not UDP")
	}
	resp, err := stun.Build(stun.NewTransactionIDSetter(m.TransactionID), stun.BindingSuccess,
		&stun.XORMappedAddress{IP: ua.IP, Port: ua.Port}, stun.Fingerprint)
	if err != nil {
		return nil, err
	}
	return resp.Raw, nil
}
