package ociimage

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// labRequired: CI runs as root with every Debian package installed, so a
// missing binary there is a failure, not a skip.
func labRequired() bool { return os.Getenv("RUNOS_LAB_REQUIRED") == "1" }

func skipOrFail(t *testing.T, format string, args ...any) {
	t.Helper()
	if labRequired() {
		t.Fatalf(format+" (RUNOS_LAB_REQUIRED=1)", args...)
	}
	t.Skipf(format, args...)
}

// busyboxPath is Debian busybox-static's binary.
func busyboxPath(t *testing.T) string {
	t.Helper()
	const p = "/bin/busybox"
	if _, err := os.Stat(p); err != nil {
		skipOrFail(t, "no %s: apt-get install -y busybox-static", p)
	}
	return p
}

func readTar(t *testing.T, data []byte) (map[string][]byte, map[string]*tar.Header, []string) {
	t.Helper()
	files := map[string][]byte{}
	headers := map[string]*tar.Header{}
	var order []string
	tr := tar.NewReader(bytes.NewReader(data))
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("reading tar: %v", err)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatalf("reading %s: %v", h.Name, err)
		}
		if _, dup := headers[h.Name]; dup {
			t.Fatalf("tar has %s twice", h.Name)
		}
		files[h.Name] = b
		headers[h.Name] = h
		order = append(order, h.Name)
	}
	return files, headers, order
}

func write(t *testing.T, img Image) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := Write(&buf, img); err != nil {
		t.Fatalf("Write: %v", err)
	}
	return buf.Bytes()
}

// parsed is what a loader (containerd's importer, docker load) reads from a
// docker-archive.
type parsed struct {
	manifest []manifestEntry
	config   imageConfig
	cfgName  string
	layer    []byte
}

func parseArchive(t *testing.T, data []byte) parsed {
	t.Helper()
	files, _, _ := readTar(t, data)
	var p parsed
	if err := json.Unmarshal(files["manifest.json"], &p.manifest); err != nil {
		t.Fatalf("manifest.json: %v", err)
	}
	if len(p.manifest) != 1 || len(p.manifest[0].Layers) != 1 {
		t.Fatalf("manifest = %+v, want one image with one layer", p.manifest)
	}
	p.cfgName = p.manifest[0].Config
	cfgJSON, ok := files[p.cfgName]
	if !ok {
		t.Fatalf("config %s named by the manifest is not in the archive", p.cfgName)
	}
	if err := json.Unmarshal(cfgJSON, &p.config); err != nil {
		t.Fatalf("config: %v", err)
	}
	if sum := sha256.Sum256(cfgJSON); hex.EncodeToString(sum[:])+".json" != p.cfgName {
		t.Fatalf("config %s is not named by its digest", p.cfgName)
	}
	p.layer, ok = files[p.manifest[0].Layers[0]]
	if !ok {
		t.Fatalf("layer %s named by the manifest is not in the archive", p.manifest[0].Layers[0])
	}
	return p
}

