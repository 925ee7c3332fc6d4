package workload_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/runos/runos-agent/api"
	"github.com/runos/runos-agent/kube"
	"github.com/runos/runos-agent/raftstore"
	"github.com/runos/runos-agent/seal"
	"github.com/runos/runos-agent/workload"
)

const execKubeconfig = `apiVersion: v1
kind: Config
clusters:
- name: c
  cluster:
    server: https://127.0.0.1:1
users:
- name: u
  user:
    exec:
      apiVersion: client.authentication.k8s.io/v1
      command: /bin/sh
      args: ["-c", "touch /tmp/pwned"]
contexts:
- name: c
  context: {cluster: c, user: u}
current-context: c
`

// Attack: `kube set` (local API, web UI) with an exec plugin is refused
// with a clear error; and a kubeconfig that reached the state some other
// way (an old version, a bypassed check) is never handed to the client
// factory: the reconciler fails the instances with the reason instead.
func TestAttackExecKubeconfigNeverUsed(t *testing.T) {
	var built atomic.Int32
	h := newHost(t, func(c *workload.ReconcilerConfig) {
		c.NewExecutor = func([]byte) (*kube.Executor, error) {
			built.Add(1)
			return nil, errors.New("factory called")
		}
	})
	ctx := context.Background()
	_, err := h.ops.SetKube(ctx, []byte(execKubeconfig))
	if !errors.Is(err, workload.ErrInvalid) || !errors.Is(err, kube.ErrUnsafeKubeconfig) || !strings.Contains(err.Error(), "exec") {
		t.Fatalf("SetKube(exec) = %v, want ErrInvalid and kube.ErrUnsafeKubeconfig", err)
	}
	sealed, err := seal.Seal(h.key, raftstore.KubeconfigPurpose, []byte(execKubeconfig))
	if err != nil {
		t.Fatal(err)
	}
	res, err := h.store.Apply(ctx, &raftstore.Command{Op: raftstore.OpWorkloadKubeSet, Workload: &raftstore.WorkloadCmd{
		Kube: &raftstore.KubeTarget{Kubeconfig: sealed, Server: "https://127.0.0.1:1"}}})
	if err == nil {
		err = res.Error()
	}
	if err != nil {
		t.Fatal(err)
	}
	s, err := h.ops.DeployService(ctx, api.ServiceRequest{Service: "redis"})
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "failed as unsafe", func() error {
		got, err := h.ops.ServiceInfo(s.OSID, false)
		if err != nil {
			return err
		}
		if got.Status != api.StatusFailed || !strings.Contains(got.Reason, "unsafe kubeconfig") {
			return fmt.Errorf("status %s: %s", got.Status, got.Reason)
		}
		return nil
	})
	if n := built.Load(); n != 0 {
		t.Errorf("the client factory was given the exec kubeconfig %d times", n)
	}
}
