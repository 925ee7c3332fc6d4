package templates

import (
	"fmt"
	"github.com/runos/runos-agent/templates/kapi"
	"strings"
)

// --- ZooKeeper ---

func zookeeperDef() *def {
	return &def{
		svc: Service{
			Name: "zookeeper", Title: "Apache ZooKeeper", Kind: "coordination", Version: "3.9.3",
			Description: "Coordination service (official image). No authentication (ZooKeeper's SASL needs per-client JAAS): " +
				"reachable inside the cluster only.",
			Provides: "zookeeper",
		},
		image: "docker.io/library/zookeeper", port: 2181,
		storage: "4Gi", cpu: "250m", memory: "512Mi",
		haReplicas: 3, minHA: 3, maxHA: 7, odd: true,
		haOK:    true,
		haNote:  "ensemble of 3/5/7 servers (majority quorum); membership is fixed at creation",
		entNote: "native Prometheus metrics provider scraped; no backup job (replicated, snapshots on each server)",
		env: []envSpec{
			{"ZOOKEEPER_CONNECT", "hostport"}, {"ZOOKEEPER_HOST", "host"}, {"ZOOKEEPER_PORT", "port"},
		},
		metrics: metricsAt(7000, "/metrics"),
		connect: func(r *rc) Connection {
			h := r.host("zookeeper")
			return Connection{Host: h, Port: 2181, URL: "zk://" + h + ":2181"}
		},
		render: func(r *rc) error {
			headless := "zookeeper-headless"
			var servers []string
			for i := range r.replicas {
				servers = append(servers, fmt.Sprintf("server.%d=%s:2888:3888;2181", i+1, r.podHost("zookeeper", i, headless)))
			}
			heap := r.memoryMiB() * 3 / 4
			c := kapi.Container{
				Name:    "zookeeper",
				Image:   r.image,
				Command: []string{"bash", "-c", "export ZOO_MY_ID=$(( ${HOSTNAME##*-} + 1 ))\nmkdir -p /data/datalog\nexec /docker-entrypoint.sh zkServer.sh start-foreground"},
				Env: []kapi.EnvVar{
					env("ZOO_SERVERS", strings.Join(servers, " ")),
					// The transaction log stays on the volume with the snapshots.
					env("ZOO_DATA_LOG_DIR", "/data/datalog"),
					env("ZOO_STANDALONE_ENABLED", fmt.Sprint(r.replicas == 1)),
					env("ZOO_4LW_COMMANDS_WHITELIST", "ruok,srvr,mntr"),
					env("ZOO_ADMINSERVER_ENABLED", "true"),
					env("ZOO_AUTOPURGE_PURGEINTERVAL", "24"),
					env("ZOO_AUTOPURGE_SNAPRETAINCOUNT", "5"),
					env("ZOO_CFG_EXTRA", "quorumListenOnAllIPs=true metricsProvider.className=org.apache.zookeeper.metrics.prometheus.PrometheusMetricsProvider metricsProvider.httpPort=7000"),
					env("JVMFLAGS", fmt.Sprintf("-Xmx%dm", heap)),
				},
				Ports: []kapi.ContainerPort{port("client", 2181), port("quorum", 2888), port("election", 3888),
					port("admin", 8080), port("metrics", 7000)},
				StartupProbe:   httpProbe("/commands/ruok", "admin", 5, 5, 60),
				ReadinessProbe: tcpProbe("client", 0, 10, 3),
				LivenessProbe:  httpProbe("/commands/ruok", "admin", 0, 10, 6),
				Resources:      r.resources(),
				VolumeMounts:   []kapi.VolumeMount{mount("data", "/data")},
			}
			spec := kapi.PodSpec{Containers: []kapi.Container{c}}
			r.headless(headless, "zookeeper", svcPort("client", 2181), svcPort("quorum", 2888), svcPort("election", 3888))
			r.clientService("zookeeper", "zookeeper", nil, svcPort("client", 2181))
			r.dataStatefulSet("zookeeper", headless, r.replicas, spec, true)
			r.pdb("zookeeper", r.replicas)
			return nil
		},
	}
}

