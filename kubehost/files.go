package kubehost

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/runos/runos-agent/kubehost/kpki"
	"github.com/runos/runos-agent/kubehost/ociimage"
)

// filesRecheck is how often the files are checked again under an
// unchanged spec: a certificate nearing expiry is reissued, a file removed
// by hand comes back.
const filesRecheck = time.Hour

// filesKeyFor hashes everything writeFiles and prepareCgroups read from
// the spec and the config: equal keys mean equal files.
func (h *Host) filesKeyFor(s *Spec) string {
	sum := sha256.New()
	fmt.Fprintf(sum, "%s\x00%s\x00%s\x00%s\x00%s\x00%s\x00%s\x00%s\x00%s\x00%s\x00%s\x00%t\x00%t\x00",
		s.ClusterID, s.Version, s.NodeName, s.MeshIP, s.PodCIDR, s.PodPrefix, s.ServiceCIDR, s.ClusterDomain,
		h.cfg.APIListen, h.cfg.CNIBinDir, h.p.dir, s.Etcd != nil, s.ControlPlane())
	for _, ca := range []*kpki.CA{s.CA, s.EtcdCA} {
		if ca != nil {
			fmt.Fprintf(sum, "%d\x00", len(ca.CertPEM))
			sum.Write(ca.CertPEM)
		}
	}
	fmt.Fprintf(sum, "%d\x00", len(s.SAKeyPEM))
	sum.Write(s.SAKeyPEM)
	return hex.EncodeToString(sum.Sum(nil))
}

// syncFiles runs writeFiles and prepareCgroups when the spec changed or
// filesRecheck passed, and reports whether it did.
func (h *Host) syncFiles(s *Spec) (bool, error) {
	key := h.filesKeyFor(s)
	if key == h.filesKey && time.Since(h.filesAt) < filesRecheck {
		return false, nil
	}
	clear(h.fileSums)
	h.filesKey = ""
	if err := h.writeFiles(s); err != nil {
		return true, err
	}
	if err := h.cgroups(cgroupRoot(s.NodeName)); err != nil {
		h.log.Warn("preparing cgroups", "err", err)
	}
	h.filesKey, h.filesAt = key, time.Now()
	return true, nil
}

