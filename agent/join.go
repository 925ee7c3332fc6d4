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
	"time"

	"github.com/runos/runos-agent/datadir"
	"github.com/runos/runos-agent/mesh"
	"github.com/runos/runos-agent/pki"
	"github.com/runos/runos-agent/raftstore"
	"github.com/runos/runos-agent/seal"
)

const maxJoinBody = 64 << 10

// joinRequest is what a joiner sends to a member's underlay TCP port.
type joinRequest struct {
	Token     string   `json:"token"`
	Name      string   `json:"name"`
	NodeID    string   `json:"node_id"`
	PublicKey string   `json:"public_key"` // WireGuard
	CSR       []byte   `json:"csr"`        // PEM
	Endpoints []string `json:"endpoints"`
	Version   string   `json:"version"`
}

// joinResponse carries everything the joiner needs to run from its data dir.
type joinResponse struct {
	ClusterID string            `json:"cluster_id"`
	Node      *raftstore.Node   `json:"node"`
	CertPEM   []byte            `json:"cert_pem"`
	CACertPEM []byte            `json:"ca_cert_pem"`
	Peers     []*raftstore.Node `json:"peers"`
	DataKey   string            `json:"data_key"` // seal.Key; the TLS session is pinned to the cluster CA
}

// handleJoin admits a node: it checks the request, signs the CSR, then
// commits "consume token + allocate addresses + add node" as one Raft
// command. A certificate signed for a join that then fails is harmless: its
// serial is in no node record, so every member refuses it.
func (a *Agent) handleJoin(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || r.URL.Path != "/v1/join" {
		httpError(w, http.StatusNotFound, errors.New("not found"))
		return
	}
	var req joinRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxJoinBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		httpError(w, http.StatusBadRequest, fmt.Errorf("malformed join request: %w", err))
		return
	}
	tok, err := datadir.ParseToken(req.Token)
	if err != nil {
		httpError(w, http.StatusForbidden, err)
		return
	}
	if tok.CAFingerprint != a.cfg.CAFingerprint {
		httpError(w, http.StatusForbidden, errors.New("join token belongs to another cluster"))
		return
	}
	if !datadir.ValidName(req.Name) {
		httpError(w, http.StatusBadRequest, fmt.Errorf("invalid node name %q", req.Name))
		return
	}
	if !datadir.ValidNodeID(req.NodeID) {
		httpError(w, http.StatusBadRequest, errors.New("invalid node id"))
		return
	}
	if k, err := mesh.ParseKey(req.PublicKey); err != nil || k.IsZero() {
		httpError(w, http.StatusBadRequest, errors.New("invalid wireguard public key"))
		return
	}
	if len(req.Endpoints) > 16 {
		httpError(w, http.StatusBadRequest, errors.New("too many endpoints"))
		return
	}
	for _, ep := range req.Endpoints {
		if _, _, err := net.SplitHostPort(ep); err != nil {
			httpError(w, http.StatusBadRequest, fmt.Errorf("invalid endpoint %q", ep))
			return
		}
	}
	st, _ := a.store.State()
	ca, err := pki.ParseCA(st.CACertPEM, st.CAKeyPEM)
	if err != nil {
		httpError(w, http.StatusServiceUnavailable, errors.New("this member has no cluster state yet; try again"))
		return
	}
	certPEM, serial, err := ca.SignCSR(req.CSR, req.Name, nil, datadir.NodeCertValidity)
	if err != nil {
		httpError(w, http.StatusBadRequest, fmt.Errorf("bad certificate request: %w", err))
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), writeTimeout)
	defer cancel()
	res, err := a.store.Apply(ctx, &raftstore.Command{
		Op: raftstore.OpJoin,
		Join: &raftstore.JoinCmd{
			TokenID: tok.ID, SecretHash: pki.HashSecret(tok.Secret),
			NodeID: req.NodeID, Name: req.Name, PublicKey: req.PublicKey,
			Endpoints: req.Endpoints, CertSerial: serial, Version: req.Version,
		},
	})
	if err != nil {
		httpError(w, http.StatusServiceUnavailable, err)
		return
	}
	if err := res.Error(); err != nil {
		code := http.StatusForbidden
		if errors.Is(err, raftstore.ErrNameTaken) || errors.Is(err, raftstore.ErrKeyTaken) {
			code = http.StatusConflict
		}
		httpError(w, code, err)
		return
	}
	a.log.Info("node joined", "name", req.Name, "mesh_ip", res.Node.MeshIP, "pod_cidr", res.Node.PodCIDR)
	peers := []*raftstore.Node{}
	st, _ = a.store.State()
	for _, n := range st.SortedNodes() {
		if n.ID != res.Node.ID {
			peers = append(peers, n)
		}
	}
	writeJSONResponse(w, http.StatusOK, joinResponse{
		ClusterID: st.ClusterID, Node: res.Node, CertPEM: certPEM, CACertPEM: st.CACertPEM, Peers: peers,
		DataKey: a.dataKey.String(),
	})
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
	req := joinRequest{
		Token: opts.Token, Name: opts.Name, NodeID: datadir.NewNodeID(),
		PublicKey: wgKey.PublicKey().String(), CSR: csr, Endpoints: opts.Advertise, Version: Version,
	}
	resp, err := postJoin(ctx, member, tok.CAFingerprint, req)
	if err != nil {
		return nil, err
	}
	cert, err := pki.ParseCert(resp.CertPEM)
	if err != nil || resp.Node == nil || resp.Node.CertSerial != pki.SerialOf(cert) {
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
	if err := datadir.SavePeers(opts.DataDir, append(resp.Peers, resp.Node)); err != nil {
		return nil, err
	}
	if err := datadir.WriteJSON(filepath.Join(opts.DataDir, datadir.FileConfig), cfg, 0o600); err != nil {
		return nil, err
	}
	return cfg, nil
}

func postJoin(ctx context.Context, member, caFingerprint string, req joinRequest) (*joinResponse, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	client := &http.Client{
		Timeout: writeTimeout + 10*time.Second,
		Transport: &http.Transport{
			TLSClientConfig:     pki.PinnedClientConfig(caFingerprint),
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
	var resp joinResponse
	if err := json.Unmarshal(raw, &resp); err != nil {
		return nil, fmt.Errorf("join %s: malformed response: %w", member, err)
	}
	return &resp, nil
}

func httpError(w http.ResponseWriter, code int, err error) {
	writeJSONResponse(w, code, map[string]string{"error": err.Error()})
}

func writeJSONResponse(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}
