//go:build jepsen

package jepsen

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/anishathalye/porcupine"
)

// Result is one schedule's history summary and the checkers' verdicts.
type Result struct {
	Schedule Schedule          `json:"schedule"`
	Elapsed  time.Duration     `json:"elapsed"`
	Nemesis  []string          `json:"nemesis"`
	Counts   map[Kind]Counts   `json:"counts"`
	Total    Counts            `json:"total"`
	Lin      map[string]string `json:"linearizable"` // key -> ok|illegal|unknown (writes + consistent reads)
	// StaleLin is porcupine's verdict with the stale reads added: they
	// are allowed to fail it (reported, not a violation).
	StaleLin   map[string]string `json:"stale_linearizable"`
	Stale      StaleStats        `json:"stale"`
	Lost       []string          `json:"lost,omitempty"`
	Doubled    []string          `json:"doubled,omitempty"`
	Phantom    []string          `json:"phantom,omitempty"`
	Deposed    []string          `json:"stale_leader,omitempty"`
	Divergence string            `json:"divergence,omitempty"`
	Unhealed   []string          `json:"unhealed,omitempty"`
	Pictures   []string          `json:"pictures,omitempty"`
	Cloud      *CloudVerdict     `json:"cloud,omitempty"`

	history []Op
	infos   map[string]porcupine.LinearizationInfo
	sinfo   map[string]porcupine.LinearizationInfo
}

// Check runs every checker on a run's history and the converged state
// (nil: none was reached) and fills in res.
func Check(res *Result, ops []Op, keys []string, final *Final) {
	res.history = ops
	res.Counts = map[Kind]Counts{}
	byKind := map[Kind][]Op{}
	for _, o := range ops {
		byKind[o.Kind] = append(byKind[o.Kind], o)
	}
	for k, os := range byKind {
		res.Counts[k] = Count(os)
	}
	res.Total = Count(ops)
	res.Lin, res.StaleLin = map[string]string{}, map[string]string{}
	res.infos, res.sinfo = map[string]porcupine.LinearizationInfo{}, map[string]porcupine.LinearizationInfo{}
	for _, k := range keys {
		r, info := Linearizable(ops, k, KindRead)
		res.Lin[k], res.infos[k] = string(r), info
		r, info = Linearizable(ops, k, KindRead, KindStale)
		res.StaleLin[k], res.sinfo[k] = string(r), info
	}
	if final == nil {
		final = &Final{}
		if res.Divergence == "" {
			res.Divergence = "no converged state"
		}
	}
	res.Lost, res.Doubled, res.Phantom = CheckWrites(ops, final)
	res.Stale = CheckStale(ops, final)
}

// Violations lists what the schedule got wrong; empty is a pass.
func (r *Result) Violations() []string {
	var v []string
	for k, verdict := range r.Lin {
		if verdict != string(porcupine.Ok) {
			v = append(v, fmt.Sprintf("%s: writes and consistent reads not linearizable (%s)", k, verdict))
		}
	}
	for _, s := range r.Lost {
		v = append(v, "lost: "+s)
	}
	for _, s := range r.Doubled {
		v = append(v, "doubled: "+s)
	}
	for _, s := range r.Phantom {
		v = append(v, "phantom: "+s)
	}
	for _, s := range r.Stale.Wrong {
		v = append(v, "stale read off the log: "+s)
	}
	for _, s := range r.Deposed {
		v = append(v, "stale leader: "+s)
	}
	for _, s := range r.Unhealed {
		v = append(v, "after heal: "+s)
	}
	if r.Divergence != "" {
		v = append(v, "convergence: "+r.Divergence)
	}
	if r.Cloud != nil {
		for _, p := range r.Cloud.Problems {
			v = append(v, "cloud: "+p)
		}
	}
	return v
}

// Write saves the result as JSON (and porcupine's HTML timeline of each
// failing key) in dir.
func (r *Result) Write(dir string, ops []Op) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for k, verdict := range r.Lin {
		if verdict != string(porcupine.Ok) {
			p := filepath.Join(dir, fmt.Sprintf("%s-%s-linearizability.html", r.Schedule.Name, k))
			if err := porcupine.VisualizePath(registerModel(), r.infos[k], p); err != nil {
				return err
			}
			r.Pictures = append(r.Pictures, filepath.Base(p))
		}
	}
	b, err := json.MarshalIndent(struct {
		*Result
		Violations []string `json:"violations"`
		History    []Op     `json:"history"`
	}{r, r.Violations(), ops}, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, r.Schedule.Name+".json"), b, 0o644)
}

// WriteStalePicture saves porcupine's timeline of a key whose stale reads
// failed linearizability: what "stale-allowed" looks like.
func (r *Result) WriteStalePicture(dir string) (string, bool) {
	for k, verdict := range r.StaleLin {
		if verdict == string(porcupine.Illegal) {
			p := filepath.Join(dir, fmt.Sprintf("%s-%s-stale-reads.html", r.Schedule.Name, k))
			if porcupine.VisualizePath(registerModel(), r.sinfo[k], p) == nil {
				return filepath.Base(p), true
			}
		}
	}
	return "", false
}

// Summary is a campaign's report.
type Summary struct {
	Seed      uint64          `json:"seed"`
	Schedules int             `json:"schedules"`
	Passed    int             `json:"passed"`
	Total     Counts          `json:"total"`
	ByKind    map[Kind]Counts `json:"by_kind"`
	// Verdict counts over all schedules and keys.
	LinOK, LinIllegal, LinUnknown   int           `json:"-"`
	StaleLinIllegal                 int           `json:"stale_not_linearizable"`
	StaleBehind, StaleBackwards     int           `json:"-"`
	Lost, Doubled, Phantom, Deposed int           `json:"-"`
	Diverged                        int           `json:"-"`
	CloudSchedules                  int           `json:"-"`
	Cloud                           CloudVerdict  `json:"-"`
	Elapsed                         time.Duration `json:"elapsed"`
	Rows                            []string      `json:"-"`
	StalePicture                    string        `json:"stale_picture,omitempty"`
}

