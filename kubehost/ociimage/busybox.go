package ociimage

import (
	"bufio"
	"bytes"
	"context"
	"debug/elf"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"strings"
	"time"
)

// PauseRef is the sandbox image every node imports and containerd's
// sandbox_image names.
const PauseRef = "runos.local/pause:1"

// pauseSeconds is the longest sleep busybox accepts on every arch (the max
// signed 32-bit int): about 68 years, which is forever for a sandbox.
const pauseSeconds = "2147483647"

// listTimeout bounds `busybox --list`; it answers at once unless the binary
// is not busybox at all (and, say, waits on stdin).
const listTimeout = 10 * time.Second

// Busybox builds an image holding a static busybox binary (Debian's
// busybox-static /bin/busybox) as /bin/busybox, a /bin symlink for each of
// its applets (sh, httpd, wget, ping, nc, sleep, cat, ls, ...), a minimal
// /etc/passwd and /etc/group, and a world-writable /tmp. cmd is the image's
// Cmd, "sh" when empty.
func Busybox(ref, busyboxPath string, cmd ...string) (Image, error) {
	bin, err := os.ReadFile(busyboxPath)
	if err != nil {
		return Image{}, fmt.Errorf("ociimage: busybox: %w", err)
	}
	if err := checkStatic(bin); err != nil {
		return Image{}, fmt.Errorf("ociimage: busybox %s: %w", busyboxPath, err)
	}
	applets, err := listApplets(busyboxPath)
	if err != nil {
		return Image{}, err
	}
	files := []File{
		{Path: "/bin/busybox", Mode: 0o755, Data: bin},
		{Path: "/etc/passwd", Mode: 0o644, Data: []byte(
			"root:x:0:0:root:/root:/bin/sh\n" +
				"nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")},
		{Path: "/etc/group", Mode: 0o644, Data: []byte(
			"root:x:0:\n" +
				"nogroup:x:65534:\n")},
		{Path: "/root", Mode: fs.ModeDir | 0o700},
		{Path: "/tmp", Mode: fs.ModeDir | fs.ModeSticky | 0o777},
	}
	for _, a := range applets {
		// A relative target keeps the link valid wherever the rootfs is
		// mounted (e.g. when the layer is inspected on the host).
		files = append(files, File{Path: "/bin/" + a, Link: "busybox"})
	}
	if len(cmd) == 0 {
		cmd = []string{"sh"}
	}
	return Image{Ref: ref, Files: files, Cmd: cmd}, nil
}

// Pause is the sandbox image: the busybox image with `sleep 2147483647` as
// its entrypoint. The sandbox process only holds the pod's namespaces; it
// ignores SIGTERM as PID 1, so the runtime's SIGKILL after the grace period
// is what stops it.
func Pause(ref, busyboxPath string) (Image, error) {
	img, err := Busybox(ref, busyboxPath)
	if err != nil {
		return Image{}, err
	}
	img.Entrypoint = []string{"/bin/sleep", pauseSeconds}
	img.Cmd = nil
	return img, nil
}

// checkStatic rejects a binary that needs a dynamic loader: the image has no
// libc, so it would fail at exec with a bare "no such file or directory".
func checkStatic(bin []byte) error {
	f, err := elf.NewFile(bytes.NewReader(bin))
	if err != nil {
		return fmt.Errorf("not an ELF binary: %w", err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("dynamically linked (install busybox-static, not busybox)")
		}
	}
	return nil
}

// listApplets runs `busybox --list`: the applets compiled into this build,
// which differ between distributions and versions.
func listApplets(busyboxPath string) ([]string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), listTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, busyboxPath, "--list").Output()
	if err != nil {
		return nil, fmt.Errorf("ociimage: %s --list: %w", busyboxPath, err)
	}
	var applets []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		a := strings.TrimSpace(sc.Text())
		// busybox itself is the binary; a name with a slash or a dot path
		// would escape /bin.
		if a == "" || a == "busybox" || a == "." || a == ".." || strings.Contains(a, "/") {
			continue
		}
		applets = append(applets, a)
	}
	if len(applets) == 0 {
		return nil, fmt.Errorf("ociimage: %s --list printed no applets", busyboxPath)
	}
	return applets, nil
}
