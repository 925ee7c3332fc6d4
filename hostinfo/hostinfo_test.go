package hostinfo

import (
	"os"
	"path/filepath"
	"testing"
)

func TestParsers(t *testing.T) {
	l1, l5, l15, err := ParseLoadavg([]byte("0.52 0.58 0.59 2/467 12345\n"))
	if err != nil || l1 != 0.52 || l5 != 0.58 || l15 != 0.59 {
		t.Fatalf("loadavg: %v %v %v %v", l1, l5, l15, err)
	}
	used, total, err := ParseMeminfo([]byte("MemTotal:       16384 kB\nMemFree:  1 kB\nMemAvailable:    4096 kB\n"))
	if err != nil || total != 16384*1024 || used != 12288*1024 {
		t.Fatalf("meminfo: %d %d %v", used, total, err)
	}
	busy, all, err := ParseCPUStat([]byte("cpu  10 0 10 70 10 0 0 0 0 0\ncpu0 1 2 3\n"))
	if err != nil || busy != 20 || all != 100 {
		t.Fatalf("stat: %d %d %v", busy, all, err)
	}
	for _, bad := range []string{"", "cpu 1 2", "intr 1 2 3 4 5"} {
		if _, _, err := ParseCPUStat([]byte(bad)); err == nil {
			t.Errorf("stat %q parsed", bad)
		}
	}
	if _, _, err := ParseMeminfo([]byte("MemTotal: 1 kB\n")); err == nil {
		t.Error("meminfo without MemAvailable parsed")
	}
}

func TestSamplerComputesCPUBetweenSamples(t *testing.T) {
	proc := t.TempDir()
	write := func(name, body string) {
		if err := os.WriteFile(filepath.Join(proc, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("loadavg", "1 2 3 1/1 1\n")
	write("meminfo", "MemTotal: 100 kB\nMemAvailable: 25 kB\n")
	write("uptime", "1234.5 99\n")
	write("stat", "cpu 100 0 0 100 0 0 0 0\n")
	s := NewSampler(t.TempDir())
	s.proc = proc
	first := s.Sample()
	if first.CPUPercent != 0 {
		t.Fatalf("first sample has no baseline, got %v%%", first.CPUPercent)
	}
	write("stat", "cpu 130 0 0 170 0 0 0 0\n")
	snap := s.Sample()
	if snap.CPUPercent != 30 {
		t.Errorf("cpu = %v%%, want 30", snap.CPUPercent)
	}
	if snap.MemUsedBytes != 75*1024 || snap.UptimeSeconds != 1234.5 || snap.Load5 != 2 || snap.DiskTotalBytes == 0 {
		t.Errorf("snapshot %+v", snap)
	}
}

func FuzzParsers(f *testing.F) {
	f.Add([]byte("cpu  10 0 10 70 10 0 0 0 0 0\n"))
	f.Add([]byte("MemTotal: 1 kB\nMemAvailable: 2 kB\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		ParseCPUStat(b)
		ParseMeminfo(b)
		ParseLoadavg(b)
	})
}
