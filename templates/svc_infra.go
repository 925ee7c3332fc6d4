package templates

import (
	"fmt"
	"github.com/runos/runos-agent/templates/kapi"
	"strings"
)

// curlImage runs small bootstrap and backup scripts against HTTP APIs
// (it has a shell, unlike distroless server images).
const curlImage = "docker.io/curlimages/curl:8.16.0"

func memcachedDef() *def {
	return &def{
		svc: Service{
			Name: "memcached", Title: "Memcached", Kind: "cache", Version: "1.6.39",
			Description: "Distributed memory cache. No authentication: memcached has none that common clients speak; reachable inside the cluster only.",
			Provides:    "memcached",
		},
		image: "docker.io/library/memcached", port: 11211,
		stateless: true, cpu: "100m", memory: "256Mi",
		haReplicas: 3, minHA: 2, maxHA: 9,
		haOK: true,
		haNote: "independent servers, clients shard keys over the pods of service memcached-headless " +
			"(MEMCACHED_SERVERS); losing one loses only its share of the cache",
		entNote: "memcached_exporter sidecar; no backup (a cache)",
		extra: []setting{
			{Setting{Key: "max_connections", Default: "1024", Description: "-c max simultaneous connections"}, intRange(16, 65536)},
		},
		env: []envSpec{
			{"MEMCACHED_HOST", "host"}, {"MEMCACHED_PORT", "port"}, {"MEMCACHED_SERVERS", "value:servers"},
		},
		values: func(r *rc) map[string]string {
			// Every server, for clients that shard keys over them.
			var s []string
			for i := range r.replicas {
				s = append(s, r.podHost("memcached", i, "memcached-headless")+":11211")
			}
			return map[string]string{"servers": strings.Join(s, ",")}
		},
		metrics: metricsAt(9150, ""),
		connect: func(r *rc) Connection {
			h := r.host("memcached")
			return Connection{Host: h, Port: 11211, URL: "memcache://" + h + ":11211"}
		},
		render: func(r *rc) error {
			// The cache gets 80% of the memory limit, the rest is
			// connection buffers and the process itself.
			mb := r.memoryMiB() * 4 / 5
			c := kapi.Container{
				Name:           "memcached",
				Image:          r.image,
				Args:           []string{"memcached", "-m", fmt.Sprint(mb), "-c", r.set["max_connections"], "-p", "11211", "-U", "0", "-v"},
				Ports:          []kapi.ContainerPort{port("memcached", 11211)},
				ReadinessProbe: tcpProbe("memcached", 2, 5, 3),
				LivenessProbe:  tcpProbe("memcached", 10, 10, 6),
				Resources:      r.resources(),
			}
			spec := kapi.PodSpec{Containers: []kapi.Container{c}}
			if r.enterprise() {
				spec.Containers = append(spec.Containers, kapi.Container{
					Name:           "exporter",
					Image:          "docker.io/prom/memcached-exporter:v0.15.3",
					Args:           []string{"--memcached.address=127.0.0.1:11211"},
					Ports:          []kapi.ContainerPort{port("metrics", 9150)},
					ReadinessProbe: httpProbe("/metrics", "metrics", 5, 10, 3),
					Resources:      r.small(),
				})
			}
			r.headless("memcached-headless", "memcached", svcPort("memcached", 11211))
			r.clientService("memcached", "memcached", nil, svcPort("memcached", 11211))
			r.statefulSet("memcached", "memcached", "memcached-headless", r.replicas, spec, true)
			r.pdb("memcached", r.replicas)
			return nil
		},
	}
}

func etcdDef() *def {
	return &def{
		svc: Service{
			Name: "etcd", Title: "etcd", Kind: "kv", Version: "v3.6.5",
			Description: "Consistent key-value store (Raft). Authentication on: user root.",
			Provides:    "etcd",
		},
		image: "quay.io/coreos/etcd", port: 2379,
		storage: "4Gi", cpu: "250m", memory: "512Mi",
		haReplicas: 3, minHA: 3, maxHA: 7, odd: true,
		haOK:    true,
		haNote:  "Raft cluster of 3/5/7 members (tolerates 1/2/3 failures); membership is fixed at creation",
		entNote: "native /metrics scraped, nightly snapshot backup CronJob",
		backup:  true,
		creds:   []credSpec{{"username", "user:root"}, {"root_password", "password"}},
		env: []envSpec{
			{"ETCD_ENDPOINTS", "url"}, {"ETCD_HOST", "host"}, {"ETCD_PORT", "port"},
			{"ETCD_USERNAME", "user"}, {"ETCD_PASSWORD", "password"},
		},
		metrics: metricsAt(2381, ""),
		connect: func(r *rc) Connection {
			h := r.host("etcd")
			return Connection{Host: h, Port: 2379, User: "root", Password: r.creds["root_password"],
				URL: "http://" + h + ":2379"}
		},
		render: renderEtcd,
	}
}

