package mesh

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"reflect"
	"slices"
	"sync/atomic"
	"time"
)

// PersistentKeepalive is every member peer's keepalive: it holds NAT
// mappings open and keeps handshakes fresh.
const PersistentKeepalive = 25 * time.Second

// Reconciler defaults.
const (
	DefaultRemovalGrace      = 3 * time.Second // raftstore's default RemovalGrace
	DefaultReconcileInterval = 10 * time.Second
)

// Member is another node of the cluster as the peer reconciler sees it.
type Member struct {
	// ID is the member's stable identity: a member that leaves the view
	// lingers under it for RemovalGrace.
	ID   string
	Name string // what ReconcilerConfig.Candidates is asked with
	// PublicKey is the member's WireGuard key in wg(8)'s base64 form, as
	// recorded; a member whose key does not parse gets no peer (logged).
	PublicKey string
	Address   netip.Addr   // the member's mesh IP: its /32 is routed to it
	Routed    netip.Prefix // optional: a prefix behind the member (its pod /24)
	// Carried are more addresses behind the member: the /32s of the user
	// devices it is the entry node of (wg1).
	Carried []netip.Prefix
	// Endpoints are the member's underlay candidates (host:port), for the
	// underlay's path finding (ReconcilerConfig.Underlay). WireGuard sees
	// one identity endpoint per peer (ReconcilerConfig.Endpoint).
	Endpoints []string
	Relay     bool // the member offers to relay between members
}

// View is the cluster as the reconciler's source knows it now.
type View struct {
	// Members are the other nodes.
	Members []Member
	// Self: the view includes this node. Until a view has, the source is
	// still replaying history (a fresh joiner), and a prefix of history
	// lacks nodes that joined later, the leader perhaps: the reconciler
	// then leaves the peers alone, or replication could never reach this
	// node. Once a view has included it, a view without it means this node
	// was removed: every peer goes.
	Self bool
}

// PeerSetter is the device side of reconciliation; *Device implements it.
type PeerSetter interface {
	SetPeers(peers []Peer) error
}

var _ PeerSetter = (*Device)(nil)

// HostRechecker is what a PeerSetter may also be: one that keeps host
// state others can take away (Device.RecheckHost). The Reconciler calls
// it every round, changed or not.
type HostRechecker interface {
	RecheckHost()
}

var _ HostRechecker = (*Device)(nil)

// ReconcilerConfig configures a Reconciler.
type ReconcilerConfig struct {
	Device PeerSetter // required
	// View reports the cluster now. Required.
	View func() View
	// Changed returns a channel closed at the next change of what View
	// reports. Required.
	Changed func() <-chan struct{}
	// Endpoint is the WireGuard endpoint for a peer's key (the underlay
	// Bind's identity endpoint, which picks the path per packet); nil: none
	// (the peer roams in).
	Endpoint func(Key) netip.AddrPort
	// Underlay, if set, is given the members (and their candidates) before
	// WireGuard is, so that the identity endpoints resolve to paths by the
	// time WireGuard sends. An error fails the apply; the next wake retries.
	Underlay func([]Member) error
	// Candidates, if set, returns endpoints the named member announced out
	// of band (gossip) since its record was written: they are tried at once
	// rather than after the record is updated (which needs a quorum).
	Candidates func(name string) []string
	// Save, if set, persists the cluster after a view that includes this
	// node was applied, so that a restart brings WireGuard up without a
	// leader.
	Save func() error
	// RemovalGrace is how long a member that left the view keeps its peer,
	// so that the entry that removes it still reaches it (it then drops
	// everyone itself). Default DefaultRemovalGrace.
	RemovalGrace time.Duration
	// Interval is how often the view is re-checked without a change or a
	// Wake. Default DefaultReconcileInterval.
	Interval time.Duration
	// Now is the clock lingering is measured on; default time.Now.
	Now func() time.Time
}

// Reconciler keeps the device's peers equal to the cluster's members: when
// the view changes (a join, a removal), when woken (gossip hints), and on a
// timer.
type Reconciler struct {
	cfg     ReconcilerConfig
	log     *slog.Logger
	wake    chan struct{} // cap 1
	skipped atomic.Uint64 // members left out of a peer list as invalid
}

// NewReconciler returns a reconciler; Run runs it.
func NewReconciler(cfg ReconcilerConfig, log *slog.Logger) (*Reconciler, error) {
	switch {
	case cfg.Device == nil:
		return nil, errors.New("mesh: reconciler: Device is required")
	case cfg.View == nil || cfg.Changed == nil:
		return nil, errors.New("mesh: reconciler: View and Changed are required")
	case log == nil:
		return nil, errors.New("mesh: reconciler: logger is required")
	}
	if cfg.RemovalGrace <= 0 {
		cfg.RemovalGrace = DefaultRemovalGrace
	}
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultReconcileInterval
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Reconciler{cfg: cfg, log: log, wake: make(chan struct{}, 1)}, nil
}