func TestWriteArchiveFormat(t *testing.T) {
	img := Image{
		Ref: "runos.local/test:1",
		Files: []File{
			{Path: "/usr/local/bin/hello", Mode: 0o755, Data: []byte("#!/bin/sh\necho hi\n")},
			{Path: "/tmp", Mode: fs.ModeDir | fs.ModeSticky | 0o777},
			{Path: "/bin/sh", Link: "busybox"},
			{Path: "/usr/local/bin/suid", Mode: fs.ModeSetuid | 0o755, Data: []byte("x")},
			{Path: "etc/motd", Mode: 0o644, Data: []byte("welcome\n")},
		},
		Entrypoint: []string{"/usr/local/bin/hello"},
		Cmd:        []string{"--loud"},
		Env:        []string{"GREETING=hi"},
		WorkingDir: "/tmp",
	}
	p := parseArchive(t, write(t, img))

	if got := p.manifest[0].RepoTags; !slices.Equal(got, []string{"runos.local/test:1"}) {
		t.Errorf("RepoTags = %v", got)
	}
	c := p.config
	if c.OS != "linux" || c.Architecture != runtime.GOARCH {
		t.Errorf("platform = %s/%s, want linux/%s (ctr import drops other platforms)", c.OS, c.Architecture, runtime.GOARCH)
	}
	sum := sha256.Sum256(p.layer)
	if want := []string{"sha256:" + hex.EncodeToString(sum[:])}; c.RootFS.Type != "layers" || !slices.Equal(c.RootFS.DiffIDs, want) {
		t.Errorf("rootfs = %+v, want layers with diff_ids %v", c.RootFS, want)
	}
	if !slices.Equal(c.Config.Entrypoint, img.Entrypoint) || !slices.Equal(c.Config.Cmd, img.Cmd) || c.Config.WorkingDir != "/tmp" {
		t.Errorf("config = %+v", c.Config)
	}
	if !slices.Contains(c.Config.Env, "GREETING=hi") || !slices.ContainsFunc(c.Config.Env, func(s string) bool { return strings.HasPrefix(s, "PATH=/") }) {
		t.Errorf("Env = %v, want GREETING and a default PATH", c.Config.Env)
	}

	files, headers, order := readTar(t, p.layer)
	// Parents come before children and exist even when not given.
	wantOrder := []string{"bin/", "bin/sh", "etc/", "etc/motd", "tmp/", "usr/", "usr/local/", "usr/local/bin/", "usr/local/bin/hello", "usr/local/bin/suid"}
	if !slices.Equal(order, wantOrder) {
		t.Errorf("layer entries = %v, want %v", order, wantOrder)
	}
	check := func(name string, typ byte, mode int64) {
		t.Helper()
		h := headers[name]
		if h == nil {
			t.Errorf("layer lacks %s", name)
			return
		}
		if h.Typeflag != typ || h.Mode != mode || h.Uid != 0 || h.Gid != 0 || h.ModTime.Unix() != 0 {
			t.Errorf("%s: type %c mode %o uid %d gid %d mtime %v; want type %c mode %o, root-owned, mtime 0",
				name, h.Typeflag, h.Mode, h.Uid, h.Gid, h.ModTime, typ, mode)
		}
	}
	check("tmp/", tar.TypeDir, 0o1777)
	check("usr/local/", tar.TypeDir, 0o755)
	check("usr/local/bin/hello", tar.TypeReg, 0o755)
	check("usr/local/bin/suid", tar.TypeReg, 0o4755)
	check("etc/motd", tar.TypeReg, 0o644)
	check("bin/sh", tar.TypeSymlink, 0o777)
	if l := headers["bin/sh"].Linkname; l != "busybox" {
		t.Errorf("bin/sh -> %q, want busybox", l)
	}
	if got := string(files["etc/motd"]); got != "welcome\n" {
		t.Errorf("etc/motd = %q", got)
	}
}

// The same image gives the same bytes, whatever the order of its files, so
// the image ID is stable and re-importing on every agent start is a no-op.
func TestWriteDeterministic(t *testing.T) {
	files := []File{
		{Path: "/a/b", Mode: 0o644, Data: []byte("b")},
		{Path: "/a/c", Link: "b"},
		{Path: "/z", Mode: fs.ModeDir | 0o700},
	}
	img := Image{Ref: "runos.local/d:1", Files: files, Cmd: []string{"x"}}
	first := write(t, img)
	if second := write(t, img); !bytes.Equal(first, second) {
		t.Fatal("two writes of the same image differ")
	}
	rev := img
	rev.Files = []File{files[2], files[1], files[0]}
	if !bytes.Equal(first, write(t, rev)) {
		t.Error("the order of Files changes the archive")
	}
	id, err := ID(img)
	if err != nil {
		t.Fatal(err)
	}
	if p := parseArchive(t, first); id != "sha256:"+strings.TrimSuffix(p.cfgName, ".json") {
		t.Errorf("ID = %s, archive config %s", id, p.cfgName)
	}
	changed := img
	changed.Cmd = []string{"y"}
	if id2, _ := ID(changed); id2 == id {
		t.Error("a different Cmd gives the same image ID")
	}
}

func TestWriteRejects(t *testing.T) {
	for name, img := range map[string]Image{
		"empty ref":       {Files: []File{{Path: "/a", Data: []byte("a")}}},
		"ref with space":  {Ref: "a b", Files: nil},
		"duplicate":       {Ref: "r", Files: []File{{Path: "/a"}, {Path: "a"}}},
		"dotdot":          {Ref: "r", Files: []File{{Path: "/../etc/passwd"}}},
		"unclean":         {Ref: "r", Files: []File{{Path: "/a/./b"}}},
		"root":            {Ref: "r", Files: []File{{Path: "/"}}},
		"file as parent":  {Ref: "r", Files: []File{{Path: "/a", Data: []byte("a")}, {Path: "/a/b"}}},
		"dir and symlink": {Ref: "r", Files: []File{{Path: "/a", Mode: fs.ModeDir, Link: "b"}}},
	} {
		if err := Write(io.Discard, img); err == nil {
			t.Errorf("%s: Write accepted %+v", name, img)
		}
	}
}

