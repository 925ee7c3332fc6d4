// Package ociimage writes container images as docker-archive tars (the format
// of `docker save`, read by `ctr images import` and `docker load`).
//
// Nodes of a managed cluster cannot pull images (no registry is reachable, or
// none is wanted), so the images a node needs — the sandbox ("pause") image
// above all — are written here from files on the host and imported into
// containerd. An image is a single layer; the output is deterministic (fixed
// mtimes, owners and entry order), so the same input always gives the same
// image ID and re-importing it is a no-op.
package ociimage

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"path"
	"runtime"
	"sort"
	"strings"
	"time"
)

// File is one entry of the image's filesystem.
type File struct {
	// Path is absolute inside the image ("/bin/sh"); a leading slash is
	// optional. Missing parent directories are added with mode 0755.
	Path string
	// Mode carries the permission bits plus fs.ModeDir for a directory and
	// fs.ModeSticky/ModeSetuid/ModeSetgid; the type is a regular file when
	// neither ModeDir nor Link says otherwise.
	Mode fs.FileMode
	// Data is the content of a regular file.
	Data []byte
	// Link makes the entry a symlink to this target.
	Link string
}

// Image is a single-layer image.
type Image struct {
	// Ref is the name it is imported under, e.g. runos.local/busybox:1.35. A
	// ref without a registry host is normalised by containerd to docker.io.
	Ref        string
	Files      []File
	Entrypoint []string
	Cmd        []string
	// Env is KEY=VALUE; PATH is added when missing, as runtimes do not
	// supply one and a shell-less exec of "sleep" would not be found.
	Env        []string
	WorkingDir string
}

// defaultPath is the PATH Docker and containerd put into images built from
// scratch.
const defaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// epoch is every entry's mtime and the image's creation time: fixed so the
// bytes, hence the image ID, depend only on the content.
var epoch = time.Unix(0, 0).UTC()

// imageConfig is the image config JSON (Docker image spec v1.2, the same
// shape as an OCI image config). Field order is fixed by the struct, which
// keeps the config digest (the image ID) stable.
type imageConfig struct {
	Architecture string          `json:"architecture"`
	OS           string          `json:"os"`
	Created      time.Time       `json:"created"`
	Config       containerConfig `json:"config"`
	RootFS       rootFS          `json:"rootfs"`
	History      []history       `json:"history"`
}

type containerConfig struct {
	Env        []string `json:"Env,omitempty"`
	Entrypoint []string `json:"Entrypoint,omitempty"`
	Cmd        []string `json:"Cmd,omitempty"`
	WorkingDir string   `json:"WorkingDir,omitempty"`
}

type rootFS struct {
	Type    string   `json:"type"`
	DiffIDs []string `json:"diff_ids"`
}

type history struct {
	Created   time.Time `json:"created"`
	CreatedBy string    `json:"created_by"`
}

// manifestEntry is one element of the archive's manifest.json.
type manifestEntry struct {
	Config   string   `json:"Config"`
	RepoTags []string `json:"RepoTags"`
	Layers   []string `json:"Layers"`
}

// Write writes img to w as a docker-archive tar: the layer tar, the config
// JSON named by its digest, and manifest.json tagging it with img.Ref.
func Write(w io.Writer, img Image) error {
	if img.Ref == "" || strings.ContainsAny(img.Ref, " \t\r\n") {
		return fmt.Errorf("ociimage: invalid image ref %q", img.Ref)
	}
	// The layer is buffered: the outer tar header needs its size and the
	// config its digest before anything is written. Sized up front: grown
	// by doubling, a 2 MB busybox layer cost 12 MB of garbage.
	var layer bytes.Buffer
	layer.Grow(layerSizeHint(img.Files))
	if err := writeLayer(&layer, img.Files); err != nil {
		return err
	}
	layerSum := sha256.Sum256(layer.Bytes())
	layerHex := hex.EncodeToString(layerSum[:])

	env := img.Env
	if !hasPath(env) {
		env = append(append([]string(nil), env...), defaultPath)
	}
	cfg := imageConfig{
		Architecture: runtime.GOARCH,
		OS:           "linux",
		Created:      epoch,
		Config: containerConfig{
			Env:        env,
			Entrypoint: img.Entrypoint,
			Cmd:        img.Cmd,
			WorkingDir: img.WorkingDir,
		},
		// The layer is stored uncompressed, so its diff ID (digest of the
		// uncompressed tar) is also its blob digest.
		RootFS:  rootFS{Type: "layers", DiffIDs: []string{"sha256:" + layerHex}},
		History: []history{{Created: epoch, CreatedBy: "runos-agent ociimage"}},
	}
	cfgJSON, err := json.Marshal(cfg)
	if err != nil {
		return fmt.Errorf("ociimage: config: %w", err)
	}
	cfgSum := sha256.Sum256(cfgJSON)
	cfgName := hex.EncodeToString(cfgSum[:]) + ".json"
	layerName := layerHex + "/layer.tar"

	manifest, err := json.Marshal([]manifestEntry{{
		Config:   cfgName,
		RepoTags: []string{img.Ref},
		Layers:   []string{layerName},
	}})
	if err != nil {
		return fmt.Errorf("ociimage: manifest: %w", err)
	}

	tw := tar.NewWriter(w)
	if err := tw.WriteHeader(dirHeader(layerHex + "/")); err != nil {
		return fmt.Errorf("ociimage: write: %w", err)
	}
	for _, f := range []struct {
		name string
		data []byte
	}{
		{layerName, layer.Bytes()},
		{cfgName, cfgJSON},
		{"manifest.json", manifest},
	} {
		if err := tw.WriteHeader(fileHeader(f.name, 0o644, int64(len(f.data)))); err != nil {
			return fmt.Errorf("ociimage: write: %w", err)
		}
		if _, err := tw.Write(f.data); err != nil {
			return fmt.Errorf("ociimage: write: %w", err)
		}
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("ociimage: write: %w", err)
	}
	return nil
}

