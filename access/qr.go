package access

import (
	"fmt"

	qrcode "github.com/skip2/go-qrcode"
)

// QRText renders text as a QR code of half-height block characters for a
// terminal (dark modules on a light background, as phone cameras read them
// from a dark-themed terminal too).
func QRText(text string) (string, error) {
	q, err := qrcode.New(text, qrcode.Low)
	if err != nil {
		return "", fmt.Errorf("qr code: %w", err)
	}
	return q.ToSmallString(false), nil
}

// QRPNG renders text as a QR code PNG of size×size pixels.
func QRPNG(text string, size int) ([]byte, error) {
	q, err := qrcode.New(text, qrcode.Low)
	if err != nil {
		return nil, fmt.Errorf("qr code: %w", err)
	}
	return q.PNG(size)
}
