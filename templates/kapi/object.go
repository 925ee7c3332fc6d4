package kapi

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
)

// Object is one API object as the JSON the API server receives: what the
// catalog renders and the Kubernetes client applies.
type Object map[string]any

// APIVersion is the object's apiVersion ("apps/v1").
func (o Object) APIVersion() string { s, _ := o["apiVersion"].(string); return s }

// Kind is the object's kind ("StatefulSet").
func (o Object) Kind() string { s, _ := o["kind"].(string); return s }

// Name is metadata.name.
func (o Object) Name() string { return o.meta("name") }

// Namespace is metadata.namespace ("" for cluster-scoped objects).
func (o Object) Namespace() string { return o.meta("namespace") }

func (o Object) meta(key string) string {
	m, _ := o["metadata"].(map[string]any)
	s, _ := m[key].(string)
	return s
}

// String returns the value at path, if it is a string.
func (o Object) String(path ...string) (string, bool) {
	v, ok := o.Get(path...)
	s, isStr := v.(string)
	return s, ok && isStr
}

// Int returns the value at path, if it is a whole number.
func (o Object) Int(path ...string) (int64, bool) {
	v, ok := o.Get(path...)
	switch n := v.(type) {
	case int64:
		return n, ok
	case float64:
		return int64(n), ok && n == float64(int64(n))
	}
	return 0, false
}

// Get returns the value at path through nested maps.
func (o Object) Get(path ...string) (any, bool) {
	var cur any = map[string]any(o)
	for _, k := range path {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil, false
		}
		if cur, ok = m[k]; !ok {
			return nil, false
		}
	}
	return cur, true
}

// ToObject turns a typed object into an Object with apiVersion and kind
// set. The status is dropped, and so are null values (an unset
// creationTimestamp and the like), which a server-side apply would
// otherwise claim.
func ToObject(apiVersion, kind string, typed any) (Object, error) {
	b, err := json.Marshal(typed)
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", kind, err)
	}
	o, err := DecodeObject(b)
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", kind, err)
	}
	delete(o, "status")
	prune(o)
	o["apiVersion"], o["kind"] = apiVersion, kind
	return o, nil
}

// DecodeObject parses one JSON object; whole numbers become int64, as the
// API machinery's own decoder makes them.
func DecodeObject(b []byte) (Object, error) {
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	var m map[string]any
	if err := d.Decode(&m); err != nil {
		return nil, err
	}
	return Object(numbers(m).(map[string]any)), nil
}

func numbers(v any) any {
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			x[k] = numbers(e)
		}
	case []any:
		for i, e := range x {
			x[i] = numbers(e)
		}
	case json.Number:
		if i, err := x.Int64(); err == nil {
			return i
		}
		f, _ := x.Float64()
		return f
	}
	return v
}

func prune(m map[string]any) {
	for _, k := range slices.Collect(maps.Keys(m)) {
		switch v := m[k].(type) {
		case nil:
			delete(m, k)
		case map[string]any:
			prune(v)
			if k == "status" && len(v) == 0 {
				delete(m, k)
			}
		case []any:
			for _, x := range v {
				if mm, ok := x.(map[string]any); ok {
					prune(mm)
				}
			}
		}
	}
}

// Bool returns the value at path, if it is a boolean.
func (o Object) Bool(path ...string) (v bool, found bool) {
	x, ok := o.Get(path...)
	b, isBool := x.(bool)
	return b, ok && isBool
}

// Slice returns the list at path.
func (o Object) Slice(path ...string) []any {
	x, _ := o.Get(path...)
	s, _ := x.([]any)
	return s
}

// Strings returns the strings of the list at path.
func (o Object) Strings(path ...string) []string {
	var out []string
	for _, x := range o.Slice(path...) {
		if s, ok := x.(string); ok {
			out = append(out, s)
		}
	}
	return out
}
