package templates

import (
	"fmt"
	"github.com/runos/runos-agent/templates/kapi"
	"strings"
)

const haproxyImage = "docker.io/library/haproxy:3.2.3"

// redisFlavor is Redis or Valkey: same protocol, config and sentinel.
type redisFlavor struct {
	name, title, image, version, bin string
}

func redisDef() *def {
	return redisLikeDef(redisFlavor{"redis", "Redis", "docker.io/library/redis", "8.2.1", "redis"})
}

func valkeyDef() *def {
	return redisLikeDef(redisFlavor{"valkey", "Valkey", "docker.io/valkey/valkey", "8.1.3", "valkey"})
}

func redisEnv(up string) []envSpec {
	e := []envSpec{{"REDIS_URL", "url"}, {"REDIS_HOST", "host"}, {"REDIS_PORT", "port"}, {"REDIS_PASSWORD", "password"}}
	if up != "REDIS" {
		e = append(e, envSpec{up + "_URL", "url"}, envSpec{up + "_HOST", "host"}, envSpec{up + "_PORT", "port"}, envSpec{up + "_PASSWORD", "password"})
	}
	return e
}

func redisLikeDef(f redisFlavor) *def {
	up := strings.ToUpper(f.name)
	return &def{
		svc: Service{
			Name: f.name, Title: f.title, Kind: "cache", Version: f.version,
			Description: f.title + " in-memory data store with append-only persistence.",
			Provides:    "redis",
		},
		image: f.image, port: 6379,
		storage: "2Gi", cpu: "100m", memory: "256Mi",
		haReplicas: 3, minHA: 3, maxHA: 7, odd: true,
		haOK: true,
		haNote: "one primary and replicas with a sentinel beside each (automatic failover, quorum of sentinels); " +
			"clients connect through HAProxy, which routes to the current primary",
		entNote: "redis_exporter sidecar, nightly RDB snapshot backup CronJob",
		backup:  true,
		extra: []setting{
			{Setting{Key: "maxmemory_policy", Default: "noeviction", Description: "eviction policy when maxmemory (75% of memory) is reached"},
				oneOf("noeviction", "allkeys-lru", "allkeys-lfu", "volatile-lru", "volatile-lfu", "allkeys-random", "volatile-random", "volatile-ttl")},
			{Setting{Key: "appendonly", Default: "yes", Description: "append-only file persistence (yes/no)"}, oneOf("yes", "no")},
		},
		creds:   []credSpec{{"password_default", "password"}},
		env:     redisEnv(up),
		metrics: metricsAt(9121, ""),
		connect: func(r *rc) Connection {
			p := r.creds["password_default"]
			h := r.host(f.name)
			return Connection{Host: h, Port: 6379, Password: p, URL: fmt.Sprintf("redis://:%s@%s:6379/0", p, h)}
		},
		render: func(r *rc) error { return renderRedis(r, f) },
	}
}

// redisStart writes the config (password from the Secret, never in the
// pod spec) and, at ha, finds the current primary from the sentinels.
const redisStart = `set -eu
cp /config/server.conf /work/server.conf
printf 'requirepass "%s"\nmasterauth "%s"\n' "$REDIS_PASSWORD" "$REDIS_PASSWORD" >> /work/server.conf
if [ "$HA" = "yes" ]; then
  self="$HOSTNAME.$HEADLESS"
  master=$(BIN-cli -h "$SENTINEL_HOST" -p 26379 --no-auth-warning -a "$REDIS_PASSWORD" sentinel get-master-addr-by-name mymaster 2>/dev/null | head -n1 || true)
  if [ -z "$master" ]; then master="$FIRST"; fi
  echo "replica-announce-ip $self" >> /work/server.conf
  if [ "$master" != "$self" ]; then echo "replicaof $master 6379" >> /work/server.conf; fi
fi
exec BIN-server /work/server.conf
`

