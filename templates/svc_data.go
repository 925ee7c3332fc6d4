package templates

import (
	"fmt"
	"github.com/runos/runos-agent/templates/kapi"
	"regexp"
	"strings"
)

// --- ClickHouse ---

func clickhouseDef() *def {
	return &def{
		svc: Service{
			Name: "clickhouse", Title: "ClickHouse", Kind: "analytics", Version: "25.8.8.26",
			Description: "Column-oriented analytics database (official image). Database app; at ha it is a Replicated database.",
			Provides:    "clickhouse",
		},
		image: "docker.io/clickhouse/clickhouse-server", port: 8123,
		storage: "20Gi", cpu: "500m", memory: "2Gi",
		haReplicas: 3, minHA: 3, maxHA: 7, odd: true,
		haOK: true,
		haNote: "3/5/7 replicas with embedded ClickHouse Keeper (Raft); database app uses the Replicated engine, so its tables " +
			"(MergeTree becomes ReplicatedMergeTree) and DDL replicate to every node; other databases are per node",
		entNote: "native Prometheus endpoint scraped; no backup job (replicas hold the copies)",
		creds: []credSpec{
			{"username", "user:app"}, {"password_app", "password"}, {"dbname", "db:app"},
			{"interserver_password", "password"}, {"cluster_secret", "password"},
		},
		env: []envSpec{
			{"CLICKHOUSE_URL", "url"}, {"CLICKHOUSE_HOST", "host"}, {"CLICKHOUSE_PORT", "port"},
			{"CLICKHOUSE_NATIVE_PORT", "const:9000"},
			{"CLICKHOUSE_USER", "user"}, {"CLICKHOUSE_PASSWORD", "password"}, {"CLICKHOUSE_DB", "database"},
		},
		metrics: metricsAt(9363, ""),
		connect: func(r *rc) Connection {
			h := r.host("clickhouse")
			u, p, db := r.creds["username"], r.creds["password_app"], r.creds["dbname"]
			return Connection{Host: h, Port: 8123, User: u, Password: p, Database: db,
				URL: fmt.Sprintf("http://%s:%s@%s:8123/%s", u, p, h, db)}
		},
		render: renderClickHouse,
	}
}

const clickhouseStart = `set -eu
export KEEPER_ID=$(( ${HOSTNAME##*-} + 1 ))
export SELF="$HOSTNAME.$HEADLESS"
exec /entrypoint.sh
`

// clickhouseDB creates the Replicated database on the cluster once the
// servers answer; IF NOT EXISTS makes it idempotent.
const clickhouseDB = `set -eu
until curl -sf "$ENDPOINT/ping" >/dev/null; do echo "waiting for $ENDPOINT"; sleep 3; done
q="CREATE DATABASE IF NOT EXISTS $APP_DB ON CLUSTER default ENGINE = Replicated('/clickhouse/databases/$APP_DB', '{shard}', '{replica}')"
until curl -sf -u "$APP_USER:$APP_PASSWORD" "$ENDPOINT/" --data-binary "$q"; do echo "retrying"; sleep 5; done
echo "database $APP_DB ready"
`

