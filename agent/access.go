package agent

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/runos/runos-agent/access"
	"github.com/runos/runos-agent/api"
	"github.com/runos/runos-agent/httpapi"
	"github.com/runos/runos-agent/mesh"
	"github.com/runos/runos-agent/raftstore"
)

// User access (wg1): the local API's device operations, and the loop that
// makes this node's wg1 serve exactly the devices the state says enter
// through it.

var (
	_ httpapi.Access     = (*Agent)(nil)
	_ httpapi.AccessNode = (*Agent)(nil)
)

// accessState is this node's wg1.
type accessState struct {
	mu  sync.Mutex
	srv access.Gateway // guarded by mu; nil while no device enters here
	// srvKey is the wg1 public key srv serves (the state's); guarded by mu.
	srvKey string
	// lastErr is the last failure to bring wg1 up, logged once per change;
	// guarded by mu.
	lastErr string
	// applied is the state index wg1 here was last made equal to;
	// appliedCh (nil until someone waits) is closed when it moves. Both
	// guarded by mu.
	applied   uint64
	appliedCh chan struct{}
}

// entryWait bounds how long add, move and remove wait for the entry node
// to serve the change. A config handed out before then makes the device's
// first handshake arrive too early, and WireGuard clients retry only after
// 5 s; a node that does not confirm in time costs the device that retry,
// nothing else.
const entryWait = 3 * time.Second

// accessNetworks are what a device reaches: the mesh (wg1 included), the
// pods and the services.
func accessNetworks(st *raftstore.State) []netip.Prefix {
	svc := raftstore.DefaultServiceCIDR
	if st.Kube != nil && st.Kube.ServiceCIDR.IsValid() {
		svc = st.Kube.ServiceCIDR
	}
	return []netip.Prefix{raftstore.MeshPrefix, raftstore.PodPrefix, svc}
}

// AccessAdd adds a device and returns its config, with the private key when
// the node made it: the only time the key exists outside the device.
func (a *Agent) AccessAdd(ctx context.Context, req api.AccessAddRequest) (*api.AccessConfig, error) {
	if !raftstore.ValidDNSLabel(req.Name) {
		return nil, httpapi.Classify(fmt.Errorf("invalid device name %q: use lowercase letters, digits and dashes (at most 63)", req.Name), httpapi.ErrBadRequest)
	}
	ctx, cancel := context.WithTimeout(ctx, writeTimeout)
	defer cancel()
	if err := a.WaitReady(ctx); err != nil {
		return nil, err
	}
	via := req.Via
	if via == "" {
		via = a.cfg.Name
	}
	st, _ := a.store.State()
	node := st.NodeByName(via)
	if node == nil {
		return nil, fmt.Errorf("entry node %q: %w", via, raftstore.ErrNoSuchNode)
	}
	endpoint, err := a.accessEndpoint(node, req.Endpoint)
	if err != nil {
		return nil, err
	}
	var priv mesh.Key
	pub := req.PublicKey
	if pub == "" {
		if priv, err = mesh.GeneratePrivateKey(); err != nil {
			return nil, err
		}
		pub = priv.PublicKey().String()
	} else if k, err := mesh.ParseKey(pub); err != nil || k.IsZero() {
		return nil, httpapi.Classify(fmt.Errorf("bad public key %q: want a WireGuard key (44 characters of base64, `wg pubkey` prints one)", pub), httpapi.ErrBadRequest)
	}
	cmd := &raftstore.AccessCmd{Name: req.Name, PublicKey: pub, Via: via, AllowPeers: req.AllowPeers}
	if st.Access.PublicKey == "" {
		// The cluster's first device: its wg1 key is made here, sealed.
		// A concurrent first add may win; the state keeps one of them.
		sk, err := mesh.GeneratePrivateKey()
		if err != nil {
			return nil, err
		}
		sealed, err := a.keys.Seal(raftstore.AccessKeyPurpose, []byte(sk.String()))
		if err != nil {
			return nil, err
		}
		cmd.ServerKey, cmd.ServerKeySealed = sk.PublicKey().String(), sealed
	}
	res, err := a.store.Apply(ctx, &raftstore.Command{Op: raftstore.OpAccessAdd, Access: cmd})
	if err != nil {
		return nil, err
	}
	if err := res.Error(); err != nil {
		return nil, fmt.Errorf("device %q: %w", req.Name, err)
	}
	st, err = a.waitIndex(ctx, res.Index)
	if err != nil {
		return nil, err
	}
	d := st.Access.Devices[req.Name]
	if d == nil {
		return nil, fmt.Errorf("device %q: removed right after it was added", req.Name)
	}
	a.awaitEntry(ctx, st, d.Via, res.Index)
	var privText string
	if !priv.IsZero() {
		privText = priv.String()
	}
	return a.accessConfig(st, d, privText, endpoint)
}

