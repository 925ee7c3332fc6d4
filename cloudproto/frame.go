package cloudproto

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// MaxFrame bounds one frame of the session. The agent cuts a batch of
// changes well below it.
const MaxFrame = 4 << 20

// Errors of the framing.
var (
	ErrFrameTooLarge = errors.New("cloudproto: frame exceeds the size limit")
	ErrMalformed     = errors.New("cloudproto: malformed frame")
)

// WriteFrame writes m as one frame.
func WriteFrame(w io.Writer, m *Msg) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	if len(b) > MaxFrame {
		return fmt.Errorf("%w: %d bytes (max %d)", ErrFrameTooLarge, len(b), MaxFrame)
	}
	buf := make([]byte, 4+len(b))
	binary.BigEndian.PutUint32(buf, uint32(len(b)))
	copy(buf[4:], b)
	_, err = w.Write(buf)
	return err
}

// ReadFrame reads one frame. An oversized length is refused before any of
// it is read; a body that is not a frame with a type is malformed.
func ReadFrame(r io.Reader) (*Msg, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n > MaxFrame {
		return nil, fmt.Errorf("%w: %d bytes announced (max %d)", ErrFrameTooLarge, n, MaxFrame)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, fmt.Errorf("%w: truncated: %v", ErrMalformed, err)
	}
	var m Msg
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if m.Type == "" {
		return nil, fmt.Errorf("%w: no type", ErrMalformed)
	}
	return &m, nil
}
