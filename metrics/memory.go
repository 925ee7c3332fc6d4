package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/runos/runos-agent/procmem"
)

// process_resident_memory_bytes adds up two kinds of pages that cost very
// different things (see package procmem); this splits them.
var descMemory = prometheus.NewDesc("runos_process_memory_bytes",
	"Resident memory of the agent process by kind, as the kernel counts it: anon (heap, stacks; the process's own), file (pages of the binary and mapped files; shared with the page cache, reclaimable), shmem.",
	[]string{"kind"}, nil)

// memoryCollector reads the split at scrape time. Without /proc (not
// Linux) it reports nothing.
type memoryCollector struct{ statusPath string }

func (memoryCollector) Describe(ch chan<- *prometheus.Desc) { ch <- descMemory }

func (c memoryCollector) Collect(ch chan<- prometheus.Metric) {
	m, err := procmem.Read(c.statusPath)
	if err != nil {
		return
	}
	for _, k := range []struct {
		kind string
		v    uint64
	}{{"anon", m.Anon}, {"file", m.File}, {"shmem", m.Shmem}} {
		ch <- prometheus.MustNewConstMetric(descMemory, prometheus.GaugeValue, float64(k.v), k.kind)
	}
}