const sentinelStart = `set -eu
self="$HOSTNAME.$HEADLESS"
master=$(BIN-cli -h "$SENTINEL_HOST" -p 26379 --no-auth-warning -a "$REDIS_PASSWORD" sentinel get-master-addr-by-name mymaster 2>/dev/null | head -n1 || true)
if [ -z "$master" ]; then master="$FIRST"; fi
until getent hosts "$master" >/dev/null; do echo "waiting for $master"; sleep 2; done
cat > /work/sentinel.conf <<EOF
port 26379
sentinel resolve-hostnames yes
sentinel announce-hostnames yes
sentinel announce-ip $self
sentinel monitor mymaster $master 6379 $QUORUM
sentinel auth-pass mymaster $REDIS_PASSWORD
sentinel sentinel-pass $REDIS_PASSWORD
sentinel down-after-milliseconds mymaster 5000
sentinel failover-timeout mymaster 60000
sentinel parallel-syncs mymaster 1
requirepass "$REDIS_PASSWORD"
EOF
exec BIN-server /work/sentinel.conf --sentinel
`

func renderRedis(r *rc, f redisFlavor) error {
	name, headless := f.name, f.name+"-headless"
	maxmem := r.memory.Value() * 3 / 4
	conf := fmt.Sprintf(`bind * -::*
port 6379
dir /data
appendonly %s
appendfsync everysec
save 900 1 300 100 60 10000
maxmemory %d
maxmemory-policy %s
protected-mode no
`, r.set["appendonly"], maxmem, r.set["maxmemory_policy"])
	r.configMap(name+"-config", name, map[string]string{"server.conf": conf})

	ha := "no"
	if r.ha() {
		ha = "yes"
	}
	common := []kapi.EnvVar{
		r.secretEnv("REDIS_PASSWORD", "password_default"),
		r.secretEnv("REDISCLI_AUTH", "password_default"),
		r.secretEnv("VALKEYCLI_AUTH", "password_default"),
		env("HA", ha),
		env("HEADLESS", headless+"."+r.ns+".svc.cluster.local"),
		env("FIRST", r.podHost(name, 0, headless)),
		env("SENTINEL_HOST", r.host(name+"-sentinel")),
		env("QUORUM", fmt.Sprint(r.replicas/2+1)),
	}
	bin := func(s string) string { return strings.ReplaceAll(s, "BIN", f.bin) }
	ping := bin(`BIN-cli -h 127.0.0.1 -p 6379 ping | grep -q PONG`)
	server := kapi.Container{
		Name:           "server",
		Image:          r.image,
		Command:        []string{"sh", "-c", bin(redisStart)},
		Env:            common,
		Ports:          []kapi.ContainerPort{port("redis", 6379)},
		StartupProbe:   shProbe(2, 3, 5, 60, ping),
		ReadinessProbe: shProbe(0, 5, 5, 3, ping),
		LivenessProbe:  shProbe(0, 10, 5, 6, ping),
		Resources:      r.resources(),
		VolumeMounts:   []kapi.VolumeMount{mount("data", "/data"), mount("config", "/config"), mount("work", "/work")},
	}
	spec := kapi.PodSpec{
		Containers: []kapi.Container{server},
		Volumes:    []kapi.Volume{configVolume("config", name+"-config", 0o644), emptyDir("work")},
	}
	ports := []kapi.ServicePort{svcPort("redis", 6379)}
	if r.ha() {
		sping := bin(`BIN-cli -h 127.0.0.1 -p 26379 ping | grep -q PONG`)
		spec.Containers = append(spec.Containers, kapi.Container{
			Name:           "sentinel",
			Image:          r.image,
			Command:        []string{"sh", "-c", bin(sentinelStart)},
			Env:            common,
			Ports:          []kapi.ContainerPort{port("sentinel", 26379)},
			ReadinessProbe: shProbe(5, 5, 5, 3, sping),
			LivenessProbe:  shProbe(30, 10, 5, 6, sping),
			Resources:      r.res(kapi.MustParseQuantity("50m"), kapi.MustParseQuantity("64Mi")),
			VolumeMounts:   []kapi.VolumeMount{mount("work", "/work")},
		})
		ports = append(ports, svcPort("sentinel", 26379))
	}
	if r.enterprise() {
		spec.Containers = append(spec.Containers, kapi.Container{
			Name:  "exporter",
			Image: "docker.io/oliver006/redis_exporter:v1.74.0",
			Env: []kapi.EnvVar{
				env("REDIS_ADDR", "redis://127.0.0.1:6379"),
				r.secretEnv("REDIS_PASSWORD", "password_default"),
			},
			Ports:          []kapi.ContainerPort{port("metrics", 9121)},
			ReadinessProbe: httpProbe("/health", "metrics", 5, 10, 3),
			Resources:      r.small(),
		})
	}
	r.headless(headless, name, ports...)
	if r.ha() {
		r.clientService(name+"-sentinel", name, nil, svcPort("sentinel", 26379))
		r.haproxyRedis(name, headless)
	} else {
		r.clientService(name, name, nil, svcPort("redis", 6379))
	}
	r.dataStatefulSet(name, headless, r.replicas, spec, false)
	r.pdb(name, r.replicas)
	r.backupJob(r.image, bin(`BIN-cli -h "$HOST" -p 6379 --no-auth-warning -a "$REDIS_PASSWORD" --rdb "/backup/`+r.d.svc.Name+`-$stamp.rdb"`),
		env("HOST", r.host(name)), r.secretEnv("REDIS_PASSWORD", "password_default"))
	return nil
}