// Add counts one schedule's result.
func (s *Summary) Add(r *Result) {
	if s.ByKind == nil {
		s.ByKind = map[Kind]Counts{}
	}
	s.Schedules++
	v := r.Violations()
	if len(v) == 0 {
		s.Passed++
	}
	add := func(a *Counts, b Counts) { a.Ops += b.Ops; a.OK += b.OK; a.Fail += b.Fail; a.Info += b.Info }
	add(&s.Total, r.Total)
	for k, c := range r.Counts {
		kc := s.ByKind[k]
		add(&kc, c)
		s.ByKind[k] = kc
	}
	for _, verdict := range r.Lin {
		switch verdict {
		case string(porcupine.Ok):
			s.LinOK++
		case string(porcupine.Illegal):
			s.LinIllegal++
		default:
			s.LinUnknown++
		}
	}
	for _, verdict := range r.StaleLin {
		if verdict == string(porcupine.Illegal) {
			s.StaleLinIllegal++
		}
	}
	s.StaleBehind += r.Stale.Behind
	s.StaleBackwards += r.Stale.Backwards
	s.Lost += len(r.Lost)
	s.Doubled += len(r.Doubled)
	s.Phantom += len(r.Phantom) + len(r.Stale.Wrong)
	s.Deposed += len(r.Deposed)
	if r.Divergence != "" {
		s.Diverged++
	}
	if c := r.Cloud; c != nil {
		s.CloudSchedules++
		s.Cloud.Sent += c.Sent
		s.Cloud.Done += c.Done
		s.Cloud.Failed += c.Failed
		s.Cloud.Replayed += c.Replayed
		s.Cloud.Problems = append(s.Cloud.Problems, c.Problems...)
		for k, n := range c.Errors {
			if s.Cloud.Errors == nil {
				s.Cloud.Errors = map[string]int{}
			}
			s.Cloud.Errors[k] += n
		}
	}
	s.Elapsed += r.Elapsed
	var faults []string
	for _, st := range r.Schedule.Steps {
		faults = append(faults, st.Fault)
	}
	verdict := "pass"
	if len(v) > 0 {
		verdict = "**FAIL**: " + strings.Join(v, "; ")
	}
	s.Rows = append(s.Rows, fmt.Sprintf("| %s | %d | %s | %s | %d | %d | %d | %d | %s | %s |",
		r.Schedule.Name, r.Schedule.Nodes, r.Schedule.Tuning, strings.Join(faults, "+"),
		r.Total.Ops, r.Total.OK, r.Total.Fail, r.Total.Info, linCell(r), verdict))
}

func linCell(r *Result) string {
	var parts []string
	for k, v := range r.Lin {
		parts = append(parts, fmt.Sprintf("%s:%s/stale:%s", k, v, r.StaleLin[k]))
	}
	return strings.Join(parts, " ")
}

// Markdown renders the report.
func (s *Summary) Markdown() string {
	var b strings.Builder
	fmt.Fprintf(&b, "# Fault campaign (SEED=%d)\n\n", s.Seed)
	fmt.Fprintf(&b, "- schedules: %d, passed: %d, wall time in schedules: %s\n", s.Schedules, s.Passed, s.Elapsed.Round(time.Second))
	fmt.Fprintf(&b, "- operations: %d (ok %d, fail %d, indeterminate %d)\n", s.Total.Ops, s.Total.OK, s.Total.Fail, s.Total.Info)
	for _, k := range []Kind{KindWrite, KindCAS, KindRead, KindStale, KindToken} {
		c := s.ByKind[k]
		fmt.Fprintf(&b, "  - %s: %d (ok %d, fail %d, indeterminate %d)\n", k, c.Ops, c.OK, c.Fail, c.Info)
	}
	fmt.Fprintf(&b, "- linearizability (writes + consistent reads), per key: ok %d, violations %d, undecided %d\n", s.LinOK, s.LinIllegal, s.LinUnknown)
	fmt.Fprintf(&b, "- with stale (local) reads added: not linearizable for %d keys (allowed); stale reads behind an acknowledged write: %d, gone back after a restart: %d\n", s.StaleLinIllegal, s.StaleBehind, s.StaleBackwards)
	fmt.Fprintf(&b, "- lost acknowledged writes: %d, applied twice: %d, phantom/off-log: %d, stale leaders: %d, diverged: %d\n", s.Lost, s.Doubled, s.Phantom, s.Deposed, s.Diverged)
	if s.CloudSchedules > 0 {
		fmt.Fprintf(&b, "- with a cloud: %d schedules, %d cloud commands (done %d, failed %d, answered as replays %d), problems (lost/doubled/mirror differs): %d\n",
			s.CloudSchedules, s.Cloud.Sent, s.Cloud.Done, s.Cloud.Failed, s.Cloud.Replayed, len(s.Cloud.Problems))
		for k, n := range s.Cloud.Errors {
			fmt.Fprintf(&b, "  - failed %d× with %q\n", n, k)
		}
	}
	if s.StalePicture != "" {
		fmt.Fprintf(&b, "- a stale-read history that is not linearizable (as allowed): %s\n", s.StalePicture)
	}
	b.WriteString("\n| schedule | nodes | tuning | faults | ops | ok | fail | info | linearizable | verdict |\n|---|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range s.Rows {
		b.WriteString(r + "\n")
	}
	return b.String()
}