// --- Mosquitto ---

func mosquittoDef() *def {
	return &def{
		svc: Service{
			Name: "mosquitto", Title: "Eclipse Mosquitto", Kind: "queue", Version: "2.0.22",
			Description: "MQTT broker with persistence and a password (user app).",
			Provides:    "mqtt",
		},
		image: "docker.io/library/eclipse-mosquitto", port: 1883,
		storage: "2Gi", cpu: "100m", memory: "128Mi",
		haNote:  "single broker at every tier: Mosquitto has no clustering (bridges copy topics, they do not fail over)",
		entNote: "no exporter or backup job",
		creds:   []credSpec{{"username", "user:app"}, {"password_app", "password"}},
		env: []envSpec{
			{"MQTT_URL", "url"}, {"MQTT_HOST", "host"}, {"MQTT_PORT", "port"}, {"MQTT_USER", "user"}, {"MQTT_PASSWORD", "password"},
		},
		connect: func(r *rc) Connection { return r.appUserConnection("mosquitto", 1883, "mqtt", "") },
		render: func(r *rc) error {
			conf := `listener 1883
allow_anonymous false
password_file /mosquitto/work/passwd
persistence true
persistence_location /mosquitto/data/
autosave_interval 60
log_dest stdout
`
			r.configMap("mosquitto-config", "mosquitto", map[string]string{"mosquitto.conf": conf})
			// The password file holds a hash; it is made at start from
			// the Secret, readable by the broker's user only.
			start := `set -eu
touch /mosquitto/work/passwd
mosquitto_passwd -b /mosquitto/work/passwd "$MQTT_USER" "$MQTT_PASSWORD"
chown -R mosquitto:mosquitto /mosquitto/work /mosquitto/data
chmod 0700 /mosquitto/work/passwd
unset MQTT_PASSWORD
exec mosquitto -c /mosquitto/config/mosquitto.conf
`
			c := kapi.Container{
				Name:    "mosquitto",
				Image:   r.image,
				Command: []string{"sh", "-c", start},
				Env: []kapi.EnvVar{
					r.secretEnv("MQTT_USER", "username"),
					r.secretEnv("MQTT_PASSWORD", "password_app"),
				},
				Ports:          []kapi.ContainerPort{port("mqtt", 1883)},
				ReadinessProbe: tcpProbe("mqtt", 2, 5, 3),
				LivenessProbe:  tcpProbe("mqtt", 10, 10, 6),
				Resources:      r.resources(),
				VolumeMounts: []kapi.VolumeMount{mount("data", "/mosquitto/data"), mount("config", "/mosquitto/config"),
					mount("work", "/mosquitto/work")},
			}
			spec := kapi.PodSpec{
				Containers: []kapi.Container{c},
				Volumes:    []kapi.Volume{configVolume("config", "mosquitto-config", 0o644), emptyDir("work")},
			}
			r.headless("mosquitto-headless", "mosquitto", svcPort("mqtt", 1883))
			r.clientService("mosquitto", "mosquitto", nil, svcPort("mqtt", 1883))
			r.dataStatefulSet("mosquitto", "mosquitto-headless", 1, spec, false)
			return nil
		},
	}
}

// --- Qdrant ---

