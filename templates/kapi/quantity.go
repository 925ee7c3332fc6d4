package kapi

import (
	"errors"
	"fmt"
	"math/big"
	"regexp"
	"strconv"
	"strings"
)

// Format is how a Quantity is written: the family of its suffix.
type Format string

// Quantity formats, as Kubernetes names them.
const (
	DecimalExponent Format = "DecimalExponent" // 12e6
	BinarySI        Format = "BinarySI"        // 12Mi
	DecimalSI       Format = "DecimalSI"       // 12M
)

// Quantity is a Kubernetes resource quantity ("250m", "512Mi", "1e3"): an
// exact number plus the suffix family it was written in. It serialises
// the way the API server's resource.Quantity does (canonical form: the
// largest suffix of its family that keeps the number whole), so objects
// built from it read back unchanged.
type Quantity struct {
	v      *big.Rat // nil: zero
	format Format
	// s is the input when the API server keeps it as written (see
	// keepsAsWritten); "" means the canonical form.
	s string
}

var quantityRE = regexp.MustCompile(`^([+-]?[0-9]+(?:\.[0-9]*)?|[+-]?\.[0-9]+)([eE][+-]?[0-9]+|Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?$`)

// maxExponent bounds e-notation: the API server refuses quantities far
// beyond int64 anyway, and a huge exponent would make big.Rat arithmetic
// (and so a deploy request) take forever.
const maxExponent = 999

// ParseQuantity parses s in Kubernetes' quantity grammar.
func ParseQuantity(s string) (Quantity, error) {
	m := quantityRE.FindStringSubmatch(s)
	if m == nil {
		return Quantity{}, fmt.Errorf("quantities must match the regular expression '%s'", quantityRE)
	}
	v, ok := new(big.Rat).SetString(m[1])
	if !ok {
		return Quantity{}, errors.New("bad number")
	}
	format, exp := DecimalSI, 0
	switch suf := m[2]; {
	case suf == "":
	case strings.HasSuffix(suf, "i"):
		format = BinarySI
		exp = 10 * (1 + strings.Index("KMGTPE", suf[:1]))
		v.Mul(v, new(big.Rat).SetInt(new(big.Int).Lsh(big.NewInt(1), uint(exp))))
	case len(suf) > 1 && (suf[0] == 'e' || suf[0] == 'E'):
		format = DecimalExponent
		if _, err := fmt.Sscan(suf[1:], &exp); err != nil || exp > maxExponent || exp < -maxExponent {
			return Quantity{}, fmt.Errorf("exponent %s out of range", suf[1:])
		}
		v.Mul(v, pow10(exp))
	default:
		exp = decimalSuffixes[suf]
		v.Mul(v, pow10(exp))
	}
	// The API server keeps nano precision and rounds up below it.
	v = ceilScale(v, -9)
	q := Quantity{v: v, format: format}
	if keepsAsWritten(m[1], format, exp) {
		q.s = s
	}
	return q, nil
}

// keepsAsWritten is the API server's rule for keeping a quantity's string
// as written rather than canonicalising it: the number fits its fast path
// and already looks canonical (for a binary suffix: a mantissa that is no
// multiple of 8; otherwise: a whole number of thousands steps without
// trailing zeros). The stored object then reads back as sent.
func keepsAsWritten(number string, format Format, exp int) bool {
	number = strings.TrimLeft(number, "+-")
	whole, frac, _ := strings.Cut(number, ".")
	// As the API server reads it: leading zeros go, an empty whole part
	// is 0.
	if whole = strings.TrimLeft(whole, "0"); whole == "" {
		whole = "0"
	}
	shifted := whole + frac
	if format == BinarySI {
		if frac != "" || 15-len(whole)-exp*3/10-1 < 0 {
			return false
		}
		n, err := strconv.ParseInt(shifted, 10, 64)
		return err == nil && exp%10 == 0 && n&0x07 != 0
	}
	if 18-len(whole)-len(frac) < 0 {
		return false
	}
	scale := exp - len(frac)
	if scale < -9 {
		return false
	}
	if _, err := strconv.ParseInt(shifted, 10, 64); err != nil {
		return false
	}
	return scale%3 == 0 && !strings.HasSuffix(shifted, "000") && shifted[0] != '0'
}