// ID returns the image ID Write gives img: the digest of its config JSON.
func ID(img Image) (string, error) {
	var buf bytes.Buffer
	if err := Write(&buf, img); err != nil {
		return "", err
	}
	tr := tar.NewReader(&buf)
	for {
		h, err := tr.Next()
		if err != nil {
			return "", fmt.Errorf("ociimage: reading back: %w", err)
		}
		if name, ok := strings.CutSuffix(h.Name, ".json"); ok && h.Name != "manifest.json" {
			return "sha256:" + name, nil
		}
	}
}

func hasPath(env []string) bool {
	for _, kv := range env {
		if strings.HasPrefix(kv, "PATH=") {
			return true
		}
	}
	return false
}

// writeLayer writes the image filesystem as a tar, sorted by path so parents
// precede their children and the order does not depend on the caller's.
func writeLayer(w io.Writer, files []File) error {
	entries := make(map[string]File, len(files))
	for _, f := range files {
		name, err := cleanPath(f.Path)
		if err != nil {
			return err
		}
		if _, dup := entries[name]; dup {
			return fmt.Errorf("ociimage: %s given twice", f.Path)
		}
		if f.Link != "" && f.Mode&fs.ModeDir != 0 {
			return fmt.Errorf("ociimage: %s is both a directory and a symlink", f.Path)
		}
		entries[name] = f
	}
	// Implicit parents: without an entry, a runtime would create them with
	// whatever mode its tar extractor picks.
	for name := range entries {
		for dir := path.Dir(name); dir != "."; dir = path.Dir(dir) {
			if p, ok := entries[dir]; ok {
				if p.Mode&fs.ModeDir == 0 {
					return fmt.Errorf("ociimage: /%s is not a directory but /%s is inside it", dir, name)
				}
				continue
			}
			entries[dir] = File{Path: dir, Mode: fs.ModeDir | 0o755}
		}
	}
	names := make([]string, 0, len(entries))
	for name := range entries {
		names = append(names, name)
	}
	sort.Strings(names)

	tw := tar.NewWriter(w)
	for _, name := range names {
		f := entries[name]
		var h *tar.Header
		switch {
		case f.Mode&fs.ModeDir != 0:
			h = dirHeader(name + "/")
		case f.Link != "":
			h = &tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: f.Link}
		default:
			h = fileHeader(name, 0, int64(len(f.Data)))
		}
		h.ModTime = epoch
		h.Mode = tarMode(f.Mode)
		if f.Link != "" {
			h.Mode = 0o777
		}
		if err := tw.WriteHeader(h); err != nil {
			return fmt.Errorf("ociimage: layer: %s: %w", f.Path, err)
		}
		if h.Typeflag == tar.TypeReg {
			if _, err := tw.Write(f.Data); err != nil {
				return fmt.Errorf("ociimage: layer: %s: %w", f.Path, err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("ociimage: layer: %w", err)
	}
	return nil
}

// layerSizeHint is about the size of the layer tar of files, a little
// over: a header block per entry (two for a long name or link), the data in
// 512-byte blocks, implicit parent directories, the end-of-archive blocks.
func layerSizeHint(files []File) int {
	n := 2 * 512
	for _, f := range files {
		n += 3*512 + (len(f.Data)+511)/512*512
	}
	return n
}

// cleanPath turns "/bin/sh" into the tar name "bin/sh", rejecting paths that
// are empty, the root itself, or not in canonical form (a "../x" entry would
// escape the rootfs on a careless extractor).
func cleanPath(p string) (string, error) {
	name := strings.TrimPrefix(p, "/")
	if name == "" || name != path.Clean(name) || name == ".." || strings.HasPrefix(name, "../") {
		return "", fmt.Errorf("ociimage: invalid path %q", p)
	}
	return name, nil
}

func tarMode(m fs.FileMode) int64 {
	mode := int64(m.Perm())
	if m&fs.ModeSetuid != 0 {
		mode |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		mode |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		mode |= 0o1000
	}
	return mode
}

func dirHeader(name string) *tar.Header {
	return &tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: 0o755, ModTime: epoch}
}

func fileHeader(name string, mode, size int64) *tar.Header {
	return &tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: size, ModTime: epoch}
}