// haproxyRedis renders two HAProxy replicas that send clients to whichever
// server answers "role:master", so plain Redis clients follow a failover.
func (r *rc) haproxyRedis(name, headless string) {
	var b strings.Builder
	b.WriteString(`global
  log stdout format raw local0 warning
  maxconn 4096
defaults
  mode tcp
  log global
  timeout connect 4s
  timeout client 330s
  timeout server 330s
  timeout check 2s
resolvers k8s
  parse-resolv-conf
  hold valid 5s
frontend health
  mode http
  bind :8404
  monitor-uri /healthz
frontend redis
  bind :6379
  default_backend primary
backend primary
  option tcp-check
  tcp-check connect
  tcp-check send "AUTH ${REDIS_PASSWORD}\r\n"
  tcp-check expect string +OK
  tcp-check send PING\r\n
  tcp-check expect string +PONG
  tcp-check send info\ replication\r\n
  tcp-check expect string role:master
  tcp-check send QUIT\r\n
  tcp-check expect string +OK
`)
	for i := range r.replicas {
		fmt.Fprintf(&b, "  server %s-%d %s:6379 check inter 1s fall 1 rise 1 resolvers k8s init-addr none on-marked-down shutdown-sessions\n",
			name, i, r.podHost(name, i, headless))
	}
	r.configMap("haproxy", "haproxy", map[string]string{"haproxy.cfg": b.String()})
	r.clientService(name, "haproxy", nil, svcPort("redis", 6379))
	dep := r.deployment("haproxy", "haproxy", 2, kapi.PodSpec{
		Containers: []kapi.Container{{
			Name:           "haproxy",
			Image:          haproxyImage,
			Args:           []string{"haproxy", "-f", "/usr/local/etc/haproxy/haproxy.cfg"},
			Env:            []kapi.EnvVar{r.secretEnv("REDIS_PASSWORD", "password_default")},
			Ports:          []kapi.ContainerPort{port("redis", 6379), port("health", 8404)},
			ReadinessProbe: httpProbe("/healthz", "health", 2, 5, 3),
			LivenessProbe:  httpProbe("/healthz", "health", 10, 10, 6),
			Resources:      r.res(kapi.MustParseQuantity("50m"), kapi.MustParseQuantity("64Mi")),
			VolumeMounts:   []kapi.VolumeMount{mount("config", "/usr/local/etc/haproxy")},
		}},
		Volumes: []kapi.Volume{configVolume("config", "haproxy", 0o644)},
	})
	// HAProxy does not reload a changed config; a new hash rolls the pods.
	if dep.Spec.Template.Annotations == nil {
		dep.Spec.Template.Annotations = map[string]string{}
	}
	dep.Spec.Template.Annotations["runos.io/config-hash"] = hash(b.String())
	r.pdb("haproxy", 2)
}
