package cloudlink

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/runos/runos-agent/cloudproto"
	"github.com/runos/runos-agent/pki"
	"github.com/runos/runos-agent/raftstore"
	"github.com/runos/runos-agent/seal"
)

// NormalizeURL adds https:// to a bare host:port and drops a trailing slash.
func NormalizeURL(u string) (string, error) {
	u = strings.TrimRight(strings.TrimSpace(u), "/")
	if u == "" {
		return "", errors.New("cloud URL is empty")
	}
	if !strings.Contains(u, "://") {
		u = "https://" + u
	}
	if !strings.HasPrefix(u, "https://") {
		return "", fmt.Errorf("cloud URL %q: only https:// is supported", u)
	}
	return u, nil
}

// Register exchanges a one-time registration token for a client
// certificate bound to the cluster's cloud ID. The server is verified by the
// CA fingerprint the token carries. The client key comes back sealed with
// dataKey, ready to be proposed to Raft.
func Register(ctx context.Context, cloudURL, token, clusterID string, dataKey seal.Sealer) (*raftstore.CloudRegistration, error) {
	u, err := NormalizeURL(cloudURL)
	if err != nil {
		return nil, err
	}
	tok, err := cloudproto.ParseRegToken(token)
	if err != nil {
		return nil, err
	}
	if clusterID == "" || dataKey == nil || dataKey.Current().IsZero() {
		return nil, errors.New("cloudlink: cluster ID and data key are required")
	}
	key, keyPEM, err := pki.NewKey()
	if err != nil {
		return nil, err
	}
	csr, err := pki.NewCSR(key, "runos-cluster")
	if err != nil {
		return nil, err
	}
	body, _ := json.Marshal(cloudproto.RegisterRequest{Token: token, CSR: string(csr), ClusterID: clusterID})
	hc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: pki.PinnedClientConfig(tok.CAFingerprint)}}
	defer hc.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u+cloudproto.RegisterPath, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("register with %s: %w", u, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusOK {
		var e struct {
			Error string `json:"error"`
		}
		if json.Unmarshal(b, &e) == nil && e.Error != "" {
			return nil, fmt.Errorf("cloud refused the registration: %s", e.Error)
		}
		return nil, fmt.Errorf("cloud refused the registration: %s", resp.Status)
	}
	var rr cloudproto.RegisterResponse
	if err := json.Unmarshal(b, &rr); err != nil {
		return nil, fmt.Errorf("cloud answered a malformed registration: %w", err)
	}
	ca, err := pki.ParseCert([]byte(rr.CACertPEM))
	if err != nil || pki.Fingerprint(ca) != tok.CAFingerprint {
		return nil, errors.New("cloud answered with a CA that does not match the token's fingerprint")
	}
	if _, err := tls.X509KeyPair([]byte(rr.ClientCertPEM), keyPEM); err != nil {
		return nil, fmt.Errorf("cloud answered a certificate that does not match our key: %w", err)
	}
	sealed, err := dataKey.Seal(raftstore.CloudKeyPurpose, keyPEM)
	if err != nil {
		return nil, err
	}
	return &raftstore.CloudRegistration{
		URL: u, CloudClusterID: rr.CloudClusterID, CAFingerprint: tok.CAFingerprint,
		CACertPEM: []byte(rr.CACertPEM), ClientCertPEM: []byte(rr.ClientCertPEM), ClientKeySealed: sealed,
	}, nil
}
