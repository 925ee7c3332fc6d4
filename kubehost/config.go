package kubehost

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
)

// Files and directories of one node's Kubernetes, under Config.Dir
// (<data dir>/kube). Everything a component reads is written here by the
// agent; nothing outside it is configured (Kubernetes itself still writes a
// few host paths: /var/log/pods, /var/lib/cni, /run/containerd/s).
type paths struct{ dir string }

func (p paths) pki(name string) string     { return filepath.Join(p.dir, "pki", name) }
func (p paths) etc(name string) string     { return filepath.Join(p.dir, "etc", name) }
func (p paths) log() string                { return filepath.Join(p.dir, "log") }
func (p paths) run(name string) string     { return filepath.Join(p.dir, "run", name) }
func (p paths) containerdRoot() string     { return filepath.Join(p.dir, "containerd", "root") }
func (p paths) containerdState() string    { return filepath.Join(p.dir, "containerd", "state") }
func (p paths) containerdOpt() string      { return filepath.Join(p.dir, "containerd", "opt") }
func (p paths) containerdSock() string     { return p.run("containerd.sock") }
func (p paths) containerdTTRPC() string    { return p.run("containerd-ttrpc.sock") }
func (p paths) cniConfDir() string         { return filepath.Join(p.dir, "cni", "net.d") }
func (p paths) cniIPAMDir() string         { return filepath.Join(p.dir, "cni", "ipam") }
func (p paths) kubeletRoot() string        { return filepath.Join(p.dir, "kubelet") }
func (p paths) etcdData() string           { return filepath.Join(p.dir, "etcd") }
func (p paths) imports() string            { return filepath.Join(p.dir, "images") }
func (p paths) kubeconfig(u string) string { return p.etc(u + ".kubeconfig") }

// maxSocketPath is the longest unix socket path Linux takes (sun_path is
// 108 bytes with the terminating NUL), less a margin.
const maxSocketPath = 100

// Ports of the managed components (the RunOS address plan).
const (
	APIServerPort  = 6443
	EtcdClientPort = 2379
	EtcdPeerPort   = 2380
	KubeletPort    = 10250
)

// containerdConfig is containerd 1.6's config (version 2) for one node: its
// own root, state, sockets and opt dir, so several nodes share a machine in
// tests, and the CRI plugin with cgroupfs runc and the agent's CNI config.
// restrict_oom_score_adj: without CAP_SYS_RESOURCE (containers, some VMs)
// runc cannot lower the sandbox's oom_score_adj and every pod fails.
func containerdConfig(p paths, sandboxImage, cniBinDir string) string {
	q := func(s string) string { b, _ := json.Marshal(s); return string(b) }
	return fmt.Sprintf(`# Written by runos-agent; changes are overwritten.
version = 2
root = %s
state = %s

[grpc]
  address = %s

[ttrpc]
  address = %s

[plugins."io.containerd.internal.v1.opt"]
  path = %s

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %s
  restrict_oom_score_adj = true
  enable_selinux = false

[plugins."io.containerd.grpc.v1.cri".containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
  SystemdCgroup = false

[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = %s
  conf_dir = %s
`, q(p.containerdRoot()), q(p.containerdState()), q(p.containerdSock()), q(p.containerdTTRPC()),
		q(p.containerdOpt()), q(sandboxImage), q(cniBinDir), q(p.cniConfDir()))
}

// cniConfig puts pods on a bridge with the node's /24. No masquerade: a pod
// keeps its address across the mesh, and every node routes the other
// nodes' /24s into wg0, so pods reach each other without an overlay.
func cniConfig(p paths, podCIDR netip.Prefix) ([]byte, error) {
	gw := podCIDR.Masked().Addr().Next()
	conf := map[string]any{
		"cniVersion": "0.4.0",
		"name":       "runos",
		"plugins": []any{
			map[string]any{
				"type":        "bridge",
				"bridge":      bridgeName,
				"isGateway":   true,
				"ipMasq":      false,
				"hairpinMode": true,
				"ipam": map[string]any{
					"type":    "host-local",
					"ranges":  [][]map[string]string{{{"subnet": podCIDR.Masked().String(), "gateway": gw.String()}}},
					"routes":  []map[string]string{{"dst": "0.0.0.0/0"}},
					"dataDir": p.cniIPAMDir(),
				},
			},
			map[string]any{"type": "portmap", "capabilities": map[string]bool{"portMappings": true}},
		},
	}
	return json.MarshalIndent(conf, "", "  ")
}

