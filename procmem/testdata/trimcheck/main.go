// Command trimcheck trims its own executable's pages and then exercises
// code and read-only data that are no longer mapped (interfaces, type
// switches, maps, formatting: in a position-independent binary their tables
// were relocated at load). It prints what it trimmed and what it left
// alone, then "ok".
package main

import (
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"

	"github.com/runos/runos-agent/procmem"
)

type shape interface{ area() float64 }

type square struct{ s float64 }
type circle struct{ r float64 }

func (q square) area() float64 { return q.s * q.s }
func (c circle) area() float64 { return 3 * c.r * c.r }

func main() {
	before, err := procmem.Read(procmem.SelfStatus)
	if err != nil {
		fail(err)
	}
	trimmed, err := procmem.TrimExecutable()
	if err != nil {
		fail(err)
	}
	after, err := procmem.Read(procmem.SelfStatus)
	if err != nil {
		fail(err)
	}
	var total float64
	for _, s := range []shape{square{2}, circle{1}, square{3}} {
		switch v := s.(type) {
		case square:
			total += v.area()
		case circle:
			total += v.area() * 2
		}
	}
	words := strings.Fields("the quick brown fox jumps over the lazy dog")
	sort.Strings(words)
	counts := map[string]int{}
	for _, w := range words {
		counts[w]++
	}
	wrapped := fmt.Errorf("wrapped: %w", os.ErrNotExist)
	if total != 19 || words[0] != "brown" || counts["the"] != 2 || !errors.Is(wrapped, os.ErrNotExist) {
		fail(fmt.Errorf("wrong results after trimming: %v %v %v", total, words, counts))
	}
	fmt.Printf("trimmed %d bytes in %d mappings, kept %d; file-backed RSS %d -> %d\nok\n", trimmed.Bytes, trimmed.Mappings, trimmed.Kept, before.File, after.File)
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "trimcheck:", err)
	os.Exit(1)
}