func renderClickHouse(r *rc) error {
	headless := "clickhouse-headless"
	var b strings.Builder
	b.WriteString(`<clickhouse>
  <listen_host>0.0.0.0</listen_host>
  <max_server_memory_usage_to_ram_ratio>0.8</max_server_memory_usage_to_ram_ratio>
  <prometheus>
    <endpoint>/metrics</endpoint>
    <port>9363</port>
    <metrics>true</metrics>
    <events>true</events>
    <asynchronous_metrics>true</asynchronous_metrics>
  </prometheus>
`)
	if r.replicas > 1 {
		b.WriteString(`  <interserver_http_host from_env="SELF"/>
  <interserver_http_credentials>
    <user>interserver</user>
    <password from_env="INTERSERVER_PASSWORD"/>
  </interserver_http_credentials>
  <macros>
    <shard>1</shard>
    <replica from_env="HOSTNAME"/>
  </macros>
  <remote_servers replace="true">
    <default>
      <secret from_env="CLUSTER_SECRET"/>
      <shard>
        <internal_replication>true</internal_replication>
`)
		for i := range r.replicas {
			fmt.Fprintf(&b, "        <replica><host>%s</host><port>9000</port></replica>\n", r.podHost("clickhouse", i, headless))
		}
		b.WriteString(`      </shard>
    </default>
  </remote_servers>
  <keeper_server>
    <tcp_port>9181</tcp_port>
    <server_id from_env="KEEPER_ID"/>
    <log_storage_path>/var/lib/clickhouse/coordination/log</log_storage_path>
    <snapshot_storage_path>/var/lib/clickhouse/coordination/snapshots</snapshot_storage_path>
    <coordination_settings>
      <operation_timeout_ms>10000</operation_timeout_ms>
      <session_timeout_ms>30000</session_timeout_ms>
    </coordination_settings>
    <raft_configuration>
`)
		for i := range r.replicas {
			fmt.Fprintf(&b, "      <server><id>%d</id><hostname>%s</hostname><port>9234</port></server>\n", i+1, r.podHost("clickhouse", i, headless))
		}
		b.WriteString("    </raft_configuration>\n  </keeper_server>\n  <zookeeper>\n")
		for i := range r.replicas {
			fmt.Fprintf(&b, "    <node><host>%s</host><port>9181</port></node>\n", r.podHost("clickhouse", i, headless))
		}
		b.WriteString("  </zookeeper>\n  <distributed_ddl><path>/clickhouse/task_queue/ddl</path></distributed_ddl>\n")
	}
	b.WriteString("</clickhouse>\n")
	r.configMap("clickhouse-config", "clickhouse", map[string]string{"runos.xml": b.String()})

	envs := []kapi.EnvVar{
		env("HEADLESS", headless+"."+r.ns+".svc.cluster.local"),
		r.secretEnv("CLICKHOUSE_USER", "username"),
		r.secretEnv("CLICKHOUSE_PASSWORD", "password_app"),
		env("CLICKHOUSE_DEFAULT_ACCESS_MANAGEMENT", "1"),
		r.secretEnv("INTERSERVER_PASSWORD", "interserver_password"),
		r.secretEnv("CLUSTER_SECRET", "cluster_secret"),
	}
	if r.replicas == 1 {
		// Single node: the image's entrypoint creates the database.
		envs = append(envs, r.secretEnv("CLICKHOUSE_DB", "dbname"))
	}
	ports := []kapi.ContainerPort{port("http", 8123), port("native", 9000), port("metrics", 9363)}
	if r.replicas > 1 {
		ports = append(ports, port("interserver", 9009), port("keeper", 9181), port("raft", 9234))
	}
	c := kapi.Container{
		Name:           "clickhouse",
		Image:          r.image,
		Command:        []string{"bash", "-c", clickhouseStart},
		Env:            envs,
		Ports:          ports,
		StartupProbe:   httpProbe("/ping", "http", 5, 5, 60),
		ReadinessProbe: httpProbe("/ping", "http", 0, 10, 3),
		LivenessProbe:  httpProbe("/ping", "http", 0, 10, 6),
		Resources:      r.resources(),
		VolumeMounts: []kapi.VolumeMount{mount("data", "/var/lib/clickhouse"),
			{Name: "config", MountPath: "/etc/clickhouse-server/config.d/runos.xml", SubPath: "runos.xml"}},
	}
	spec := kapi.PodSpec{
		Containers: []kapi.Container{c},
		Volumes:    []kapi.Volume{configVolume("config", "clickhouse-config", 0o644)},
	}
	svcPorts := []kapi.ServicePort{svcPort("http", 8123), svcPort("native", 9000)}
	hp := svcPorts
	if r.replicas > 1 {
		hp = append(hp, svcPort("interserver", 9009), svcPort("keeper", 9181), svcPort("raft", 9234))
	}
	r.headless(headless, "clickhouse", hp...)
	r.clientService("clickhouse", "clickhouse", nil, svcPorts...)
	r.dataStatefulSet("clickhouse", headless, r.replicas, spec, true)
	r.pdb("clickhouse", r.replicas)
	if r.replicas > 1 {
		r.bootstrapJob("create-database", curlImage, clickhouseDB,
			env("ENDPOINT", "http://"+r.host("clickhouse")+":8123"),
			r.secretEnv("APP_USER", "username"), r.secretEnv("APP_PASSWORD", "password_app"), r.secretEnv("APP_DB", "dbname"))
	}
	return nil
}