// kubeletConfig is the KubeletConfiguration (JSON is valid YAML). The
// kubelet serves on the mesh IP only, with client certificates (no
// anonymous access) and webhook authorisation, so a pod reaching the
// node's mesh IP gets nothing from it.
func kubeletConfig(p paths, s *Spec, cgroupRoot string) ([]byte, error) {
	conf := map[string]any{
		"apiVersion": "kubelet.config.k8s.io/v1beta1",
		"kind":       "KubeletConfiguration",
		"address":    s.MeshIP.String(),
		"port":       KubeletPort,
		// 0 turns the unauthenticated read-only port off.
		"readOnlyPort": 0,
		"authentication": map[string]any{
			"anonymous": map[string]bool{"enabled": false},
			"webhook":   map[string]bool{"enabled": true},
			"x509":      map[string]string{"clientCAFile": p.pki("ca.crt")},
		},
		"authorization":            map[string]string{"mode": "Webhook"},
		"tlsCertFile":              p.pki("kubelet-serving.crt"),
		"tlsPrivateKeyFile":        p.pki("kubelet-serving.key"),
		"containerRuntimeEndpoint": "unix://" + p.containerdSock(),
		"cgroupDriver":             "cgroupfs",
		"cgroupRoot":               cgroupRoot,
		"failCgroupV1":             false,
		"failSwapOn":               false,
		"podCIDR":                  s.PodCIDR.Masked().String(),
		"clusterDNS":               []string{s.MeshIP.String()},
		"clusterDomain":            s.ClusterDomain,
		"healthzBindAddress":       "127.0.0.1",
		"healthzPort":              10248,
		"resolvConf":               "/etc/resolv.conf",
		"registerNode":             true,
		// Home-lab disks run fuller than a cloud node's; the defaults
		// (10–15 % free) would taint a node whose disk is fine.
		"evictionHard": map[string]string{
			"memory.available":  "50Mi",
			"nodefs.available":  "2%",
			"imagefs.available": "2%",
			"nodefs.inodesFree": "2%",
		},
		"imageGCHighThresholdPercent": 95,
		"imageGCLowThresholdPercent":  90,
	}
	return json.MarshalIndent(conf, "", "  ")
}

// kubeProxyConfig runs kube-proxy in iptables mode for ClusterIP Services.
// Zero conntrack settings leave the host's sysctls alone.
func kubeProxyConfig(p paths, s *Spec, podPrefix netip.Prefix) ([]byte, error) {
	conf := map[string]any{
		"apiVersion":         "kubeproxy.config.k8s.io/v1alpha1",
		"kind":               "KubeProxyConfiguration",
		"clientConnection":   map[string]string{"kubeconfig": p.kubeconfig("kube-proxy")},
		"mode":               "iptables",
		"clusterCIDR":        podPrefix.String(),
		"hostnameOverride":   s.NodeName,
		"bindAddress":        s.MeshIP.String(),
		"healthzBindAddress": "127.0.0.1:10256",
		"metricsBindAddress": "127.0.0.1:10249",
		"conntrack": map[string]any{
			"maxPerCore":            0,
			"min":                   0,
			"tcpEstablishedTimeout": "0s",
			"tcpCloseWaitTimeout":   "0s",
		},
	}
	return json.MarshalIndent(conf, "", "  ")
}

func containerdArgs(p paths) []string {
	return []string{"--config", p.etc("containerd.toml")}
}

func kubeletArgs(p paths, s *Spec) []string {
	return []string{
		"--config=" + p.etc("kubelet.json"),
		"--kubeconfig=" + p.kubeconfig("kubelet"),
		"--node-ip=" + s.MeshIP.String(),
		"--hostname-override=" + s.NodeName,
		"--root-dir=" + p.kubeletRoot(),
		"--cert-dir=" + p.pki("kubelet"),
		"--v=1",
	}
}

func kubeProxyArgs(p paths) []string {
	return []string{"--config=" + p.etc("kube-proxy.json"), "--v=1"}
}

