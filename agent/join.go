package agent

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/runos/runos-agent/api"
	"github.com/runos/runos-agent/datadir"
	"github.com/runos/runos-agent/httpapi"
	"github.com/runos/runos-agent/mesh"
	"github.com/runos/runos-agent/nat"
	"github.com/runos/runos-agent/pki"
	"github.com/runos/runos-agent/raftstore"
	"github.com/runos/runos-agent/seal"
)

// Admit is the member side of a join (the join endpoint's httpapi.Joiner):
// it checks the request, signs the CSR, then commits "consume token +
// allocate addresses + add node" as one Raft command. A certificate signed
// for a join that then fails is harmless: its fingerprint is in no node
// record, so every member refuses it.
func (a *Agent) Admit(ctx context.Context, req *api.JoinRequest) (*api.JoinResponse, error) {
	forbidden := func(err error) error { return httpapi.Classify(err, httpapi.ErrForbidden) }
	invalid := func(err error) error { return httpapi.Classify(err, httpapi.ErrBadRequest) }
	tok, err := datadir.ParseToken(req.Token)
	if err != nil {
		return nil, forbidden(err)
	}
	if tok.CAFingerprint != a.cfg.CAFingerprint {
		return nil, forbidden(errors.New("join token belongs to another cluster"))
	}
	if err := a.checkJoinToken(ctx, tok); err != nil {
		return nil, forbidden(err)
	}
	if !datadir.ValidName(req.Name) {
		return nil, invalid(fmt.Errorf("invalid node name %q", req.Name))
	}
	if !datadir.ValidNodeID(req.NodeID) {
		return nil, invalid(errors.New("invalid node id"))
	}
	if k, err := mesh.ParseKey(req.PublicKey); err != nil || k.IsZero() {
		return nil, invalid(errors.New("invalid wireguard public key"))
	}
	if len(req.Endpoints) > 16 {
		return nil, invalid(errors.New("too many endpoints"))
	}
	if _, bad := nat.PolicyFor(a.cfg.Endpoints).FilterStrings(req.Endpoints); len(bad) > 0 {
		return nil, invalid(fmt.Errorf("invalid endpoint %w", bad[0]))
	}
	st, _ := a.store.State()
	ca, err := pki.ParseCA(st.CACertPEM, st.CAKeyPEM)
	if err != nil {
		return nil, httpapi.Classify(errors.New("this member has no cluster state yet; try again"), httpapi.ErrUnavailable)
	}
	certPEM, serial, err := ca.SignCSR(req.CSR, req.Name, nil, datadir.NodeCertValidity)
	if err != nil {
		return nil, invalid(fmt.Errorf("bad certificate request: %w", err))
	}
	fingerprint, err := pki.FingerprintPEM(certPEM)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, writeTimeout)
	defer cancel()
	res, err := a.store.Apply(ctx, &raftstore.Command{
		Op: raftstore.OpJoin,
		Join: &raftstore.JoinCmd{
			TokenID: tok.ID, SecretHash: pki.HashSecret(tok.Secret),
			NodeID: req.NodeID, Name: req.Name, PublicKey: req.PublicKey,
			Endpoints: req.Endpoints, CertSerial: serial, CertFingerprint: fingerprint, Version: req.Version,
		},
	})
	if err != nil {
		return nil, httpapi.Classify(err, httpapi.ErrUnavailable)
	}
	if err := res.Error(); err != nil {
		// A taken name or key stays raftstore's (409); any other refusal
		// of the command (the token's) is 403.
		return nil, forbidden(err)
	}
	a.log.Info("node joined", "name", req.Name, "mesh_ip", res.Node.MeshIP, "pod_cidr", res.Node.PodCIDR)
	peers := []*api.NodeRecord{}
	st, _ = a.store.State()
	for _, n := range st.SortedNodes() {
		if n.ID != res.Node.ID {
			peers = append(peers, nodeRecord(n))
		}
	}
	return &api.JoinResponse{
		ClusterID: st.ClusterID, Node: nodeRecord(res.Node), CertPEM: certPEM, CACertPEM: st.CACertPEM, Peers: peers,
		DataKey: a.dataKey.String(),
	}, nil
}

// nodeRecord and stateNode convert between the state's node record and its
// wire form in package api (the same fields: a conversion).
func nodeRecord(n *raftstore.Node) *api.NodeRecord {
	r := api.NodeRecord(*n)
	return &r
}

func stateNode(r *api.NodeRecord) *raftstore.Node {
	n := raftstore.Node(*r)
	return &n
}

// JoinOptions are the flags of `runos-agent join`.
type JoinOptions struct {
	datadir.NodeOptions
	Token  string
	Member string // HOST:PORT of any member's underlay TCP join endpoint
}