// writeFiles makes the node's certificates, kubeconfigs and component
// configs match the spec. Certificates are issued here, on the node, from
// the CAs in the cluster state (every member can open them, as it can the
// cluster CA), and only when missing, expiring or lacking a name.
func (h *Host) writeFiles(s *Spec) error {
	p := h.p
	for _, d := range []string{p.dir, filepath.Dir(p.pki("x")), filepath.Dir(p.etc("x")), p.log(), filepath.Dir(p.run("x")),
		p.cniConfDir(), p.cniIPAMDir(), p.kubeletRoot(), p.containerdRoot(), p.containerdState(), p.containerdOpt()} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return err
		}
	}
	if s.CA == nil || s.EtcdCA == nil {
		return fmt.Errorf("kubehost: the spec has no CA")
	}
	if err := writeIfChanged(p.pki("ca.crt"), s.CA.CertPEM, 0o644); err != nil {
		return err
	}
	if err := writeIfChanged(p.pki("etcd-ca.crt"), s.EtcdCA.CertPEM, 0o644); err != nil {
		return err
	}

	server := "https://" + h.cfg.APIListen
	type kubeconfigCert struct {
		file, user string
		req        kpki.Request
	}
	certs := []certSpec{
		{s.CA, "kubelet-serving", kpki.KubeletServing(s.NodeName, s.MeshIP)},
	}
	kubeconfigs := []kubeconfigCert{
		{"kubelet", "system:node:" + s.NodeName, kpki.KubeletClient(s.NodeName)},
		{"kube-proxy", "system:kube-proxy", kpki.KubeProxy()},
	}
	if s.Etcd != nil {
		certs = append(certs,
			certSpec{s.EtcdCA, "etcd-server", kpki.EtcdServer(s.NodeName, s.MeshIP)},
			certSpec{s.EtcdCA, "etcd-peer", kpki.EtcdPeer(s.NodeName, s.MeshIP)},
		)
	}
	if s.ControlPlane() {
		serviceIP := s.ServiceCIDR.Masked().Addr().Next()
		certs = append(certs,
			certSpec{s.CA, "apiserver", kpki.APIServerServing(s.MeshIP, serviceIP, s.ClusterDomain)},
			certSpec{s.CA, "apiserver-kubelet-client", kpki.APIServerKubeletClient()},
			certSpec{s.EtcdCA, "apiserver-etcd-client", kpki.APIServerEtcdClient()},
		)
		kubeconfigs = append(kubeconfigs,
			kubeconfigCert{"controller-manager", "system:kube-controller-manager", kpki.ControllerManager()},
			kubeconfigCert{"scheduler", "system:kube-scheduler", kpki.Scheduler()},
		)
		if err := writeIfChanged(p.pki("sa.key"), s.SAKeyPEM, 0o600); err != nil {
			return err
		}
		pub, err := kpki.ServiceAccountPublic(s.SAKeyPEM)
		if err != nil {
			return fmt.Errorf("service account key: %w", err)
		}
		if err := writeIfChanged(p.pki("sa.pub"), pub, 0o644); err != nil {
			return err
		}
	}
	for _, c := range certs {
		if _, _, err := ensureCert(c.ca, p.pki(c.name), c.req); err != nil {
			return fmt.Errorf("%s certificate: %w", c.name, err)
		}
	}
	for _, k := range kubeconfigs {
		cert, key, err := ensureCert(s.CA, p.pki(k.file+"-client"), k.req)
		if err != nil {
			return fmt.Errorf("%s client certificate: %w", k.file, err)
		}
		if err := writeIfChanged(p.kubeconfig(k.file), kpki.Kubeconfig(server, s.CA.CertPEM, cert, key, k.user), 0o600); err != nil {
			return err
		}
	}

	files := map[string]func() ([]byte, error){
		p.etc("containerd.toml"): func() ([]byte, error) {
			return []byte(containerdConfig(p, sandboxImage, h.cfg.CNIBinDir)), nil
		},
		filepath.Join(p.cniConfDir(), "10-runos.conflist"): func() ([]byte, error) { return cniConfig(p, s.PodCIDR) },
		p.etc("kubelet.json"):                              func() ([]byte, error) { return kubeletConfig(p, s, cgroupRoot(s.NodeName)) },
		p.etc("kube-proxy.json"):                           func() ([]byte, error) { return kubeProxyConfig(p, s, s.PodPrefix) },
	}
	for path, render := range files {
		b, err := render()
		if err != nil {
			return err
		}
		if err := writeIfChanged(path, b, 0o600); err != nil {
			return err
		}
	}
	return nil
}

// sandboxImage is the pod sandbox ("pause") image: made by the agent from
// busybox and imported into containerd, so no registry is ever needed.
const sandboxImage = ociimage.PauseRef

// certSpec is a certificate file pair: pki/<name>.{crt,key}.
type certSpec struct {
	ca   *kpki.CA
	name string
	req  kpki.Request
}

// ensureCert keeps base.crt/base.key a certificate for r signed by ca.
func ensureCert(ca *kpki.CA, base string, r kpki.Request) (cert, key []byte, err error) {
	cert, _ = os.ReadFile(base + ".crt")
	key, _ = os.ReadFile(base + ".key")
	if len(key) > 0 && !kpki.NeedsReissue(cert, ca.Cert, r) {
		return cert, key, nil
	}
	if cert, key, err = ca.Issue(r); err != nil {
		return nil, nil, err
	}
	if err := writeIfChanged(base+".key", key, 0o600); err != nil {
		return nil, nil, err
	}
	if err := writeIfChanged(base+".crt", cert, 0o644); err != nil {
		return nil, nil, err
	}
	return cert, key, nil
}

// writeIfChanged replaces path atomically when its content differs, so a
// component never reads half a file and an unchanged file keeps its mtime.
func writeIfChanged(path string, data []byte, mode os.FileMode) error {
	if cur, err := os.ReadFile(path); err == nil && bytes.Equal(cur, data) {
		return nil
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return err
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return err
	}
	if err := tmp.Close(); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// AdminKubeconfig issues a cluster-admin credential for a person (the
// `kube kubeconfig` command) against server.
func AdminKubeconfig(ca *kpki.CA, server, user string) ([]byte, error) {
	cert, key, err := ca.Issue(kpki.Admin(user))
	if err != nil {
		return nil, err
	}
	return kpki.Kubeconfig(server, ca.CertPEM, cert, key, user), nil
}
