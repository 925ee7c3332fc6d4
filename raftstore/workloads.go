package raftstore

// Services, apps and the Kubernetes target (issue 6).

// Workloads is the desired (and last observed) state of what runs on
// Kubernetes.
type Workloads struct{}

func (w Workloads) clone() Workloads { return w }

// WorkloadCmd is the payload of workload_* ops.
type WorkloadCmd struct{}

func (s *State) applyWorkload(cmd *Command, res *Result) error { return ErrUnknownOp }
