package main

import (
	"strings"
	"testing"
)

func TestCloudCLIErrors(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"cloud", "status", "--data-dir", dir}, "agent is not running"},
		{[]string{"cloud", "disconnect", "--data-dir", dir}, "agent is not running"},
		{[]string{"cloud", "connect", "--data-dir", dir, "--token", "x"}, "exactly one URL"},
		{[]string{"cloud", "connect", "--data-dir", dir, "https://127.0.0.1:1"}, "token"},
		{[]string{"cloud", "connect", "--data-dir", dir, "--token", "x", "https://127.0.0.1:1"}, "agent is not running"},
		{[]string{"cloud", "connect", "--data-dir", dir, "--token", "x", "--allow", "root", "https://127.0.0.1:1"}, "read, deploy or admin"},
		{[]string{"cloud", "allow", "--data-dir", dir}, "exactly one level"},
		{[]string{"cloud", "allow", "--data-dir", dir, "everything"}, "read, deploy or admin"},
		{[]string{"cloud", "allow", "--data-dir", dir, "admin"}, "agent is not running"},
	} {
		if out, err := run(tc.args...); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: err = %v, want %q\n%s", tc.args, err, tc.want, out)
		}
	}
}