// Join admits this machine to a cluster through any member and writes the
// data dir `run` needs. Nothing is written unless the member accepted.
func Join(ctx context.Context, opts JoinOptions) (*datadir.NodeConfig, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	tok, err := datadir.ParseToken(opts.Token)
	if err != nil {
		return nil, err
	}
	member := opts.Member
	if _, _, err := net.SplitHostPort(member); err != nil {
		member = net.JoinHostPort(member, fmt.Sprint(datadir.DefaultListenPort))
	}
	if err := datadir.CheckFresh(opts.DataDir); err != nil {
		return nil, err
	}
	creds, err := datadir.NewCredentials(opts.Name)
	if err != nil {
		return nil, err
	}
	wgKey, nodeKeyPEM, csr := creds.WGKey, creds.NodeKeyPEM, creds.CSR
	req := api.JoinRequest{
		Token: opts.Token, Name: opts.Name, NodeID: datadir.NewNodeID(),
		PublicKey: wgKey.PublicKey().String(), CSR: csr, Endpoints: opts.Advertise, Version: Version,
	}
	resp, err := postJoin(ctx, member, tok.CAFingerprint, req)
	if err != nil {
		return nil, err
	}
	cert, err := pki.ParseCert(resp.CertPEM)
	if err != nil || resp.Node == nil || resp.Node.CertSerial != pki.SerialOf(cert) ||
		(resp.Node.CertFingerprint != "" && resp.Node.CertFingerprint != pki.Fingerprint(cert)) {
		return nil, errors.New("member sent an inconsistent join response")
	}
	if _, err := seal.ParseKey(resp.DataKey); err != nil {
		return nil, errors.New("member sent no valid cluster data key")
	}
	cfg := &datadir.NodeConfig{
		ClusterID: resp.ClusterID, NodeID: resp.Node.ID, Name: opts.Name, Net: opts.Net,
		ListenPort: opts.ListenPort, Endpoints: opts.Advertise,
		MeshIP: resp.Node.MeshIP, PodCIDR: resp.Node.PodCIDR, CAFingerprint: tok.CAFingerprint,
		Relay: opts.Relay, STUN: opts.STUN,
	}
	if err := os.MkdirAll(opts.DataDir, 0o700); err != nil {
		return nil, err
	}
	for name, data := range map[string][]byte{
		datadir.FileWGKey: []byte(wgKey.String() + "\n"), datadir.FileNodeKey: nodeKeyPEM,
		datadir.FileNodeCert: resp.CertPEM, datadir.FileCACert: resp.CACertPEM,
		datadir.FileDataKey: []byte(resp.DataKey + "\n"),
	} {
		if err := datadir.WriteFileAtomic(filepath.Join(opts.DataDir, name), data, 0o600); err != nil {
			return nil, err
		}
	}
	var peers []*raftstore.Node
	for _, p := range resp.Peers {
		if p != nil {
			peers = append(peers, stateNode(p))
		}
	}
	if err := datadir.SavePeers(opts.DataDir, append(peers, stateNode(resp.Node))); err != nil {
		return nil, err
	}
	if err := datadir.WriteJSON(filepath.Join(opts.DataDir, datadir.FileConfig), cfg, 0o600); err != nil {
		return nil, err
	}
	return cfg, nil
}

func postJoin(ctx context.Context, member, caFingerprint string, req api.JoinRequest) (*api.JoinResponse, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	client := &http.Client{
		Timeout: writeTimeout + 10*time.Second,
		Transport: &http.Transport{
			TLSClientConfig:     pki.JoinClientConfig(caFingerprint),
			TLSHandshakeTimeout: 10 * time.Second,
			ForceAttemptHTTP2:   false,
		},
	}
	defer client.CloseIdleConnections()
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, "https://"+member+"/v1/join", bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	hreq.Header.Set("Content-Type", "application/json")
	hresp, err := client.Do(hreq)
	if err != nil {
		var terr *tls.CertificateVerificationError
		if errors.As(err, &terr) {
			return nil, fmt.Errorf("join %s: %w", member, terr.Err)
		}
		if strings.Contains(err.Error(), "unrecognized name") {
			// The join endpoint answers only to the server name derived
			// from its CA's fingerprint (pki.JoinServerName).
			return nil, fmt.Errorf("join %s: %w: the member serves no cluster with CA fingerprint %s (is the token for another cluster?)",
				member, pki.ErrFingerprintMismatch, caFingerprint)
		}
		return nil, fmt.Errorf("join %s: %w", member, err)
	}
	defer hresp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(hresp.Body, 4<<20))
	if err != nil {
		return nil, err
	}
	if hresp.StatusCode != http.StatusOK {
		var e struct {
			Error string `json:"error"`
		}
		if json.Unmarshal(raw, &e) == nil && e.Error != "" {
			return nil, fmt.Errorf("join refused by %s: %s", member, e.Error)
		}
		return nil, fmt.Errorf("join refused by %s: %s", member, hresp.Status)
	}
	var resp api.JoinResponse
	if err := json.Unmarshal(raw, &resp); err != nil {
		return nil, fmt.Errorf("join %s: malformed response: %w", member, err)
	}
	return &resp, nil
}
