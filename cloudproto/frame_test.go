package cloudproto

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"strings"
	"testing"
)

func TestFrameRoundTripAndLimits(t *testing.T) {
	var buf bytes.Buffer
	in := &Msg{Type: MsgChanges, Changes: []Change{{Index: 5, Op: "join"}}}
	if err := WriteFrame(&buf, in); err != nil {
		t.Fatal(err)
	}
	out, err := ReadFrame(&buf)
	if err != nil || out.Type != MsgChanges || out.Changes[0].Index != 5 {
		t.Fatalf("%+v %v", out, err)
	}
	big := binary.BigEndian.AppendUint32(nil, MaxFrame+1)
	if _, err := ReadFrame(bytes.NewReader(big)); !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("oversized: %v", err)
	}
	trunc := append(binary.BigEndian.AppendUint32(nil, 10), "{}"...)
	if _, err := ReadFrame(bytes.NewReader(trunc)); !errors.Is(err, ErrMalformed) {
		t.Fatalf("truncated: %v", err)
	}
	huge := &Msg{Type: MsgError, Error: strings.Repeat("x", MaxFrame)}
	if err := WriteFrame(io.Discard, huge); !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("writing oversized: %v", err)
	}
}

func FuzzReadFrame(f *testing.F) {
	var buf bytes.Buffer
	WriteFrame(&buf, &Msg{Type: MsgAck, Index: 3})
	f.Add(buf.Bytes())
	f.Add([]byte{0, 0, 0, 2, '{', '}'})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := ReadFrame(bytes.NewReader(b))
		if err == nil && m.Type == "" {
			t.Fatal("frame without a type accepted")
		}
	})
}
