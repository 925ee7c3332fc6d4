// Package kapi is the part of the Kubernetes API the catalog renders, as
// plain Go structs with the API's JSON names: Pods, StatefulSets,
// Services, Secrets and the rest, plus Quantity and IntOrString.
//
// It exists so the agent does not link k8s.io/api and the API machinery:
// those add about 8 MB of resident memory to every node, Kubernetes or
// not. Only the fields the catalog sets are here; TestMirrorsTheAPI checks
// each one against the real type's JSON name and omitempty.
package kapi

//go:generate sh -c "go run ./internal/mirrorgen | gofmt > types.go"