// AccessMove gives a device another entry node. The config it answers has a
// placeholder for the private key: only its Endpoint line changed.
func (a *Agent) AccessMove(ctx context.Context, name string, req api.AccessMoveRequest) (*api.AccessConfig, error) {
	ctx, cancel := context.WithTimeout(ctx, writeTimeout)
	defer cancel()
	if err := a.WaitReady(ctx); err != nil {
		return nil, err
	}
	st, _ := a.store.State()
	node := st.NodeByName(req.To)
	if node == nil {
		return nil, fmt.Errorf("entry node %q: %w", req.To, raftstore.ErrNoSuchNode)
	}
	endpoint, err := a.accessEndpoint(node, req.Endpoint)
	if err != nil {
		return nil, err
	}
	res, err := a.store.Apply(ctx, &raftstore.Command{Op: raftstore.OpAccessMove, Access: &raftstore.AccessCmd{Name: name, Via: req.To}})
	if err != nil {
		return nil, err
	}
	if err := res.Error(); err != nil {
		return nil, fmt.Errorf("device %q: %w", name, err)
	}
	if st, err = a.waitIndex(ctx, res.Index); err != nil {
		return nil, err
	}
	d := st.Access.Devices[name]
	if d == nil {
		return nil, fmt.Errorf("device %q: %w", name, raftstore.ErrNoSuchDevice)
	}
	a.awaitEntry(ctx, st, d.Via, res.Index)
	return a.accessConfig(st, d, "", endpoint)
}

// AccessRemove removes a device; every node drops it when it applies the
// removal (its entry node's wg1 peer, the others' AllowedIPs).
func (a *Agent) AccessRemove(ctx context.Context, name string) error {
	ctx, cancel := context.WithTimeout(ctx, writeTimeout)
	defer cancel()
	if err := a.WaitReady(ctx); err != nil {
		return err
	}
	var via string
	if st, _ := a.store.State(); st.Access.Devices[name] != nil {
		via = st.Access.Devices[name].Via
	}
	res, err := a.store.Apply(ctx, &raftstore.Command{Op: raftstore.OpAccessRemove, Access: &raftstore.AccessCmd{Name: name}})
	if err != nil {
		return err
	}
	if err := res.Error(); err != nil {
		return fmt.Errorf("device %q: %w", name, err)
	}
	if st, err := a.waitIndex(ctx, res.Index); err == nil && via != "" {
		a.awaitEntry(ctx, st, via, res.Index)
	}
	return nil
}

// awaitEntry waits, at most entryWait, until entry node via serves the
// state at index on wg1 (see entryWait).
func (a *Agent) awaitEntry(ctx context.Context, st *raftstore.State, via string, index uint64) {
	n, ok := st.Nodes[via]
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, entryWait)
	defer cancel()
	var err error
	if via == a.cfg.NodeID {
		err = a.AccessApplied(ctx, index)
	} else {
		err = a.nodeClient.AccessApplied(ctx, n.Name, index)
	}
	if err != nil {
		a.log.Info("the entry node has not confirmed the device change yet", "entry", n.Name, "index", index, "err", err)
	}
}

