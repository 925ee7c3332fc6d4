package agent

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"time"

	"github.com/runos/runos-agent/kubehost/etcdm"
	"github.com/runos/runos-agent/raftstore"
)

// While this node leads, manageKube keeps etcd's membership equal to the
// Raft voters (one change at a time, learners first, so etcd never loses
// quorum) and the Kubernetes Node records equal to the agents: each Node
// gets its pod /24, and a removed agent's Node is cordoned and deleted.

// kubeManageInterval is how often the leader re-checks without a change.
const kubeManageInterval = 3 * time.Second

func (a *Agent) manageKube(ctx context.Context) error {
	var etcd *etcdm.Client // built on first use; its TLS credential comes from the etcd CA
	defer func() {
		if etcd != nil {
			etcd.Close()
		}
	}()
	for {
		changed := a.store.Changed()
		st, _ := a.store.State()
		if st.Kube != nil {
			if err := a.manageEtcd(ctx, &etcd, st); err != nil && ctx.Err() == nil {
				a.log.Debug("etcd membership", "err", err)
			}
			if err := a.manageKubeNodes(ctx, st); err != nil && ctx.Err() == nil {
				a.log.Debug("kubernetes nodes", "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		case <-time.After(kubeManageInterval):
		}
	}
}

func voting(m raftstore.EtcdMember) bool {
	return m.Phase == raftstore.EtcdBootstrap || m.Phase == raftstore.EtcdVoter
}

// manageEtcd makes one membership change per call, then returns: the
// next state change or tick takes the next step from the new state.
func (a *Agent) manageEtcd(ctx context.Context, client **etcdm.Client, st *raftstore.State) error {
	ks := st.Kube
	var endpoints []string
	for _, m := range ks.Etcd {
		if n, ok := st.Nodes[m.NodeID]; ok && voting(m) {
			endpoints = append(endpoints, etcdClientURL(n.MeshIP))
		}
	}
	if len(endpoints) == 0 {
		return errors.New("no voting etcd member")
	}
	if *client == nil {
		m, err := a.kubeMaterial(ks)
		if err != nil {
			return err
		}
		if *client, err = etcdm.New(endpoints, m.EtcdTLS()); err != nil {
			return err
		}
	}
	etcd := *client
	etcd.SetEndpoints(endpoints)
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	live, err := etcd.List(ctx)
	if err != nil {
		return err
	}
	byPeer := map[string]etcdm.Member{}
	for _, m := range live {
		for _, u := range m.PeerURLs {
			byPeer[u] = m
		}
	}
	voters := a.store.Status().Voters
	members := slices.Clone(ks.Etcd)
	commit := func(why string) error {
		a.log.Info("etcd membership", "change", why)
		return a.store.SetKubeEtcd(ctx, ks.Generation, members)
	}

	// 1. Learners that started and caught up become voters.
	for i, m := range members {
		if m.Phase != raftstore.EtcdLearner {
			continue
		}
		n, ok := st.Nodes[m.NodeID]
		if !ok {
			continue
		}
		lm, ok := byPeer[etcdPeerURL(n.MeshIP)]
		if !ok || lm.Name == "" || !lm.IsLearner {
			if ok && !lm.IsLearner && lm.Name != "" {
				members[i].Phase = raftstore.EtcdVoter // promoted, not yet recorded
				return commit("record promotion of " + n.Name)
			}
			continue // not started yet
		}
		if err := etcd.Promote(ctx, lm.ID); err != nil {
			if errors.Is(err, etcdm.ErrLearnerNotReady) {
				continue
			}
			return fmt.Errorf("promote %s: %w", n.Name, err)
		}
		members[i].Phase = raftstore.EtcdVoter
		members[i].MemberID = lm.ID
		return commit("promoted " + n.Name)
	}

	// 2. Members that should not be there leave etcd, one per round:
	// first those of nodes the state no longer has (a removed node, a
	// learner whose add was never recorded), then those of nodes that no
	// longer vote in Raft. Dead members go first so that removing a live
	// one never leaves etcd without a quorum.
	wanted := map[string]bool{} // peer URLs of members that should stay
	peerOf := map[string]string{}
	for _, n := range st.Nodes {
		peerOf[etcdPeerURL(n.MeshIP)] = n.ID
	}
	for _, m := range members {
		if n, ok := st.Nodes[m.NodeID]; ok && slices.Contains(voters, m.NodeID) {
			wanted[etcdPeerURL(n.MeshIP)] = true
		}
	}
	var orphan, demoted *etcdm.Member
	for i := range live {
		lm := &live[i]
		keep, known := false, false
		for _, u := range lm.PeerURLs {
			keep = keep || wanted[u]
			_, ok := peerOf[u]
			known = known || ok
		}
		switch {
		case keep:
		case !known && orphan == nil:
			orphan = lm
		case known && demoted == nil:
			demoted = lm
		}
	}
	if victim := cmp.Or(orphan, demoted); victim != nil && len(live) > 1 {
		if err := etcd.Remove(ctx, victim.ID); err != nil && !errors.Is(err, etcdm.ErrMemberNotFound) {
			return fmt.Errorf("remove etcd member %x (%s): %w", victim.ID, victim.Name, err)
		}
		a.log.Info("etcd membership", "change", "removed member", "member", victim.Name, "peer", victim.PeerURLs)
	}
	// The state keeps only members of voting nodes that etcd still has
	// (or that are about to start: learners not yet listed by name).
	kept := members[:0:0]
	for _, m := range members {
		n, ok := st.Nodes[m.NodeID]
		if ok && slices.Contains(voters, m.NodeID) {
			kept = append(kept, m)
			continue
		}
		if ok {
			if _, inEtcd := byPeer[etcdPeerURL(n.MeshIP)]; inEtcd && (demoted == nil || !slices.Contains(demoted.PeerURLs, etcdPeerURL(n.MeshIP))) {
				kept = append(kept, m) // still a member; removed in a later round
				continue
			}
		}
	}
	if len(kept) != len(members) && countVoting(kept) > 0 {
		members = kept
		return commit("dropped the members of nodes that no longer vote")
	}

	// 3. One learner at a time for a voter without a member.
	if slices.ContainsFunc(members, func(m raftstore.EtcdMember) bool { return m.Phase == raftstore.EtcdLearner }) {
		return nil
	}
	if len(members) >= kubeEtcdMax {
		return nil
	}
	for _, id := range voters {
		if slices.ContainsFunc(members, func(m raftstore.EtcdMember) bool { return m.NodeID == id }) {
			continue
		}
		n, ok := st.Nodes[id]
		if !ok || !a.nodeUp(id) {
			continue
		}
		peer := etcdPeerURL(n.MeshIP)
		added, all, err := etcd.AddLearner(ctx, peer)
		if err != nil {
			// A learner added by a leader that died before recording it.
			lm, ok := byPeer[peer]
			if !ok {
				return fmt.Errorf("add %s: %w", n.Name, err)
			}
			added, all = lm, live
		}
		members = append(members, raftstore.EtcdMember{
			NodeID:         id,
			MemberID:       added.ID,
			Phase:          raftstore.EtcdLearner,
			InitialCluster: etcdm.InitialCluster(all, n.Name, peer),
		})
		return commit("added " + n.Name + " as learner")
	}
	return nil
}

func countVoting(ms []raftstore.EtcdMember) int {
	c := 0
	for _, m := range ms {
		if voting(m) {
			c++
		}
	}
	return c
}

// kubeNode is the part of a Node object the agent reads.
type kubeNode struct {
	Metadata struct {
		Name string `json:"name"`
	} `json:"metadata"`
	Spec struct {
		PodCIDR       string `json:"podCIDR"`
		Unschedulable bool   `json:"unschedulable"`
	} `json:"spec"`
	Status struct {
		Conditions []struct {
			Type   string `json:"type"`
			Status string `json:"status"`
		} `json:"conditions"`
		Addresses []struct {
			Type    string `json:"type"`
			Address string `json:"address"`
		} `json:"addresses"`
	} `json:"status"`
}

func (n *kubeNode) ready() bool {
	for _, c := range n.Status.Conditions {
		if c.Type == "Ready" {
			return c.Status == "True"
		}
	}
	return false
}

func (a *Agent) kubeNodes(ctx context.Context, ks *raftstore.KubeState) ([]kubeNode, error) {
	hc, host, err := a.kubeHTTP(ks)
	if err != nil {
		return nil, err
	}
	var list struct {
		Items []kubeNode `json:"items"`
	}
	if err := kubeDo(ctx, hc, http.MethodGet, host+"/api/v1/nodes", "", nil, &list); err != nil {
		return nil, err
	}
	return list.Items, nil
}

func kubeDo(ctx context.Context, hc *http.Client, method, u, contentType string, body []byte, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, u, bytes.NewReader(body))
	if err != nil {
		return err
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("%s %s: %s: %s", method, u, resp.Status, bytes.TrimSpace(msg))
	}
	if out == nil {
		return nil
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

// manageKubeNodes gives every Node its agent's pod /24 (the controller
// manager allocates none: --allocate-node-cidrs=false) and deletes the
// Nodes of agents no longer in the cluster, cordoned first.
func (a *Agent) manageKubeNodes(ctx context.Context, st *raftstore.State) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	nodes, err := a.kubeNodes(ctx, st.Kube)
	if err != nil {
		return err
	}
	hc, host, err := a.kubeHTTP(st.Kube)
	if err != nil {
		return err
	}
	byName := map[string]*raftstore.Node{}
	for _, n := range st.Nodes {
		byName[n.Name] = n
	}
	var errs []error
	for _, kn := range nodes {
		name := kn.Metadata.Name
		u := host + "/api/v1/nodes/" + url.PathEscape(name)
		agent, ok := byName[name]
		switch {
		case !ok:
			if !kn.Spec.Unschedulable {
				patch := []byte(`{"spec":{"unschedulable":true}}`)
				if err := kubeDo(ctx, hc, http.MethodPatch, u, "application/merge-patch+json", patch, nil); err != nil {
					errs = append(errs, err)
					continue
				}
			}
			if err := kubeDo(ctx, hc, http.MethodDelete, u, "", nil, nil); err != nil {
				errs = append(errs, err)
				continue
			}
			a.log.Info("deleted the Kubernetes node of a removed agent", "node", name)
		case kn.Spec.PodCIDR == "":
			cidr := agent.PodCIDR.Masked().String()
			patch, _ := json.Marshal(map[string]any{"spec": map[string]any{"podCIDR": cidr, "podCIDRs": []string{cidr}}})
			if err := kubeDo(ctx, hc, http.MethodPatch, u, "application/merge-patch+json", patch, nil); err != nil {
				errs = append(errs, err)
				continue
			}
			a.log.Info("assigned the pod range", "node", name, "pod_cidr", cidr)
		}
	}
	return errors.Join(errs...)
}