func TestBusyboxImage(t *testing.T) {
	bb := busyboxPath(t)
	img, err := Busybox("runos.local/busybox:1.35", bb, "httpd", "-f")
	if err != nil {
		t.Fatal(err)
	}
	p := parseArchive(t, write(t, img))
	if !slices.Equal(p.config.Config.Cmd, []string{"httpd", "-f"}) || p.config.Config.Entrypoint != nil {
		t.Errorf("config = %+v, want Cmd httpd -f and no entrypoint", p.config.Config)
	}
	files, headers, _ := readTar(t, p.layer)
	bin, err := os.ReadFile(bb)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(files["bin/busybox"], bin) || headers["bin/busybox"].Mode != 0o755 {
		t.Error("bin/busybox is not the host's busybox with mode 755")
	}
	for _, a := range []string{"sh", "httpd", "wget", "ping", "nc", "sleep", "cat", "ls"} {
		h := headers["bin/"+a]
		if h == nil || h.Typeflag != tar.TypeSymlink || h.Linkname != "busybox" {
			t.Errorf("bin/%s is not a symlink to busybox: %+v", a, h)
		}
	}
	if h := headers["tmp/"]; h == nil || h.Mode != 0o1777 {
		t.Errorf("tmp/ = %+v, want mode 1777", h)
	}
	if !strings.HasPrefix(string(files["etc/passwd"]), "root:x:0:0:") || !strings.HasPrefix(string(files["etc/group"]), "root:x:0:") {
		t.Errorf("passwd/group = %q / %q", files["etc/passwd"], files["etc/group"])
	}

	def, err := Busybox("runos.local/busybox:1.35", bb)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(def.Cmd, []string{"sh"}) {
		t.Errorf("default Cmd = %v, want sh", def.Cmd)
	}

	pause, err := Pause(PauseRef, bb)
	if err != nil {
		t.Fatal(err)
	}
	pp := parseArchive(t, write(t, pause))
	if !slices.Equal(pp.config.Config.Entrypoint, []string{"/bin/sleep", "2147483647"}) || pp.config.Config.Cmd != nil {
		t.Errorf("pause config = %+v", pp.config.Config)
	}
	if !slices.Equal(pp.manifest[0].RepoTags, []string{"runos.local/pause:1"}) {
		t.Errorf("pause RepoTags = %v", pp.manifest[0].RepoTags)
	}
}

// A dynamically linked busybox (Debian's plain busybox package) would fail in
// an image without libc; Busybox says so instead of writing a broken image.
func TestBusyboxRejectsDynamicBinary(t *testing.T) {
	sh, err := exec.LookPath("ls")
	if err != nil {
		t.Skip("no ls")
	}
	_, err = Busybox("r", sh)
	if err == nil || !strings.Contains(err.Error(), "dynamically linked") {
		t.Errorf("Busybox(%s) = %v, want a 'dynamically linked' error", sh, err)
	}
	if _, err := Busybox("r", "/nonexistent/busybox"); err == nil {
		t.Error("Busybox accepted a missing binary")
	}
}

// TestLayerSizeHintCoversBusyboxLayout: the layer buffer is sized once for
// an image shaped like the sandbox image (one big binary, hundreds of
// applet symlinks, a few small files and directories), so writing it never
// regrows the buffer.
func TestLayerSizeHintCoversBusyboxLayout(t *testing.T) {
	files := []File{
		{Path: "/bin/busybox", Mode: 0o755, Data: bytes.Repeat([]byte{0x7f}, 2<<20+123)},
		{Path: "/etc/passwd", Mode: 0o644, Data: []byte("root:x:0:0:root:/root:/bin/sh\n")},
		{Path: "/root", Mode: fs.ModeDir | 0o700},
		{Path: "/tmp", Mode: fs.ModeDir | fs.ModeSticky | 0o777},
		{Path: "/usr/share/" + strings.Repeat("long-name-", 12), Mode: 0o644, Data: []byte("x")},
	}
	for i := range 400 {
		files = append(files, File{Path: "/bin/applet" + strconv.Itoa(i), Link: "busybox"})
	}
	var layer bytes.Buffer
	if err := writeLayer(&layer, files); err != nil {
		t.Fatal(err)
	}
	if hint := layerSizeHint(files); hint < layer.Len() {
		t.Fatalf("layerSizeHint = %d, layer is %d bytes", hint, layer.Len())
	}
}
