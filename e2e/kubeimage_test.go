package e2e

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/runos/runos-agent/e2e/lab"
	"github.com/runos/runos-agent/kubehost/ociimage"
)

// busyboxImageTar writes a docker-archive image of Debian's static busybox
// (applets as symlinks: sh, httpd, wget, ping, timeout, ...) to a temp file
// and returns its path, for `runos-agent kube import`. cmd is the
// image's command (default sh); pods may set their own. It skips without busybox-static, or fails where the lab is
// required.
func busyboxImageTar(t testing.TB, ref string, cmd ...string) string {
	t.Helper()
	return imageTar(t, busyboxImage(t, ref, cmd...))
}

// busyboxImage is the busybox image with cmd as its command (busybox's `sh`
// when empty), for callers that add files before writing it with imageTar.
func busyboxImage(t testing.TB, ref string, cmd ...string) ociimage.Image {
	t.Helper()
	if _, err := os.Stat("/bin/busybox"); err != nil {
		if lab.Required() {
			t.Fatalf("/bin/busybox missing (Debian busybox-static; scripts/test-deps.sh): %v", err)
		}
		t.Skipf("/bin/busybox missing (Debian busybox-static): %v", err)
	}
	img, err := ociimage.Busybox(ref, "/bin/busybox", cmd...)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// imageTar writes img as a docker-archive tar in a temp dir and returns
// its path.
func imageTar(t testing.TB, img ociimage.Image) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "image.tar")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := ociimage.Write(f, img); err != nil {
		f.Close()
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}