// Wake makes Run re-check the view now. It never blocks.
func (r *Reconciler) Wake() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// Apply makes the underlay and the device agree with members once, outside
// Run: a node brings WireGuard up with the peers it saved before its Raft
// state is readable. An underlay failure does not keep the device from
// being set (a removal must take effect whatever else is wrong); both
// errors are returned, so Run tries again.
func (r *Reconciler) Apply(members []Member) error {
	var uerr error
	if r.cfg.Underlay != nil {
		if uerr = r.cfg.Underlay(members); uerr != nil {
			uerr = fmt.Errorf("underlay: %w", uerr)
		}
	}
	return errors.Join(uerr, r.cfg.Device.SetPeers(r.peers(members)))
}

// Skipped is how many members were left out of peer lists as invalid
// (bad or duplicate key, no mesh address, an address another claims).
func (r *Reconciler) Skipped() uint64 { return r.skipped.Load() }

// peers turns members into WireGuard peers. A member that cannot be a
// peer, or that would make the device refuse the whole list (a duplicate
// key or allowed IP), is left out, logged and counted: one bad record
// never blocks the others.
func (r *Reconciler) peers(members []Member) []Peer {
	var out []Peer
	keys := map[Key]string{}
	owner := map[netip.Prefix]string{}
	skip := func(m Member, why string, args ...any) {
		r.skipped.Add(1)
		r.log.Warn("node left out of the wireguard peers: "+why, append([]any{"node", m.Name}, args...)...)
	}
	for _, m := range members {
		key, err := ParseKey(m.PublicKey)
		if err != nil || key.IsZero() {
			skip(m, "bad public key", "err", err)
			continue
		}
		if other, dup := keys[key]; dup {
			skip(m, "public key of another node", "other", other)
			continue
		}
		if !m.Address.IsValid() || !m.Address.Is4() && !m.Address.Is6() {
			skip(m, "no mesh address")
			continue
		}
		prefixes := []netip.Prefix{netip.PrefixFrom(m.Address, m.Address.BitLen())}
		if m.Routed.IsValid() {
			prefixes = append(prefixes, m.Routed.Masked())
		}
		for _, p := range m.Carried {
			if p.IsValid() {
				prefixes = append(prefixes, p.Masked())
			}
		}
		if claimed := slices.IndexFunc(prefixes, func(p netip.Prefix) bool { _, ok := owner[p]; return ok }); claimed >= 0 {
			skip(m, "address claimed by another node", "prefix", prefixes[claimed], "other", owner[prefixes[claimed]])
			continue
		}
		keys[key] = m.Name
		for _, p := range prefixes {
			owner[p] = m.Name
		}
		p := Peer{PublicKey: key, AllowedIPs: prefixes, PersistentKeepalive: PersistentKeepalive}
		if r.cfg.Endpoint != nil {
			p.Endpoint = r.cfg.Endpoint(key)
		}
		out = append(out, p)
	}
	return out
}

type lingering struct {
	member Member
	until  time.Time
}

// Run reconciles until ctx ends.
func (r *Reconciler) Run(ctx context.Context) {
	var last []Member
	seenSelf, removed := false, false
	linger := map[string]lingering{}
	for {
		changed := r.cfg.Changed()
		v := r.cfg.View()
		now := r.cfg.Now()
		seenSelf = seenSelf || v.Self
		var members []Member
		switch {
		case v.Self:
			members = slices.Clone(v.Members)
			if members == nil {
				members = []Member{}
			}
			in := make(map[string]bool, len(v.Members))
			for _, m := range v.Members {
				in[m.ID] = true
			}
			for _, m := range last {
				if _, ok := linger[m.ID]; !ok && !in[m.ID] {
					linger[m.ID] = lingering{member: m, until: now.Add(r.cfg.RemovalGrace)}
				}
			}
			for _, id := range slices.Sorted(maps.Keys(linger)) {
				if l := linger[id]; in[id] || now.After(l.until) {
					delete(linger, id)
				} else {
					members = append(members, l.member)
				}
			}
		case seenSelf:
			if !removed {
				r.log.Error("this node has been removed from the cluster; dropping all peers")
				removed = true
			}
			members = []Member{}
		default:
			members = last
		}
		if members != nil {
			members = r.withCandidates(members)
		}
		if members != nil && !reflect.DeepEqual(members, last) {
			if err := r.Apply(members); err != nil {
				r.log.Warn("set wireguard peers", "err", err)
			} else {
				last = members
				if v.Self && r.cfg.Save != nil {
					if err := r.cfg.Save(); err != nil {
						r.log.Warn("save peers", "err", err)
					}
				}
			}
		}
		if h, ok := r.cfg.Device.(HostRechecker); ok {
			h.RecheckHost()
		}
		wait := r.cfg.Interval
		for _, l := range linger {
			wait = min(wait, l.until.Sub(now)+10*time.Millisecond)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-changed:
		case <-r.wake:
		case <-t.C:
		}
		t.Stop()
	}
}

// withCandidates adds to each member's endpoints the ones it announced out
// of band, so a remapped NAT is tried at once.
func (r *Reconciler) withCandidates(members []Member) []Member {
	if r.cfg.Candidates == nil {
		return members
	}
	out := make([]Member, len(members))
	for i, m := range members {
		out[i] = m
		cands := r.cfg.Candidates(m.Name)
		if len(cands) == 0 {
			continue
		}
		out[i].Endpoints = slices.Clone(m.Endpoints)
		for _, ep := range cands {
			if !slices.Contains(out[i].Endpoints, ep) {
				out[i].Endpoints = append(out[i].Endpoints, ep)
			}
		}
	}
	return out
}