// AccessApplied returns once wg1 here serves the state at index or a
// later one (the node API's), or ctx's error.
func (a *Agent) AccessApplied(ctx context.Context, index uint64) error {
	for {
		a.acc.mu.Lock()
		if a.acc.applied >= index {
			a.acc.mu.Unlock()
			return nil
		}
		if a.acc.appliedCh == nil {
			a.acc.appliedCh = make(chan struct{})
		}
		ch := a.acc.appliedCh
		a.acc.mu.Unlock()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ch:
		}
	}
}

// accessApplied records that wg1 here serves the state at index.
func (a *Agent) accessApplied(index uint64) {
	a.acc.mu.Lock()
	defer a.acc.mu.Unlock()
	if index <= a.acc.applied {
		return
	}
	a.acc.applied = index
	if a.acc.appliedCh != nil {
		close(a.acc.appliedCh)
		a.acc.appliedCh = nil
	}
}

// AccessList lists the devices with their counters, asking each entry node
// for its own (briefly: a node that does not answer is reported, not
// waited for).
func (a *Agent) AccessList(ctx context.Context) *api.AccessDevices {
	st, _ := a.store.State()
	out := &api.AccessDevices{Devices: []api.AccessDevice{}}
	byVia := map[string][]int{}
	for _, d := range st.SortedDevices() {
		out.Devices = append(out.Devices, apiDevice(st, d))
		byVia[d.Via] = append(byVia[d.Via], len(out.Devices)-1)
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	var mu sync.Mutex
	for via, idx := range byVia {
		n, ok := st.Nodes[via]
		if !ok {
			for _, i := range idx {
				out.Devices[i].StatsError = "entry node removed: move the device (access move)"
			}
			continue
		}
		wg.Go(func() {
			var stats []api.AccessPeerStats
			var err error
			if via == a.cfg.NodeID {
				stats, err = a.AccessStats()
			} else {
				stats, err = a.nodeClient.AccessStats(ctx, n.Name)
			}
			mu.Lock()
			defer mu.Unlock()
			byKey := map[string]api.AccessPeerStats{}
			for _, s := range stats {
				byKey[s.PublicKey] = s
			}
			for _, i := range idx {
				d := &out.Devices[i]
				if err != nil {
					d.StatsError = err.Error()
					continue
				}
				if s, ok := byKey[d.PublicKey]; ok {
					d.LastHandshake, d.RxBytes, d.TxBytes, d.Endpoint = s.LastHandshake, s.RxBytes, s.TxBytes, s.Endpoint
				} else {
					d.StatsError = "not on " + n.Name + "'s wg1 yet"
				}
			}
		})
	}
	wg.Wait()
	return out
}

// AccessStats reports this node's wg1 peers (none when it serves no
// device): the node API's answer to other members' AccessList.
func (a *Agent) AccessStats() ([]api.AccessPeerStats, error) {
	a.acc.mu.Lock()
	srv := a.acc.srv
	a.acc.mu.Unlock()
	out := []api.AccessPeerStats{}
	if srv == nil {
		return out, nil
	}
	stats, err := srv.Stats()
	if err != nil {
		return nil, err
	}
	for _, s := range stats {
		out = append(out, api.AccessPeerStats{PublicKey: s.PublicKey.String(), Endpoint: s.Endpoint,
			LastHandshake: s.LastHandshake, RxBytes: s.RxBytes, TxBytes: s.TxBytes})
	}
	return out, nil
}

// localDevices are the devices entering through this node, with wg1's
// counters (status).
func (a *Agent) localDevices(st *raftstore.State) []api.AccessDevice {
	mine := st.DevicesVia(a.cfg.NodeID)
	if len(mine) == 0 {
		return nil
	}
	stats, err := a.AccessStats()
	byKey := map[string]api.AccessPeerStats{}
	for _, s := range stats {
		byKey[s.PublicKey] = s
	}
	out := make([]api.AccessDevice, 0, len(mine))
	for _, d := range mine {
		ad := apiDevice(st, d)
		if s, ok := byKey[d.PublicKey]; ok {
			ad.LastHandshake, ad.RxBytes, ad.TxBytes, ad.Endpoint = s.LastHandshake, s.RxBytes, s.TxBytes, s.Endpoint
		} else if err != nil {
			ad.StatsError = err.Error()
		} else {
			ad.StatsError = "wg1 is not serving it (see the agent's log)"
		}
		out = append(out, ad)
	}
	return out
}

func apiDevice(st *raftstore.State, d *raftstore.Device) api.AccessDevice {
	via := d.Via
	if n, ok := st.Nodes[d.Via]; ok {
		via = n.Name
	}
	return api.AccessDevice{Name: d.Name, Address: d.Address.String(), PublicKey: d.PublicKey, Via: via,
		AllowPeers: d.AllowPeers, CreatedAt: d.CreatedAt, FirstHandshake: d.FirstHandshake}
}

// accessEndpoint is the host:port a device dials to enter through node.
func (a *Agent) accessEndpoint(node *raftstore.Node, override string) (string, error) {
	if override != "" {
		ep, err := access.Endpoint(override, raftstore.AccessPort)
		if err != nil {
			return "", httpapi.Classify(err, httpapi.ErrBadRequest)
		}
		return ep, nil
	}
	if ep, ok := access.PickEndpoint(node.Endpoints, raftstore.AccessPort); ok {
		return ep, nil
	}
	return "", httpapi.Classify(fmt.Errorf("node %s has no address a device can dial (its candidates: %v); give one with --endpoint", node.Name, node.Endpoints), httpapi.ErrBadRequest)
}

func (a *Agent) accessConfig(st *raftstore.State, d *raftstore.Device, priv, endpoint string) (*api.AccessConfig, error) {
	cfg := access.ClientConfig{Name: d.Name, PrivateKey: priv, Address: d.Address, DNS: raftstore.AccessGateway,
		ServerKey: st.Access.PublicKey, Endpoint: endpoint, AllowedIPs: accessNetworks(st)}.Render()
	png, err := access.QRPNG(cfg, 384)
	if err != nil {
		return nil, err
	}
	return &api.AccessConfig{Device: apiDevice(st, d), Config: cfg, QRPNG: png}, nil
}

// waitIndex waits until this node has applied index and returns its state.
func (a *Agent) waitIndex(ctx context.Context, index uint64) (*raftstore.State, error) {
	for {
		changed := a.store.Changed()
		if st, at := a.store.State(); at >= index {
			return st, nil
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-changed:
		}
	}
}

// accessPoll is how often the access loop reads wg1's handshakes without a
// state change (first-handshake events).
const accessPoll = 2 * time.Second

// accessLoop keeps wg1 equal to the devices that enter through this node.
func (a *Agent) accessLoop(ctx context.Context) {
	reported := map[string]bool{} // first handshakes committed (or in the state)
	t := time.NewTicker(accessPoll)
	defer t.Stop()
	defer a.closeAccessServer()
	for {
		changed := a.store.Changed()
		a.reconcileAccess(ctx, reported)
		select {
		case <-ctx.Done():
			return
		case <-changed:
		case <-t.C:
		}
	}
}

func (a *Agent) reconcileAccess(ctx context.Context, reported map[string]bool) {
	st, index := a.store.State()
	mine := st.DevicesVia(a.cfg.NodeID)
	if len(mine) == 0 {
		a.closeAccessServer()
		a.accessApplied(index)
		return
	}
	srv, err := a.accessServer(st)
	if err != nil {
		a.acc.mu.Lock()
		if a.acc.lastErr != err.Error() {
			a.acc.lastErr = err.Error()
			a.log.Error("cannot serve user devices (wg1)", "devices", len(mine), "err", err)
		}
		a.acc.mu.Unlock()
		return
	}
	var peers []access.Peer
	for _, d := range mine {
		k, err := mesh.ParseKey(d.PublicKey)
		if err != nil {
			continue // the FSM admits only valid keys
		}
		peers = append(peers, access.Peer{Name: d.Name, PublicKey: k, Address: d.Address, AllowPeers: d.AllowPeers})
	}
	var remote []netip.Addr
	for _, d := range st.SortedDevices() {
		if d.AllowPeers && d.Via != a.cfg.NodeID {
			remote = append(remote, d.Address)
		}
	}
	if err := srv.SetPeers(peers, remote); err != nil {
		a.log.Warn("set wg1 peers", "err", err)
		return
	}
	a.accessApplied(index)
	stats, err := srv.Stats()
	if err != nil {
		return
	}
	seen := map[string]bool{}
	for _, s := range stats {
		if !s.LastHandshake.IsZero() {
			seen[s.PublicKey.String()] = true
		}
	}
	for _, d := range mine {
		if !d.FirstHandshake.IsZero() || reported[d.Name+" "+d.PublicKey] || !seen[d.PublicKey] {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		res, err := a.store.Apply(cctx, &raftstore.Command{Op: raftstore.OpAccessSeen, Access: &raftstore.AccessCmd{Name: d.Name}})
		cancel()
		if err == nil && (res.Error() == nil || errors.Is(res.Error(), raftstore.ErrNoSuchDevice)) {
			reported[d.Name+" "+d.PublicKey] = true
		}
	}
}

// accessServer returns wg1, bringing it up (or back up with the state's
// key) when needed.
func (a *Agent) accessServer(st *raftstore.State) (access.Gateway, error) {
	a.acc.mu.Lock()
	defer a.acc.mu.Unlock()
	if a.acc.srv != nil && a.acc.srvKey == st.Access.PublicKey {
		return a.acc.srv, nil
	}
	if a.acc.srv != nil {
		a.acc.srv.Close()
		a.acc.srv = nil
	}
	raw, err := a.keys.Open(raftstore.AccessKeyPurpose, st.Access.KeySealed)
	if err != nil {
		return nil, fmt.Errorf("open the wg1 key: %w", err)
	}
	key, err := mesh.ParseKey(string(raw))
	if err != nil || key.PublicKey().String() != st.Access.PublicKey {
		return nil, errors.New("the sealed wg1 key does not match its public key")
	}
	port := a.accessPort
	if port == 0 {
		port = raftstore.AccessPort
	}
	var srv access.Gateway
	if a.mode == mesh.ModeKernel {
		srv, err = access.NewServer(access.ServerConfig{
			PrivateKey:    key,
			Address:       raftstore.AccessGateway,
			ListenPort:    port,
			MeshInterface: a.dev.InterfaceName(),
			Users:         raftstore.UserAccessPrefix,
			Networks:      accessNetworks(st),
		}, a.log)
	} else {
		// No privileges: wg1 is a second wireguard-go device routed into
		// the mesh netstack by access's userspace router.
		srv, err = access.NewUserspaceServer(access.UserspaceConfig{
			PrivateKey: key,
			Address:    raftstore.AccessGateway,
			ListenPort: port,
			Users:      raftstore.UserAccessPrefix,
			Networks:   accessNetworks(st),
		}, a.dev, a.log)
	}
	if err != nil {
		return nil, err
	}
	a.acc.srv, a.acc.srvKey, a.acc.lastErr = srv, st.Access.PublicKey, ""
	// Devices are told DNS = the gateway address: the node resolver
	// answers there while wg1 is up.
	a.SetDNSExtraListen([]netip.Addr{raftstore.AccessGateway})
	return srv, nil
}

func (a *Agent) closeAccessServer() {
	a.acc.mu.Lock()
	defer a.acc.mu.Unlock()
	if a.acc.srv == nil {
		return
	}
	a.SetDNSExtraListen(nil)
	if err := a.acc.srv.Close(); err != nil {
		a.log.Warn("wg1 down", "err", err)
	}
	a.acc.srv = nil
}
