package cloud

import "github.com/runos/runos-agent/api"

func apiNodeT() api.Node { return api.Node{Name: "n1", ID: "n1", MeshIP: "172.24.0.1"} }
