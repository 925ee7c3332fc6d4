package kubetest

import (
	"fmt"
	"strings"
	"testing"
)

// recTB records what Require would do instead of doing it.
type recTB struct {
	testing.TB
	fatal, skip string
}

func (r *recTB) Helper()                      {}
func (r *recTB) Fatalf(f string, args ...any) { r.fatal = fmt.Sprintf(f, args...) }
func (r *recTB) Skipf(f string, args ...any)  { r.skip = fmt.Sprintf(f, args...) }

func TestRequireWithoutBinaries(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("RUNOS_KUBE_BIN", dir)

	t.Setenv(EnvRequired, "")
	r := &recTB{TB: t}
	Require(r)
	if r.fatal != "" || !strings.Contains(r.skip, dir+"/kube-apiserver is missing") || !strings.Contains(r.skip, "build-kube.sh") {
		t.Errorf("not required: skip %q, fatal %q", r.skip, r.fatal)
	}

	t.Setenv(EnvRequired, "1")
	r = &recTB{TB: t}
	Require(r)
	if r.skip != "" || !strings.Contains(r.fatal, "required") {
		t.Errorf("required: skip %q, fatal %q", r.skip, r.fatal)
	}
}