// etcdAuth turns authentication on once the cluster answers, through the
// v3 JSON gateway; it is idempotent (done when root can log in).
const etcdAuth = `set -eu
E="$ENDPOINT"
until curl -sf "$E/version" >/dev/null; do echo "waiting for $E"; sleep 2; done
body() { printf '{"name":"root","password":"%s"}' "$ROOT_PASSWORD"; }
if curl -sf -X POST "$E/v3/auth/authenticate" -d "$(body)" | grep -q token; then echo "auth already on"; exit 0; fi
curl -sf -X POST "$E/v3/auth/role/add" -d '{"name":"root"}' || true
curl -sf -X POST "$E/v3/auth/user/add" -d "$(body)" || true
curl -sf -X POST "$E/v3/auth/user/grant" -d '{"user":"root","role":"root"}' || true
curl -sf -X POST "$E/v3/auth/enable" -d '{}'
curl -sf -X POST "$E/v3/auth/authenticate" -d "$(body)" | grep -q token
echo "auth on"
`

func renderEtcd(r *rc) error {
	headless := "etcd-headless"
	var members []string
	for i := range r.replicas {
		members = append(members, fmt.Sprintf("etcd-%d=http://%s:2380", i, r.podHost("etcd", i, headless)))
	}
	self := "$(POD_NAME)." + headless + "." + r.ns + ".svc.cluster.local"
	quota := r.storage.Value() * 8 / 10
	if quota > 8<<30 {
		quota = 8 << 30 // etcd's documented maximum
	}
	c := kapi.Container{
		Name:    "etcd",
		Image:   r.image,
		Command: []string{"/usr/local/bin/etcd"},
		Env: []kapi.EnvVar{
			fieldEnv("POD_NAME", "metadata.name"),
			env("ETCD_NAME", "$(POD_NAME)"),
			env("ETCD_DATA_DIR", "/var/lib/etcd/data"),
			env("ETCD_LISTEN_PEER_URLS", "http://0.0.0.0:2380"),
			env("ETCD_LISTEN_CLIENT_URLS", "http://0.0.0.0:2379"),
			env("ETCD_LISTEN_METRICS_URLS", "http://0.0.0.0:2381"),
			env("ETCD_ADVERTISE_CLIENT_URLS", "http://"+self+":2379"),
			env("ETCD_INITIAL_ADVERTISE_PEER_URLS", "http://"+self+":2380"),
			env("ETCD_INITIAL_CLUSTER", strings.Join(members, ",")),
			env("ETCD_INITIAL_CLUSTER_STATE", "new"),
			env("ETCD_INITIAL_CLUSTER_TOKEN", r.inst.OSID),
			env("ETCD_AUTO_COMPACTION_MODE", "periodic"),
			env("ETCD_AUTO_COMPACTION_RETENTION", "1h"),
			env("ETCD_QUOTA_BACKEND_BYTES", fmt.Sprint(quota)),
			env("ETCD_AUTH_TOKEN", "simple"),
		},
		Ports:          []kapi.ContainerPort{port("client", 2379), port("peer", 2380), port("metrics", 2381)},
		StartupProbe:   httpProbe("/readyz", "metrics", 5, 5, 60),
		ReadinessProbe: httpProbe("/readyz", "metrics", 0, 5, 3),
		LivenessProbe:  httpProbe("/livez", "metrics", 0, 10, 6),
		Resources:      r.resources(),
		VolumeMounts:   []kapi.VolumeMount{mount("data", "/var/lib/etcd")},
	}
	r.headless(headless, "etcd", svcPort("client", 2379), svcPort("peer", 2380))
	r.clientService("etcd", "etcd", nil, svcPort("client", 2379))
	// Newer etcd images may run as the distroless nonroot user.
	gid := int64(65532)
	r.dataStatefulSet("etcd", headless, r.replicas, kapi.PodSpec{Containers: []kapi.Container{c},
		SecurityContext: &kapi.PodSecurityContext{FSGroup: &gid}}, true)
	r.pdb("etcd", r.replicas)
	r.bootstrapJob("enable-auth", curlImage, etcdAuth,
		env("ENDPOINT", "http://"+r.host("etcd")+":2379"), r.secretEnv("ROOT_PASSWORD", "root_password"))
	// etcd's image has no shell: etcdctl writes the snapshot in an init
	// container, the curl image's shell names and prunes it.
	r.backupJobWith(&kapi.Container{
		Name:         "snapshot",
		Image:        r.image,
		Command:      []string{"/usr/local/bin/etcdctl", "--endpoints=http://" + r.host("etcd") + ":2379", "--user=root:$(ROOT_PASSWORD)", "snapshot", "save", "/backup/incoming.db"},
		Env:          []kapi.EnvVar{r.secretEnv("ROOT_PASSWORD", "root_password")},
		Resources:    r.res(kapi.MustParseQuantity("250m"), kapi.MustParseQuantity("256Mi")),
		VolumeMounts: []kapi.VolumeMount{mount("backup", "/backup")},
	}, curlImage, `mv /backup/incoming.db "/backup/etcd-$stamp.db"`)
	return nil
}

