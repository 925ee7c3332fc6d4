package nat

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/pion/stun/v3"
)

// STUN encoding and parsing: pure functions over pion/stun messages. The
// transactions run over the Bind's own socket (see Reflexive); pion's
// client is not used because it wants a socket of its own.

type stunKind uint8

const (
	stunOther stunKind = iota
	stunRequest
	stunSuccess
)

// stunMsg is the part of a STUN Binding message this package uses.
type stunMsg struct {
	Kind   stunKind
	TxID   [stun.TransactionIDSize]byte
	Mapped netip.AddrPort // XOR-MAPPED-ADDRESS (or MAPPED-ADDRESS) of a success response
}

// buildSTUNRequest encodes a Binding request with transaction id tx.
func buildSTUNRequest(tx [stun.TransactionIDSize]byte) ([]byte, error) {
	m, err := stun.Build(stun.NewTransactionIDSetter(tx), stun.BindingRequest, stun.Fingerprint)
	if err != nil {
		return nil, fmt.Errorf("nat: build STUN request: %w", err)
	}
	return m.Raw, nil
}

// buildSTUNResponse encodes the Binding success response to tx telling the
// requester that its address is mapped.
func buildSTUNResponse(tx [stun.TransactionIDSize]byte, mapped netip.AddrPort) ([]byte, error) {
	xa := &stun.XORMappedAddress{IP: net.IP(mapped.Addr().Unmap().AsSlice()), Port: int(mapped.Port())}
	m, err := stun.Build(stun.NewTransactionIDSetter(tx), stun.BindingSuccess, xa, stun.Fingerprint)
	if err != nil {
		return nil, fmt.Errorf("nat: build STUN response: %w", err)
	}
	return m.Raw, nil
}

var errSTUNNoAddress = errors.New("nat: STUN response without a mapped address")

// parseSTUN decodes a Binding message. It never panics; b is not retained.
func parseSTUN(b []byte) (stunMsg, error) {
	var out stunMsg
	if !isSTUN(b) {
		return out, errors.New("nat: not a STUN Binding message")
	}
	m := new(stun.Message)
	if err := stun.Decode(b, m); err != nil {
		return out, fmt.Errorf("nat: decode STUN: %w", err)
	}
	if m.Contains(stun.AttrFingerprint) {
		if err := stun.Fingerprint.Check(m); err != nil {
			return out, fmt.Errorf("nat: STUN fingerprint: %w", err)
		}
	}
	out.TxID = m.TransactionID
	switch m.Type {
	case stun.BindingRequest:
		out.Kind = stunRequest
	case stun.BindingSuccess:
		out.Kind = stunSuccess
		var xa stun.XORMappedAddress
		if err := xa.GetFrom(m); err == nil {
			out.Mapped = addrPortFromIP(xa.IP, xa.Port)
		} else {
			var ma stun.MappedAddress
			if err := ma.GetFrom(m); err != nil {
				return out, errSTUNNoAddress
			}
			out.Mapped = addrPortFromIP(ma.IP, ma.Port)
		}
		if !out.Mapped.IsValid() {
			return out, errSTUNNoAddress
		}
	default:
		out.Kind = stunOther
	}
	return out, nil
}

func addrPortFromIP(ip net.IP, port int) netip.AddrPort {
	a, ok := netip.AddrFromSlice(ip)
	if !ok || port <= 0 || port > 65535 {
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(a.Unmap(), uint16(port))
}
