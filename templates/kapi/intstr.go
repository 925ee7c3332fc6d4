package kapi

import (
	"encoding/json"
	"strconv"
)

// IntOrString is a port given by number or by name, as in a Service's
// targetPort or a probe's port.
type IntOrString struct {
	IsString bool
	IntVal   int32
	StrVal   string
}

// FromString is a named port.
func FromString(s string) IntOrString { return IntOrString{IsString: true, StrVal: s} }

// FromInt32 is a numbered port.
func FromInt32(i int32) IntOrString { return IntOrString{IntVal: i} }

// MarshalJSON writes a JSON string or number.
func (v IntOrString) MarshalJSON() ([]byte, error) {
	if v.IsString {
		return json.Marshal(v.StrVal)
	}
	return []byte(strconv.Itoa(int(v.IntVal))), nil
}

// UnmarshalJSON reads a JSON string or number.
func (v *IntOrString) UnmarshalJSON(b []byte) error {
	if len(b) > 0 && b[0] == '"' {
		v.IsString = true
		return json.Unmarshal(b, &v.StrVal)
	}
	v.IsString = false
	return json.Unmarshal(b, &v.IntVal)
}