func qdrantDef() *def {
	return &def{
		svc: Service{
			Name: "qdrant", Title: "Qdrant", Kind: "search", Version: "v1.15.4",
			Description: "Vector database with an API key.",
			Provides:    "qdrant",
		},
		image: "docker.io/qdrant/qdrant", port: 6333,
		storage: "10Gi", cpu: "250m", memory: "1Gi",
		haReplicas: 3, minHA: 3, maxHA: 7, odd: true,
		haOK: true,
		haNote: "distributed mode: 3/5/7 peers with Raft consensus on cluster state; data survives a peer loss for " +
			"collections created with replication_factor >= 2",
		entNote: "no exporter (its /metrics needs the API key) or backup job (use the snapshot API)",
		creds:   []credSpec{{"api_key", "token"}},
		env: []envSpec{
			{"QDRANT_URL", "key:url"}, {"QDRANT_HOST", "host"}, {"QDRANT_PORT", "port"},
			{"QDRANT_GRPC_PORT", "const:6334"}, {"QDRANT_API_KEY", "key:api_key"},
		},
		connect: func(r *rc) Connection {
			h := r.host("qdrant")
			return Connection{Host: h, Port: 6333, Password: r.creds["api_key"], URL: "http://" + h + ":6333"}
		},
		render: func(r *rc) error {
			headless := "qdrant-headless"
			// Peer 0 starts the cluster, the others join it; on restarts
			// every peer finds the cluster state on its volume.
			start := `set -eu
cd /qdrant
self="http://$HOSTNAME.$HEADLESS:6335"
if [ "$CLUSTER" != "true" ]; then exec ./qdrant; fi
if [ "${HOSTNAME##*-}" = "0" ]; then exec ./qdrant --uri "$self"; fi
exec ./qdrant --bootstrap "$FIRST" --uri "$self"
`
			c := kapi.Container{
				Name:    "qdrant",
				Image:   r.image,
				Command: []string{"sh", "-c", start},
				Env: []kapi.EnvVar{
					r.secretEnv("QDRANT__SERVICE__API_KEY", "api_key"),
					env("QDRANT__CLUSTER__ENABLED", fmt.Sprint(r.replicas > 1)),
					env("CLUSTER", fmt.Sprint(r.replicas > 1)),
					env("HEADLESS", headless+"."+r.ns+".svc.cluster.local"),
					env("FIRST", "http://"+r.podHost("qdrant", 0, headless)+":6335"),
					env("QDRANT__TELEMETRY_DISABLED", "true"),
				},
				Ports:          []kapi.ContainerPort{port("http", 6333), port("grpc", 6334), port("p2p", 6335)},
				StartupProbe:   httpProbe("/healthz", "http", 5, 5, 60),
				ReadinessProbe: httpProbe("/readyz", "http", 0, 10, 3),
				LivenessProbe:  httpProbe("/livez", "http", 0, 10, 6),
				Resources:      r.resources(),
				VolumeMounts:   []kapi.VolumeMount{mount("data", "/qdrant/storage"), mount("snapshots", "/qdrant/snapshots")},
			}
			spec := kapi.PodSpec{Containers: []kapi.Container{c}, Volumes: []kapi.Volume{emptyDir("snapshots")}}
			r.headless(headless, "qdrant", svcPort("http", 6333), svcPort("grpc", 6334), svcPort("p2p", 6335))
			r.clientService("qdrant", "qdrant", nil, svcPort("http", 6333), svcPort("grpc", 6334))
			r.dataStatefulSet("qdrant", headless, r.replicas, spec, true)
			r.pdb("qdrant", r.replicas)
			return nil
		},
	}
}

// --- CouchDB ---

