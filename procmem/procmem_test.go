package procmem

import (
	"runtime"
	"testing"
)

func TestParseStatus(t *testing.T) {
	status := "Name:\trunos-agent\nVmRSS:\t   43344 kB\nRssAnon:\t   15996 kB\nRssFile:\t   27348 kB\nRssShmem:\t       0 kB\nThreads:\t9\n"
	m, err := parseStatus([]byte(status))
	if err != nil {
		t.Fatal(err)
	}
	if want := (Memory{Anon: 15996 << 10, File: 27348 << 10}); m != want {
		t.Fatalf("parseStatus = %+v, want %+v", m, want)
	}
	for _, bad := range []string{
		"RssAnon:\t1 kB\nRssFile:\t2 kB\n",                     // no RssShmem (a kernel before 4.5)
		"RssAnon:\tmany kB\nRssFile:\t2 kB\nRssShmem:\t0 kB\n", // not a number
	} {
		if m, err := parseStatus([]byte(bad)); err == nil {
			t.Errorf("parseStatus(%q) = %+v, want an error", bad, m)
		}
	}
}

func TestReadSelf(t *testing.T) {
	m, err := Read(SelfStatus)
	if runtime.GOOS != "linux" {
		if err == nil {
			t.Fatalf("Read without /proc = %+v, want an error", m)
		}
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	// A Go test binary has a heap and runs from a file.
	if m.Anon == 0 || m.File == 0 {
		t.Fatalf("Read(self) = %+v, want anonymous and file-backed memory", m)
	}
}