// --- OpenSearch ---

func opensearchDef() *def {
	return &def{
		svc: Service{
			Name: "opensearch", Title: "OpenSearch", Kind: "search", Version: "3.2.0",
			Description: "Search and analytics engine with the security plugin (HTTPS with the image's demo certificates, user admin). " +
				"The demo certificates are public: they encrypt but do not authenticate; bring your own PKI for untrusted networks.",
			Provides: "opensearch",
		},
		image: "docker.io/opensearchproject/opensearch", port: 9200,
		storage: "20Gi", cpu: "500m", memory: "2Gi",
		haReplicas: 3, minHA: 3, maxHA: 7, odd: true,
		haOK:    true,
		haNote:  "cluster of 3/5/7 cluster-manager-eligible data nodes; indices keep 1 replica by default",
		entNote: "no exporter or backup job (snapshots need a repository: S3 or a shared filesystem)",
		creds:   []credSpec{{"username", "user:admin"}, {"admin_password", "complex-password"}},
		env: []envSpec{
			{"OPENSEARCH_URL", "url"}, {"OPENSEARCH_HOST", "host"}, {"OPENSEARCH_PORT", "port"},
			{"OPENSEARCH_USERNAME", "user"}, {"OPENSEARCH_PASSWORD", "password"},
		},
		connect: func(r *rc) Connection {
			h := r.host("opensearch")
			p := r.creds["admin_password"]
			return Connection{Host: h, Port: 9200, User: "admin", Password: p, URL: fmt.Sprintf("https://admin:%s@%s:9200", p, h)}
		},
		render: renderOpenSearch,
	}
}

func renderOpenSearch(r *rc) error {
	headless := "opensearch-headless"
	heap := r.memoryMiB() / 2
	envs := []kapi.EnvVar{
		fieldEnv("POD_NAME", "metadata.name"),
		env("cluster.name", r.inst.OSID),
		env("node.name", "$(POD_NAME)"),
		env("network.host", "0.0.0.0"),
		env("bootstrap.memory_lock", "false"),
		// No vm.max_map_count sysctl (needs a privileged pod): niofs
		// instead of mmap.
		env("node.store.allow_mmap", "false"),
		env("OPENSEARCH_JAVA_OPTS", fmt.Sprintf("-Xms%dm -Xmx%dm", heap, heap)),
		r.secretEnv("OPENSEARCH_INITIAL_ADMIN_PASSWORD", "admin_password"),
	}
	if r.replicas == 1 {
		envs = append(envs, env("discovery.type", "single-node"))
	} else {
		var names []string
		for i := range r.replicas {
			names = append(names, fmt.Sprintf("opensearch-%d", i))
		}
		envs = append(envs,
			env("discovery.seed_hosts", headless),
			env("cluster.initial_cluster_manager_nodes", strings.Join(names, ",")))
	}
	health := `curl -sk -o /dev/null -w '%{http_code}' -u "admin:$OPENSEARCH_INITIAL_ADMIN_PASSWORD" "https://127.0.0.1:9200/_cluster/health?local=true" | grep -q 200`
	c := kapi.Container{
		Name:           "opensearch",
		Image:          r.image,
		Env:            envs,
		Ports:          []kapi.ContainerPort{port("http", 9200), port("transport", 9300)},
		StartupProbe:   tcpProbe("http", 10, 5, 60),
		ReadinessProbe: shProbe(0, 10, 10, 3, health),
		LivenessProbe:  tcpProbe("transport", 0, 10, 6),
		Resources:      r.resources(),
		VolumeMounts:   []kapi.VolumeMount{mount("data", "/usr/share/opensearch/data")},
	}
	uid := int64(1000)
	grace := int64(120)
	spec := kapi.PodSpec{
		Containers:                    []kapi.Container{c},
		SecurityContext:               &kapi.PodSecurityContext{FSGroup: &uid},
		TerminationGracePeriodSeconds: &grace,
	}
	r.headless(headless, "opensearch", svcPort("http", 9200), svcPort("transport", 9300))
	r.clientService("opensearch", "opensearch", nil, svcPort("http", 9200))
	r.dataStatefulSet("opensearch", headless, r.replicas, spec, true)
	r.pdb("opensearch", r.replicas)
	return nil
}

