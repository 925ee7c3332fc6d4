package kubehost

import (
	"encoding/json"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"
)

func testSpec() *Spec {
	return &Spec{
		ClusterID:     "c1",
		Version:       "v1.34.4",
		NodeName:      "node2",
		MeshIP:        netip.MustParseAddr("172.24.0.2"),
		PodCIDR:       netip.MustParsePrefix("172.25.2.0/24"),
		PodPrefix:     netip.MustParsePrefix("172.25.0.0/16"),
		ServiceCIDR:   netip.MustParsePrefix("10.96.0.0/12"),
		ClusterDomain: "cluster.local",
		Etcd:          &EtcdRole{Bootstrap: true, InitialCluster: "node2=https://172.24.0.2:2380", Voting: true},
	}
}

// The kubelet must serve only authenticated clients on the mesh IP and put
// pods on the node's own /24 with the agent's DNS: a pod reaching the
// node's mesh IP must not get an anonymous kubelet.
func TestKubeletConfigLocksDownTheKubelet(t *testing.T) {
	p := paths{dir: "/var/lib/runos-agent/kube"}
	b, err := kubeletConfig(p, testSpec(), cgroupRoot("node2"))
	if err != nil {
		t.Fatal(err)
	}
	var c struct {
		Address        string `json:"address"`
		ReadOnlyPort   int    `json:"readOnlyPort"`
		Authentication struct {
			Anonymous struct{ Enabled bool } `json:"anonymous"`
			X509      struct {
				ClientCAFile string `json:"clientCAFile"`
			} `json:"x509"`
		} `json:"authentication"`
		Authorization struct{ Mode string } `json:"authorization"`
		PodCIDR       string                `json:"podCIDR"`
		ClusterDNS    []string              `json:"clusterDNS"`
		CgroupRoot    string                `json:"cgroupRoot"`
		Runtime       string                `json:"containerRuntimeEndpoint"`
	}
	if err := json.Unmarshal(b, &c); err != nil {
		t.Fatal(err)
	}
	if c.Address != "172.24.0.2" || c.ReadOnlyPort != 0 || c.Authentication.Anonymous.Enabled ||
		c.Authorization.Mode != "Webhook" || c.Authentication.X509.ClientCAFile == "" {
		t.Errorf("kubelet reachable without a client certificate: %s", b)
	}
	if c.PodCIDR != "172.25.2.0/24" || !slices.Equal(c.ClusterDNS, []string{"172.24.0.2"}) {
		t.Errorf("pod network: podCIDR %q clusterDNS %v", c.PodCIDR, c.ClusterDNS)
	}
	if c.CgroupRoot != "/runos/node2" || !strings.HasPrefix(c.Runtime, "unix:///var/lib/runos-agent/kube/") {
		t.Errorf("cgroupRoot %q runtime %q", c.CgroupRoot, c.Runtime)
	}
}

// Pods keep their addresses across the mesh: no masquerade on the bridge,
// host-local addresses from the node's /24 with its first address as the
// gateway.
func TestCNIConfigUsesTheNodesRange(t *testing.T) {
	b, err := cniConfig(paths{dir: "/k"}, netip.MustParsePrefix("172.25.7.0/24"))
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	for _, want := range []string{`"subnet": "172.25.7.0/24"`, `"gateway": "172.25.7.1"`, `"ipMasq": false`, `"type": "host-local"`} {
		if !strings.Contains(s, want) {
			t.Errorf("CNI config lacks %s:\n%s", want, s)
		}
	}
}

func TestContainerdConfigWorksWithoutSysResource(t *testing.T) {
	c := containerdConfig(paths{dir: "/k"}, "runos.local/pause:1", "/usr/lib/cni")
	for _, want := range []string{"restrict_oom_score_adj = true", `sandbox_image = "runos.local/pause:1"`,
		"SystemdCgroup = false", `address = "/k/run/containerd.sock"`, `conf_dir = "/k/cni/net.d"`} {
		if !strings.Contains(c, want) {
			t.Errorf("containerd config lacks %s", want)
		}
	}
}

// etcd and the API server demand certificates; the API server reads its
// own node's member only, so its command line does not change with
// membership.
func TestControlPlaneArgs(t *testing.T) {
	p, s := paths{dir: "/k"}, testSpec()
	etcd := strings.Join(etcdArgs(p, s), " ")
	for _, want := range []string{"--client-cert-auth=true", "--peer-client-cert-auth=true", "--initial-cluster-state=new",
		"--initial-cluster=node2=https://172.24.0.2:2380", "--listen-peer-urls=https://172.24.0.2:2380"} {
		if !strings.Contains(etcd, want) {
			t.Errorf("etcd args lack %s", want)
		}
	}
	s.Etcd.Bootstrap = false
	if !slices.Contains(etcdArgs(p, s), "--initial-cluster-state=existing") {
		t.Error("a learner must join an existing cluster")
	}
	api := strings.Join(apiServerArgs(p, s), " ")
	for _, want := range []string{"--etcd-servers=https://127.0.0.1:2379", "--authorization-mode=Node,RBAC",
		"--kubelet-client-certificate=", "--service-cluster-ip-range=10.96.0.0/12", "--bind-address=172.24.0.2"} {
		if !strings.Contains(api, want) {
			t.Errorf("apiserver args lack %s", want)
		}
	}
	if !slices.Contains(controllerManagerArgs(p, s), "--allocate-node-cidrs=false") {
		t.Error("the controller manager must leave pod CIDRs to the agent")
	}
}

func TestVersionParsing(t *testing.T) {
	if v := parseKubeVersion("Kubernetes v1.34.4\n"); v != "v1.34.4" {
		t.Errorf("kube: %q", v)
	}
	if v := parseKubeVersion("something else"); v != "" {
		t.Errorf("garbage: %q", v)
	}
	if v := etcdVersion("etcd Version: 3.4.23\nGit SHA: Not provided\n"); v != "3.4.23" {
		t.Errorf("etcd: %q", v)
	}
	if v := containerdVersion("containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+b1\n"); v != "1.6.20~ds1" {
		t.Errorf("containerd: %q", v)
	}
}

// Only the node's own pods are masqueraded, and only towards the world:
// pod-to-pod and pod-to-mesh traffic keeps its source.
func TestEgressRules(t *testing.T) {
	c := egressChain(netip.MustParsePrefix("172.25.3.0/24"), []netip.Prefix{netip.MustParsePrefix("172.25.0.0/16"), netip.MustParsePrefix("172.24.0.0/16")})
	want := [][]string{
		{"-d", "172.25.0.0/16", "-j", "RETURN"},
		{"-d", "172.24.0.0/16", "-j", "RETURN"},
		{"-s", "172.25.3.0/24", "-j", "MASQUERADE"},
	}
	if c.Table != "nat" || c.From != "POSTROUTING" || c.First || !reflect.DeepEqual(c.Rules, want) {
		t.Errorf("egress chain: %+v\nwant rules %v", c, want)
	}
}