func couchdbDef() *def {
	return &def{
		svc: Service{
			Name: "couchdb", Title: "Apache CouchDB", Kind: "database", Version: "3.5.0",
			Description: "Document database with an HTTP API (single node, admin user app).",
			Provides:    "couchdb",
		},
		image: "docker.io/library/couchdb", port: 5984,
		storage: "10Gi", cpu: "250m", memory: "512Mi",
		haNote:  "single node at every tier: a CouchDB cluster needs a setup step (membership, shard placement) not done here",
		entNote: "nightly export of every database's documents as JSON",
		backup:  true,
		creds:   []credSpec{{"username", "user:app"}, {"password_app", "password"}, {"cookie_secret", "token"}},
		env: []envSpec{
			{"COUCHDB_URL", "url"}, {"COUCHDB_HOST", "host"}, {"COUCHDB_PORT", "port"},
			{"COUCHDB_USER", "user"}, {"COUCHDB_PASSWORD", "password"},
		},
		connect: func(r *rc) Connection { return r.appUserConnection("couchdb", 5984, "http", "") },
		render: func(r *rc) error {
			r.configMap("couchdb-config", "couchdb", map[string]string{"10-runos.ini": `[couchdb]
single_node = true
max_document_size = 8000000

[chttpd]
bind_address = 0.0.0.0
port = 5984
`})
			c := kapi.Container{
				Name:  "couchdb",
				Image: r.image,
				Env: []kapi.EnvVar{
					r.secretEnv("COUCHDB_USER", "username"),
					r.secretEnv("COUCHDB_PASSWORD", "password_app"),
					r.secretEnv("COUCHDB_SECRET", "cookie_secret"),
				},
				Ports:          []kapi.ContainerPort{port("http", 5984)},
				StartupProbe:   httpProbe("/_up", "http", 5, 5, 60),
				ReadinessProbe: httpProbe("/_up", "http", 0, 10, 3),
				LivenessProbe:  httpProbe("/_up", "http", 0, 10, 6),
				Resources:      r.resources(),
				// A file, not the directory: the image's entrypoint writes
				// the admin's hash into local.d.
				VolumeMounts: []kapi.VolumeMount{mount("data", "/opt/couchdb/data"),
					{Name: "config", MountPath: "/opt/couchdb/etc/local.d/10-runos.ini", SubPath: "10-runos.ini"}},
			}
			spec := kapi.PodSpec{Containers: []kapi.Container{c}, Volumes: []kapi.Volume{configVolume("config", "couchdb-config", 0o644)}}
			r.headless("couchdb-headless", "couchdb", svcPort("http", 5984))
			r.clientService("couchdb", "couchdb", nil, svcPort("http", 5984))
			r.dataStatefulSet("couchdb", "couchdb-headless", 1, spec, false)
			r.backupJob(curlImage, `mkdir -p /tmp/out
for db in $(curl -sf -u "$U:$P" "http://$HOST:5984/_all_dbs" | tr -d '[]"' | tr ',' ' '); do
  case "$db" in _*) continue;; esac
  curl -sf -u "$U:$P" "http://$HOST:5984/$db/_all_docs?include_docs=true&attachments=true" -o "/tmp/out/$db.json"
done
tar -czf "/backup/couchdb-$stamp.tar.gz" -C /tmp/out .`,
				env("HOST", r.host("couchdb")), r.secretEnv("U", "username"), r.secretEnv("P", "password_app"))
			return nil
		},
	}
}

// --- Neo4j ---

func neo4jDef() *def {
	return &def{
		svc: Service{
			Name: "neo4j", Title: "Neo4j", Kind: "database", Version: "5.26.12",
			Description: "Graph database, community edition (user neo4j).",
			Provides:    "neo4j",
		},
		image: "docker.io/library/neo4j", port: 7687,
		storage: "10Gi", cpu: "500m", memory: "2Gi",
		haNote:  "single instance at every tier: clustering is a Neo4j Enterprise feature",
		entNote: "native Prometheus metrics are Enterprise-only; no online backup in community edition",
		creds:   []credSpec{{"username", "user:neo4j"}, {"neo4j_password", "password"}},
		env: []envSpec{
			{"NEO4J_URI", "key:url"}, {"NEO4J_HOST", "host"}, {"NEO4J_PORT", "port"},
			{"NEO4J_USERNAME", "user"}, {"NEO4J_PASSWORD", "password"},
		},
		connect: func(r *rc) Connection {
			h := r.host("neo4j")
			return Connection{Host: h, Port: 7687, User: "neo4j", Password: r.creds["neo4j_password"], URL: "bolt://" + h + ":7687"}
		},
		render: func(r *rc) error {
			// Heap 40%, page cache 40% of the memory setting.
			mem := r.memoryMiB() * 2 / 5
			c := kapi.Container{
				Name:  "neo4j",
				Image: r.image,
				Env: []kapi.EnvVar{
					r.secretEnv("NEO4J_PASSWORD", "neo4j_password"),
					env("NEO4J_AUTH", "neo4j/$(NEO4J_PASSWORD)"),
					env("NEO4J_server_memory_heap_initial__size", fmt.Sprintf("%dm", mem)),
					env("NEO4J_server_memory_heap_max__size", fmt.Sprintf("%dm", mem)),
					env("NEO4J_server_memory_pagecache_size", fmt.Sprintf("%dm", mem)),
					env("NEO4J_server_default__listen__address", "0.0.0.0"),
				},
				Ports:          []kapi.ContainerPort{port("bolt", 7687), port("http", 7474)},
				StartupProbe:   tcpProbe("bolt", 10, 5, 60),
				ReadinessProbe: tcpProbe("bolt", 0, 10, 3),
				LivenessProbe:  httpProbe("/", "http", 0, 10, 6),
				Resources:      r.resources(),
				VolumeMounts:   []kapi.VolumeMount{mount("data", "/data")},
			}
			r.headless("neo4j-headless", "neo4j", svcPort("bolt", 7687), svcPort("http", 7474))
			r.clientService("neo4j", "neo4j", nil, svcPort("bolt", 7687), svcPort("http", 7474))
			r.dataStatefulSet("neo4j", "neo4j-headless", 1, kapi.PodSpec{Containers: []kapi.Container{c}}, false)
			return nil
		},
	}
}