// --- InfluxDB ---

var retentionRE = regexp.MustCompile(`^(0|[1-9][0-9]*[hdw])$`)

func influxdbDef() *def {
	return &def{
		svc: Service{
			Name: "influxdb", Title: "InfluxDB", Kind: "timeseries", Version: "2.7.12",
			Description: "Time-series database (InfluxDB 2, official image): org app, bucket from settings, admin token for apps.",
			Provides:    "influxdb",
		},
		image: "docker.io/library/influxdb", port: 8086,
		storage: "10Gi", cpu: "250m", memory: "1Gi",
		haNote:  "single node at every tier: clustering is not part of InfluxDB OSS",
		entNote: "native /metrics scraped, nightly `influx backup` CronJob",
		backup:  true,
		extra: []setting{
			{Setting{Key: "bucket", Default: "app", Description: "initial bucket"}, bucketName},
			{Setting{Key: "retention", Default: "0", Description: "retention of the initial bucket (0 = forever, or e.g. 30d, 12h, 4w)"},
				func(v string) error {
					if !retentionRE.MatchString(v) {
						return fmt.Errorf("%q: 0 or a number with h, d or w", v)
					}
					return nil
				}},
		},
		creds: []credSpec{{"username", "user:admin"}, {"admin_password", "password"}, {"admin_token", "token"}},
		env: []envSpec{
			{"INFLUX_URL", "key:url"}, {"INFLUX_HOST", "host"}, {"INFLUX_TOKEN", "key:admin_token"},
			{"INFLUX_ORG", "const:app"}, {"INFLUX_BUCKET", "database"},
		},
		metrics: metricsAt(8086, ""),
		connect: func(r *rc) Connection {
			h := r.host("influxdb")
			return Connection{Host: h, Port: 8086, User: "admin", Password: r.creds["admin_password"], Database: r.set["bucket"],
				URL: "http://" + h + ":8086"}
		},
		render: func(r *rc) error {
			c := kapi.Container{
				Name:  "influxdb",
				Image: r.image,
				Env: []kapi.EnvVar{
					env("DOCKER_INFLUXDB_INIT_MODE", "setup"),
					r.secretEnv("DOCKER_INFLUXDB_INIT_USERNAME", "username"),
					r.secretEnv("DOCKER_INFLUXDB_INIT_PASSWORD", "admin_password"),
					r.secretEnv("DOCKER_INFLUXDB_INIT_ADMIN_TOKEN", "admin_token"),
					env("DOCKER_INFLUXDB_INIT_ORG", "app"),
					env("DOCKER_INFLUXDB_INIT_BUCKET", r.set["bucket"]),
					env("DOCKER_INFLUXDB_INIT_RETENTION", r.set["retention"]),
					env("INFLUXD_REPORTING_DISABLED", "true"),
				},
				Ports:          []kapi.ContainerPort{port("http", 8086)},
				StartupProbe:   httpProbe("/health", "http", 5, 5, 60),
				ReadinessProbe: httpProbe("/health", "http", 0, 10, 3),
				LivenessProbe:  httpProbe("/health", "http", 0, 10, 6),
				Resources:      r.resources(),
				VolumeMounts:   []kapi.VolumeMount{mount("data", "/var/lib/influxdb2"), mount("config", "/etc/influxdb2")},
			}
			spec := kapi.PodSpec{Containers: []kapi.Container{c}, Volumes: []kapi.Volume{emptyDir("config")}}
			r.headless("influxdb-headless", "influxdb", svcPort("http", 8086))
			r.clientService("influxdb", "influxdb", nil, svcPort("http", 8086))
			r.dataStatefulSet("influxdb", "influxdb-headless", 1, spec, false)
			r.backupJob(r.image, `influx backup --host "http://$HOST:8086" --token "$TOKEN" "/backup/influxdb-$stamp"`,
				env("HOST", r.host("influxdb")), r.secretEnv("TOKEN", "admin_token"))
			return nil
		},
	}
}

