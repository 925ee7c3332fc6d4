package procmem

import (
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"testing"
)

func TestParseSmaps(t *testing.T) {
	smaps := `00400000-013a1000 r-xp 00000000 fd:01 1234                               /opt/my bin/runos-agent
Size:              16004 kB
Rss:               12600 kB
Anonymous:             0 kB
VmFlags: rd ex mr mw me dw
0250a000-0259e000 rw-p 0210a000 fd:01 1234                               /opt/my bin/runos-agent
Rss:                 568 kB
Anonymous:           136 kB
7fbfe4cc7000-7fbfe4d59000 rw-p 00000000 00:00 0 
Rss:                 536 kB
Anonymous:           536 kB
`
	got, err := parseSmaps([]byte(smaps))
	if err != nil {
		t.Fatal(err)
	}
	want := []vma{
		{start: 0x400000, end: 0x13a1000, path: "/opt/my bin/runos-agent", rss: 12600 << 10},
		{start: 0x250a000, end: 0x259e000, writable: true, path: "/opt/my bin/runos-agent", rss: 568 << 10, anon: 136 << 10},
		{start: 0x7fbfe4cc7000, end: 0x7fbfe4d59000, writable: true, rss: 536 << 10, anon: 536 << 10},
	}
	if !slices.Equal(got, want) {
		t.Fatalf("parseSmaps:\n got %+v\nwant %+v", got, want)
	}
	if _, err := parseSmaps([]byte("zz-00 r-xp 0 0:0 0\n")); err == nil {
		t.Error("parseSmaps accepted a bad address range")
	}
}

// TestTrimExecutable trims the test binary's own pages: RSS drops, and
// everything after (the rest of the test, the testing package) runs on
// pages mapped again from the page cache.
func TestTrimExecutable(t *testing.T) {
	before, err := Read(SelfStatus)
	if err != nil {
		t.Fatal(err)
	}
	trimmed, err := TrimExecutable()
	if err != nil {
		t.Fatal(err)
	}
	after, err := Read(SelfStatus)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("trimmed %+v; file-backed RSS %d kB -> %d kB", trimmed, before.File>>10, after.File>>10)
	if trimmed.Bytes == 0 || after.File >= before.File {
		t.Fatalf("trimmed %+v, file-backed RSS %d -> %d: want it lower", trimmed, before.File, after.File)
	}
}

// TestTrimExecutablePIE runs a program that trims itself and then uses
// code and tables that were unmapped, built both ways: a position-dependent
// binary (Go's default here) and a position-independent one, whose
// relocated read-only data (copied on write by the loader) must be left
// alone or the program would crash.
func TestTrimExecutablePIE(t *testing.T) {
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go not in PATH: cannot build the helper")
	}
	for _, mode := range []string{"exe", "pie"} {
		t.Run(mode, func(t *testing.T) {
			bin := filepath.Join(t.TempDir(), "trimcheck")
			build := exec.Command(gobin, "build", "-buildmode="+mode, "-o", bin, "./testdata/trimcheck")
			if out, err := build.CombinedOutput(); err != nil {
				t.Fatalf("go build -buildmode=%s: %v\n%s", mode, err, out)
			}
			out, err := exec.Command(bin).CombinedOutput()
			if err != nil {
				t.Fatalf("trimcheck (%s): %v\n%s", mode, err, out)
			}
			m := regexp.MustCompile(`trimmed (\d+) bytes in (\d+) mappings, kept (\d+);.*\nok\n$`).FindSubmatch(out)
			if m == nil {
				t.Fatalf("trimcheck (%s) said:\n%s", mode, out)
			}
			t.Logf("%s: %s", mode, out)
			if trimmed, _ := strconv.Atoi(string(m[1])); trimmed == 0 {
				t.Fatalf("trimcheck (%s) trimmed nothing", mode)
			}
			// The position-independent binary has relocated read-only
			// data: the guard, not luck, kept the program alive.
			if kept, _ := strconv.Atoi(string(m[3])); mode == "pie" && kept == 0 {
				t.Fatalf("trimcheck (pie) left no mapping alone: no relocated read-only data found")
			}
		})
	}
}