func natsDef() *def {
	return &def{
		svc: Service{
			Name: "nats", Title: "NATS", Kind: "queue", Version: "2.11.8",
			Description: "Messaging with JetStream persistence. User app with a password.",
			Provides:    "nats",
		},
		image: "docker.io/library/nats", tagFormat: "%s-alpine", port: 4222,
		storage: "10Gi", cpu: "250m", memory: "512Mi",
		haReplicas: 3, minHA: 3, maxHA: 7, odd: true,
		haOK:    true,
		haNote:  "JetStream cluster (Raft) of 3/5/7 servers; streams with replicas=3 survive a server loss",
		entNote: "prometheus-nats-exporter sidecar; no backup job (use stream replicas and `nats stream backup`)",
		creds:   []credSpec{{"username", "user:app"}, {"password_app", "password"}, {"route_password", "password"}},
		env: []envSpec{
			{"NATS_URL", "url"}, {"NATS_HOST", "host"}, {"NATS_PORT", "port"}, {"NATS_USER", "user"}, {"NATS_PASSWORD", "password"},
		},
		metrics: metricsAt(7777, ""),
		connect: func(r *rc) Connection { return r.appUserConnection("nats", 4222, "nats", "") },
		render:  renderNATS,
	}
}

func renderNATS(r *rc) error {
	headless := "nats-headless"
	var b strings.Builder
	fmt.Fprintf(&b, `server_name: $SERVER_NAME
pid_file: "/work/nats.pid"
port: 4222
http_port: 8222
lame_duck_duration: 30s
lame_duck_grace_period: 10s
authorization {
  user: %q
  password: $NATS_PASSWORD
}
jetstream {
  store_dir: /data
  max_memory_store: %d
  max_file_store: %d
}
`, r.creds["username"], r.memory.Value()/2, r.storage.Value()*9/10)
	if r.replicas > 1 {
		var routes []string
		for i := range r.replicas {
			routes = append(routes, fmt.Sprintf("    nats://route:$ROUTE_PASSWORD@%s:6222", r.podHost("nats", i, headless)))
		}
		fmt.Fprintf(&b, `cluster {
  name: %q
  port: 6222
  authorization {
    user: route
    password: $ROUTE_PASSWORD
  }
  routes: [
%s
  ]
}
`, r.inst.OSID, strings.Join(routes, "\n"))
	}
	conf := b.String()
	// NATS only substitutes variables in whole values, not inside route
	// URLs: the start script fills the route password in.
	start := `set -eu
sed "s|\$ROUTE_PASSWORD@|$ROUTE_PASSWORD@|g" /config/nats.conf > /work/nats.conf
exec nats-server --config /work/nats.conf
`
	c := kapi.Container{
		Name:    "nats",
		Image:   r.image,
		Command: []string{"sh", "-c", start},
		Env: []kapi.EnvVar{
			fieldEnv("SERVER_NAME", "metadata.name"),
			r.secretEnv("NATS_PASSWORD", "password_app"),
			r.secretEnv("ROUTE_PASSWORD", "route_password"),
		},
		Ports:          []kapi.ContainerPort{port("client", 4222), port("cluster", 6222), port("monitor", 8222)},
		StartupProbe:   httpProbe("/healthz?js-enabled-only=true", "monitor", 5, 5, 60),
		ReadinessProbe: httpProbe("/healthz?js-server-only=true", "monitor", 0, 10, 3),
		LivenessProbe:  httpProbe("/healthz?js-enabled-only=true", "monitor", 0, 30, 3),
		Resources:      r.resources(),
		Lifecycle: &kapi.Lifecycle{PreStop: &kapi.LifecycleHandler{Exec: &kapi.ExecAction{
			Command: []string{"nats-server", "-sl=ldm=/work/nats.pid"}}}},
		VolumeMounts: []kapi.VolumeMount{mount("data", "/data"), mount("config", "/config"), mount("work", "/work")},
	}
	grace := int64(60)
	spec := kapi.PodSpec{
		Containers:                    []kapi.Container{c},
		Volumes:                       []kapi.Volume{configVolume("config", "nats-config", 0o644), emptyDir("work")},
		TerminationGracePeriodSeconds: &grace,
	}
	if r.enterprise() {
		spec.Containers = append(spec.Containers, kapi.Container{
			Name:           "exporter",
			Image:          "docker.io/natsio/prometheus-nats-exporter:0.17.3",
			Args:           []string{"-port=7777", "-varz", "-connz", "-routez", "-jsz=all", "http://127.0.0.1:8222"},
			Ports:          []kapi.ContainerPort{port("metrics", 7777)},
			ReadinessProbe: tcpProbe("metrics", 5, 10, 3),
			Resources:      r.small(),
		})
	}
	r.configMap("nats-config", "nats", map[string]string{"nats.conf": conf})
	r.headless(headless, "nats", svcPort("client", 4222), svcPort("cluster", 6222), svcPort("monitor", 8222))
	r.clientService("nats", "nats", nil, svcPort("client", 4222))
	r.dataStatefulSet("nats", headless, r.replicas, spec, true)
	r.pdb("nats", r.replicas)
	return nil
}