// --- Meilisearch ---

func meilisearchDef() *def {
	return &def{
		svc: Service{
			Name: "meilisearch", Title: "Meilisearch", Kind: "search", Version: "v1.15.2",
			Description: "Typo-tolerant search engine (production mode, master key).",
			Provides:    "meilisearch",
		},
		image: "docker.io/getmeili/meilisearch", port: 7700,
		storage: "10Gi", cpu: "250m", memory: "1Gi",
		haNote:  "single node at every tier: Meilisearch has no replication",
		entNote: "daily snapshots on the data volume (--schedule-snapshot); no Prometheus endpoint outside experimental mode",
		creds:   []credSpec{{"master_key", "token"}},
		env: []envSpec{
			{"MEILI_URL", "key:url"}, {"MEILISEARCH_URL", "key:url"}, {"MEILI_HOST", "host"}, {"MEILI_MASTER_KEY", "key:master_key"},
		},
		connect: func(r *rc) Connection {
			h := r.host("meilisearch")
			return Connection{Host: h, Port: 7700, Password: r.creds["master_key"], URL: "http://" + h + ":7700"}
		},
		render: func(r *rc) error {
			envs := []kapi.EnvVar{
				env("MEILI_ENV", "production"),
				r.secretEnv("MEILI_MASTER_KEY", "master_key"),
				env("MEILI_DB_PATH", "/meili_data/data.ms"),
				env("MEILI_DUMP_DIR", "/meili_data/dumps"),
				env("MEILI_SNAPSHOT_DIR", "/meili_data/snapshots"),
				env("MEILI_NO_ANALYTICS", "true"),
				env("MEILI_MAX_INDEXING_MEMORY", fmt.Sprint(r.memory.Value()/2)),
			}
			if r.enterprise() {
				envs = append(envs, env("MEILI_SCHEDULE_SNAPSHOT", "86400"))
			}
			c := kapi.Container{
				Name:           "meilisearch",
				Image:          r.image,
				Env:            envs,
				Ports:          []kapi.ContainerPort{port("http", 7700)},
				StartupProbe:   httpProbe("/health", "http", 2, 5, 60),
				ReadinessProbe: httpProbe("/health", "http", 0, 10, 3),
				LivenessProbe:  httpProbe("/health", "http", 0, 10, 6),
				Resources:      r.resources(),
				VolumeMounts:   []kapi.VolumeMount{mount("data", "/meili_data")},
			}
			r.headless("meilisearch-headless", "meilisearch", svcPort("http", 7700))
			r.clientService("meilisearch", "meilisearch", nil, svcPort("http", 7700))
			r.dataStatefulSet("meilisearch", "meilisearch-headless", 1, kapi.PodSpec{Containers: []kapi.Container{c}}, false)
			return nil
		},
	}
}
