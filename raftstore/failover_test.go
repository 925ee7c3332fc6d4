package raftstore

import "testing"

func TestProbeGone(t *testing.T) {
	for _, tc := range []struct {
		name string
		p    Probe
		gone bool
	}{
		{"silent", Probe{}, true},
		{"echo only", Probe{Reached: true}, false},
		{"leads the term", Probe{Reached: true, Answered: true, Term: 5, Leader: true}, false},
		{"leads a newer term", Probe{Reached: true, Answered: true, Term: 6, Leader: true}, false},
		{"stepped down in the term", Probe{Reached: true, Answered: true, Term: 5}, true},
		{"follows a newer term", Probe{Reached: true, Answered: true, Term: 6}, false},
	} {
		if got := tc.p.gone(5); got != tc.gone {
			t.Errorf("%s: gone = %v, want %v", tc.name, got, tc.gone)
		}
	}
}

// The campaigner is the confirming voter that can campaign with the most
// up-to-date log, the lowest ID among equals, so rounds run at once on
// different nodes pick the same one; never one a quorum would refuse.
func TestCampaigner(t *testing.T) {
	v := func(can bool, term, index uint64) Verdict {
		return Verdict{Unreachable: true, CanCampaign: can, LastTerm: term, LastIndex: index}
	}
	for _, tc := range []struct {
		name   string
		in     map[string]Verdict
		quorum int
		want   string
	}{
		{"none", map[string]Verdict{}, 2, ""},
		{"none can campaign", map[string]Verdict{"a": v(false, 3, 9), "b": v(false, 3, 9)}, 2, ""},
		{"equal logs: lowest ID", map[string]Verdict{"c": v(true, 3, 9), "b": v(true, 3, 9)}, 2, "b"},
		{"longer log", map[string]Verdict{"a": v(true, 3, 8), "b": v(true, 3, 9)}, 2, "b"},
		{"newer term beats a longer log", map[string]Verdict{"a": v(true, 3, 20), "b": v(true, 4, 9)}, 2, "b"},
		{"the best cannot campaign, and would refuse the other", map[string]Verdict{"a": v(true, 3, 8), "b": v(false, 3, 9)}, 2, ""},
		{"the best cannot campaign, a quorum is behind the next", map[string]Verdict{
			"a": v(true, 3, 8), "b": v(false, 3, 9), "c": v(false, 3, 7), "d": v(false, 3, 8)}, 3, "a"},
		{"another voter's election is under way", map[string]Verdict{
			"a": {Unreachable: true, Electing: true, LastTerm: 3, LastIndex: 9}, "b": v(true, 3, 9)}, 2, ""},
	} {
		if got := campaigner(tc.in, tc.quorum); got != tc.want {
			t.Errorf("%s: campaigner = %q, want %q", tc.name, got, tc.want)
		}
	}
}