// MustParseQuantity is ParseQuantity for constants; it panics on error.
func MustParseQuantity(s string) Quantity {
	q, err := ParseQuantity(s)
	if err != nil {
		panic(fmt.Sprintf("kapi: cannot parse %q: %v", s, err))
	}
	return q
}

var decimalSuffixes = map[string]int{"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}

func pow10(e int) *big.Rat {
	p := new(big.Int).Exp(big.NewInt(10), big.NewInt(int64(abs(e))), nil)
	if e < 0 {
		return new(big.Rat).SetFrac(big.NewInt(1), p)
	}
	return new(big.Rat).SetInt(p)
}

func abs(x int) int {
	if x < 0 {
		return -x
	}
	return x
}

// ceilScale rounds v up (away from zero for positives, toward zero for
// negatives, like the API server) to a multiple of 10^scale.
func ceilScale(v *big.Rat, scale int) *big.Rat {
	unit := pow10(scale)
	n := new(big.Rat).Quo(v, unit)
	i := ceilInt(n)
	return new(big.Rat).Mul(new(big.Rat).SetInt(i), unit)
}

func ceilInt(r *big.Rat) *big.Int {
	q, m := new(big.Int).QuoRem(r.Num(), r.Denom(), new(big.Int))
	if m.Sign() > 0 {
		q.Add(q, big.NewInt(1))
	}
	return q
}

func (q Quantity) rat() *big.Rat {
	if q.v == nil {
		return new(big.Rat)
	}
	return q.v
}

// Cmp compares q with y: -1, 0 or +1.
func (q Quantity) Cmp(y Quantity) int { return q.rat().Cmp(y.rat()) }

// Add adds y to q; q keeps its format.
func (q *Quantity) Add(y Quantity) {
	q.v, q.s = new(big.Rat).Add(q.rat(), y.rat()), ""
	if q.format == "" {
		q.format = y.format
	}
}

// Value is q rounded up to a whole number (bytes, cores).
func (q Quantity) Value() int64 { return ceilInt(q.rat()).Int64() }

// IsZero reports whether q is zero.
func (q Quantity) IsZero() bool { return q.rat().Sign() == 0 }

// String is q in canonical form, as the API server writes it.
func (q Quantity) String() string {
	if q.s != "" {
		return q.s
	}
	v := q.rat()
	format := q.format
	if format == BinarySI {
		switch {
		case v.Cmp(big.NewRat(-1024, 1)) > 0 && v.Cmp(big.NewRat(1024, 1)) < 0:
			format = DecimalSI // small numbers read better without a binary suffix
		case !v.IsInt():
			format = DecimalSI // a binary suffix would lose the fraction
		}
	}
	if format == BinarySI {
		n := new(big.Int).Set(v.Num())
		exp := 0
		k := big.NewInt(1024)
		for exp < 6 {
			quo, rem := new(big.Int).QuoRem(n, k, new(big.Int))
			if rem.Sign() != 0 || n.Sign() == 0 {
				break
			}
			n, exp = quo, exp+1
		}
		return n.String() + []string{"", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"}[exp]
	}
	// Decimal: the largest exponent, a multiple of 3, that keeps the
	// mantissa whole (values are multiples of 10^-9).
	n := new(big.Rat).Quo(v, pow10(-9)).Num() // whole number of nano units
	exp := -9
	thousand := big.NewInt(1000)
	for n.Sign() != 0 {
		quo, rem := new(big.Int).QuoRem(n, thousand, new(big.Int))
		if rem.Sign() != 0 || (format == DecimalSI && exp >= 18) {
			break
		}
		n, exp = quo, exp+3
	}
	if n.Sign() == 0 {
		return "0"
	}
	if format == DecimalExponent {
		if exp == 0 {
			return n.String()
		}
		return n.String() + "e" + fmt.Sprint(exp)
	}
	for s, e := range decimalSuffixes {
		if e == exp {
			return n.String() + s
		}
	}
	return n.String() + "e" + fmt.Sprint(exp)
}

// MarshalJSON writes q as its canonical string.
func (q Quantity) MarshalJSON() ([]byte, error) { return []byte(`"` + q.String() + `"`), nil }

// UnmarshalJSON reads a quantity string.
func (q *Quantity) UnmarshalJSON(b []byte) error {
	s := strings.Trim(string(b), `"`)
	p, err := ParseQuantity(s)
	if err != nil {
		return err
	}
	*q = p
	return nil
}