// --- Cassandra ---

func cassandraDef() *def {
	return &def{
		svc: Service{
			Name: "cassandra", Title: "Apache Cassandra", Kind: "database", Version: "5.0.5",
			Description: "Wide-column database with password authentication; keyspace app; local datacenter dc1.",
			Provides:    "cassandra",
		},
		image: "docker.io/library/cassandra", port: 9042,
		storage: "20Gi", cpu: "500m", memory: "2Gi",
		haReplicas: 3, minHA: 3, maxHA: 9,
		haOK: true,
		haNote: "3..9 nodes; keyspace app and system_auth replicated 3 times, so QUORUM reads and writes survive a node loss; " +
			"nodes join one at a time",
		entNote: "no exporter or backup job (nodetool snapshots are per node)",
		creds: []credSpec{
			{"username", "user:app"}, {"password_app", "password"}, {"keyspace", "db:app"}, {"cassandra_password", "password"},
		},
		env: []envSpec{
			{"CASSANDRA_CONTACT_POINTS", "host"}, {"CASSANDRA_HOST", "host"}, {"CASSANDRA_PORT", "port"},
			{"CASSANDRA_USERNAME", "user"}, {"CASSANDRA_PASSWORD", "password"}, {"CASSANDRA_KEYSPACE", "database"},
			{"CASSANDRA_LOCAL_DC", "const:dc1"},
		},
		connect: func(r *rc) Connection {
			h := r.host("cassandra")
			u, p, ks := r.creds["username"], r.creds["password_app"], r.creds["keyspace"]
			return Connection{Host: h, Port: 9042, User: u, Password: p, Database: ks,
				URL: fmt.Sprintf("cassandra://%s:%s@%s:9042/%s", u, p, h, ks)}
		},
		render: renderCassandra,
	}
}

// cassandraStart turns on password authentication (both the 4.x and the
// 5.x cassandra.yaml forms name the class) and runs the image's entrypoint.
const cassandraStart = `set -eu
sed -i -e 's/AllowAllAuthenticator/PasswordAuthenticator/' -e 's/AllowAllAuthorizer/CassandraAuthorizer/' /etc/cassandra/cassandra.yaml
exec docker-entrypoint.sh cassandra -f
`