// etcdArgs: the member listens for clients on its mesh IP and loopback, for
// peers on its mesh IP only; both demand certificates from the etcd CA.
// The initial-cluster flags only matter on the first start (etcd ignores
// them once its data dir exists) but are kept so the command line, which
// the supervisor compares to adopt a running member, stays the same.
func etcdArgs(p paths, s *Spec) []string {
	ip := s.MeshIP.String()
	state := "existing"
	if s.Etcd.Bootstrap {
		state = "new"
	}
	return []string{
		"--name=" + s.NodeName,
		"--data-dir=" + p.etcdData(),
		"--listen-client-urls=https://" + ip + ":2379,https://127.0.0.1:2379",
		"--advertise-client-urls=https://" + ip + ":2379",
		"--listen-peer-urls=https://" + ip + ":2380",
		"--initial-advertise-peer-urls=https://" + ip + ":2380",
		"--initial-cluster=" + s.Etcd.InitialCluster,
		"--initial-cluster-state=" + state,
		"--initial-cluster-token=" + s.ClusterID,
		"--client-cert-auth=true",
		"--trusted-ca-file=" + p.pki("etcd-ca.crt"),
		"--cert-file=" + p.pki("etcd-server.crt"),
		"--key-file=" + p.pki("etcd-server.key"),
		"--peer-client-cert-auth=true",
		"--peer-trusted-ca-file=" + p.pki("etcd-ca.crt"),
		"--peer-cert-file=" + p.pki("etcd-peer.crt"),
		"--peer-key-file=" + p.pki("etcd-peer.key"),
		"--listen-metrics-urls=http://127.0.0.1:2381",
		"--snapshot-count=10000",
		"--logger=zap",
	}
}

// apiServerArgs: each API server talks to its own node's etcd member only
// (the agent runs it only where that member votes), so its command line
// does not change when other members come and go.
func apiServerArgs(p paths, s *Spec) []string {
	ip := s.MeshIP.String()
	return []string{
		"--advertise-address=" + ip,
		"--bind-address=" + ip,
		fmt.Sprintf("--secure-port=%d", APIServerPort),
		"--etcd-servers=https://127.0.0.1:2379",
		"--etcd-cafile=" + p.pki("etcd-ca.crt"),
		"--etcd-certfile=" + p.pki("apiserver-etcd-client.crt"),
		"--etcd-keyfile=" + p.pki("apiserver-etcd-client.key"),
		"--client-ca-file=" + p.pki("ca.crt"),
		"--tls-cert-file=" + p.pki("apiserver.crt"),
		"--tls-private-key-file=" + p.pki("apiserver.key"),
		"--kubelet-client-certificate=" + p.pki("apiserver-kubelet-client.crt"),
		"--kubelet-client-key=" + p.pki("apiserver-kubelet-client.key"),
		"--kubelet-certificate-authority=" + p.pki("ca.crt"),
		"--kubelet-preferred-address-types=InternalIP",
		"--service-account-issuer=https://kubernetes.default.svc." + s.ClusterDomain,
		"--service-account-key-file=" + p.pki("sa.pub"),
		"--service-account-signing-key-file=" + p.pki("sa.key"),
		"--service-cluster-ip-range=" + s.ServiceCIDR.String(),
		"--authorization-mode=Node,RBAC",
		"--enable-admission-plugins=NodeRestriction",
		"--allow-privileged=true",
		// Pods and local users reach the mesh IP: no request without a
		// credential gets anywhere, not even /version.
		"--anonymous-auth=false",
		"--profiling=false",
		"--v=1",
	}
}

func controllerManagerArgs(p paths, s *Spec) []string {
	kc := p.kubeconfig("controller-manager")
	return []string{
		"--kubeconfig=" + kc,
		"--authentication-kubeconfig=" + kc,
		"--authorization-kubeconfig=" + kc,
		"--bind-address=127.0.0.1",
		"--leader-elect=true",
		// Pod CIDRs are the agent's: every node's /24 comes from Raft.
		"--allocate-node-cidrs=false",
		"--service-cluster-ip-range=" + s.ServiceCIDR.String(),
		"--service-account-private-key-file=" + p.pki("sa.key"),
		"--root-ca-file=" + p.pki("ca.crt"),
		"--use-service-account-credentials=true",
		"--profiling=false",
		"--v=1",
	}
}

func schedulerArgs(p paths) []string {
	kc := p.kubeconfig("scheduler")
	return []string{
		"--kubeconfig=" + kc,
		"--authentication-kubeconfig=" + kc,
		"--authorization-kubeconfig=" + kc,
		"--bind-address=127.0.0.1",
		"--leader-elect=true",
		"--profiling=false",
		"--v=1",
	}
}

// parseKubeVersion takes "Kubernetes v1.34.4" (what every Kubernetes
// binary's --version prints) and returns "v1.34.4".
func parseKubeVersion(out string) string {
	f := strings.Fields(out)
	if len(f) >= 2 && f[0] == "Kubernetes" {
		return f[1]
	}
	return ""
}