// cassandraAuth waits for every node that will hold a replica, then, in
// one session of the default superuser (whose role row still has one
// replica), replicates system_auth and creates the app role and keyspace;
// the app role then disables the default superuser. Re-runs finish
// whatever is left.
const cassandraAuth = `set -eu
app() { cqlsh "$HOST" -u "$APP_USER" -p "$APP_PASSWORD" "$@"; }
finish() {
  app -e "CREATE KEYSPACE IF NOT EXISTS $KEYSPACE WITH replication = {'class': 'NetworkTopologyStrategy', 'dc1': $RF}"
  app -e "ALTER ROLE cassandra WITH PASSWORD = '$CASSANDRA_PASSWORD' AND SUPERUSER = false AND LOGIN = false"
  echo "set up"; exit 0
}
if app -e "SELECT release_version FROM system.local" >/dev/null 2>&1; then finish; fi
peers() {
  out=$(cqlsh "$HOST" -u cassandra -p cassandra -e "SELECT peer FROM system.peers" 2>/dev/null) || { echo -1; return; }
  printf '%s\n' "$out" | grep -c '^ *[0-9a-f]' || true
}
until [ "$(peers)" -ge $((RF - 1)) ]; do
  echo "waiting for $RF nodes"; sleep 5
done
cqlsh "$HOST" -u cassandra -p cassandra <<CQL
ALTER KEYSPACE system_auth WITH replication = {'class': 'NetworkTopologyStrategy', 'dc1': $RF};
CREATE ROLE IF NOT EXISTS $APP_USER WITH PASSWORD = '$APP_PASSWORD' AND SUPERUSER = true AND LOGIN = true;
CQL
until app -e "SELECT release_version FROM system.local" >/dev/null 2>&1; do sleep 5; done
finish
`

func renderCassandra(r *rc) error {
	headless := "cassandra-headless"
	seeds := []string{r.podHost("cassandra", 0, headless)}
	if r.replicas > 1 {
		seeds = append(seeds, r.podHost("cassandra", 1, headless))
	}
	rf := min(r.replicas, 3)
	heap := r.memoryMiB() / 2
	c := kapi.Container{
		Name:    "cassandra",
		Image:   r.image,
		Command: []string{"bash", "-c", cassandraStart},
		Env: []kapi.EnvVar{
			env("CASSANDRA_CLUSTER_NAME", r.inst.OSID),
			env("CASSANDRA_SEEDS", strings.Join(seeds, ",")),
			env("CASSANDRA_DC", "dc1"),
			env("CASSANDRA_RACK", "rack1"),
			env("CASSANDRA_ENDPOINT_SNITCH", "GossipingPropertyFileSnitch"),
			env("CASSANDRA_NUM_TOKENS", "16"),
			env("MAX_HEAP_SIZE", fmt.Sprintf("%dM", heap)),
			env("HEAP_NEWSIZE", fmt.Sprintf("%dM", heap/4)),
		},
		Ports:          []kapi.ContainerPort{port("cql", 9042), port("intra", 7000)},
		StartupProbe:   tcpProbe("cql", 20, 10, 60),
		ReadinessProbe: tcpProbe("cql", 0, 10, 3),
		LivenessProbe:  tcpProbe("intra", 0, 15, 6),
		Lifecycle: &kapi.Lifecycle{PreStop: &kapi.LifecycleHandler{Exec: &kapi.ExecAction{
			Command: []string{"nodetool", "drain"}}}},
		Resources:    r.resources(),
		VolumeMounts: []kapi.VolumeMount{mount("data", "/var/lib/cassandra")},
	}
	grace := int64(120)
	spec := kapi.PodSpec{Containers: []kapi.Container{c}, TerminationGracePeriodSeconds: &grace}
	r.headless(headless, "cassandra", svcPort("cql", 9042), svcPort("intra", 7000))
	r.clientService("cassandra", "cassandra", nil, svcPort("cql", 9042))
	// Ordered start: Cassandra nodes must join the ring one at a time.
	r.dataStatefulSet("cassandra", headless, r.replicas, spec, false)
	r.pdb("cassandra", r.replicas)
	r.bootstrapJob("setup-auth", r.image, cassandraAuth,
		env("HOST", r.host("cassandra")), env("RF", fmt.Sprint(rf)),
		r.secretEnv("APP_USER", "username"), r.secretEnv("APP_PASSWORD", "password_app"),
		r.secretEnv("KEYSPACE", "keyspace"), r.secretEnv("CASSANDRA_PASSWORD", "cassandra_password"))
	return nil
}
