package templates

import (
	"encoding/base64"
	"fmt"
	"github.com/runos/runos-agent/templates/kapi"
	"regexp"
)

var regexp15d = regexp.MustCompile(`^[1-9][0-9]*(h|d|w|y)$`)

// --- Keycloak ---

func keycloakDef() *def {
	return &def{
		svc: Service{
			Name: "keycloak", Title: "Keycloak", Kind: "identity", Version: "26.3.3",
			Description: "Identity and access management (OIDC, SAML) with its own PostgreSQL. Plain HTTP inside the cluster; " +
				"put TLS in front (proxy headers are trusted).",
			Provides: "oidc",
		},
		image: "quay.io/keycloak/keycloak", port: 8080,
		storage: "5Gi", cpu: "500m", memory: "1Gi",
		haReplicas: 2, minHA: 2, maxHA: 5,
		haOK: false,
		haNote: "several Keycloak nodes sharing sessions (Infinispan, JDBC_PING discovery) survive a node loss, " +
			"but their PostgreSQL is a single instance: no failover without an operator",
		entNote: "metrics on the management port scraped, nightly pg_dump of its database",
		backup:  true,
		creds: []credSpec{
			{"username", "user:admin"}, {"admin_password", "password"}, {"db_password", "password"},
		},
		env: []envSpec{
			{"KEYCLOAK_URL", "key:url"}, {"KEYCLOAK_HOST", "host"}, {"KEYCLOAK_PORT", "port"},
			{"KEYCLOAK_ADMIN_USER", "user"}, {"KEYCLOAK_ADMIN_PASSWORD", "password"},
		},
		metrics: metricsAt(9000, "/metrics"),
		connect: func(r *rc) Connection {
			h := r.host("keycloak")
			return Connection{Host: h, Port: 8080, User: "admin", Password: r.creds["admin_password"], URL: "http://" + h + ":8080"}
		},
		render: renderKeycloak,
	}
}

func renderKeycloak(r *rc) error {
	// Its database: one PostgreSQL, sized for Keycloak.
	dbReady := `pg_isready -q -h 127.0.0.1 -U keycloak -d keycloak`
	db := kapi.Container{
		Name:  "postgres",
		Image: "docker.io/library/postgres:17.6",
		Env: []kapi.EnvVar{
			env("POSTGRES_USER", "keycloak"),
			r.secretEnv("POSTGRES_PASSWORD", "db_password"),
			env("POSTGRES_DB", "keycloak"),
			env("PGDATA", "/var/lib/postgresql/data/pgdata"),
		},
		Ports:          []kapi.ContainerPort{port("postgres", 5432)},
		StartupProbe:   shProbe(5, 5, 5, 120, dbReady),
		ReadinessProbe: shProbe(0, 5, 5, 3, dbReady),
		LivenessProbe:  shProbe(0, 10, 5, 6, dbReady),
		Resources:      r.res(kapi.MustParseQuantity("250m"), kapi.MustParseQuantity("512Mi")),
		VolumeMounts:   []kapi.VolumeMount{mount("data", "/var/lib/postgresql/data")},
	}
	r.headless("keycloak-db-headless", "keycloak-db", svcPort("postgres", 5432))
	r.clientService("keycloak-db", "keycloak-db", nil, svcPort("postgres", 5432))
	r.dataStatefulSet("keycloak-db", "keycloak-db-headless", 1, kapi.PodSpec{Containers: []kapi.Container{db}}, false)

	heap := r.memoryMiB() * 7 / 10
	kc := kapi.Container{
		Name:  "keycloak",
		Image: r.image,
		Args:  []string{"start"},
		Env: []kapi.EnvVar{
			env("KC_DB", "postgres"),
			env("KC_DB_URL_HOST", r.host("keycloak-db")),
			env("KC_DB_URL_DATABASE", "keycloak"),
			env("KC_DB_USERNAME", "keycloak"),
			r.secretEnv("KC_DB_PASSWORD", "db_password"),
			env("KC_HTTP_ENABLED", "true"),
			env("KC_HOSTNAME_STRICT", "false"),
			env("KC_PROXY_HEADERS", "xforwarded"),
			env("KC_HEALTH_ENABLED", "true"),
			env("KC_METRICS_ENABLED", "true"),
			env("KC_CACHE", "ispn"),
			env("KC_BOOTSTRAP_ADMIN_USERNAME", "admin"),
			r.secretEnv("KC_BOOTSTRAP_ADMIN_PASSWORD", "admin_password"),
			env("JAVA_OPTS_KC_HEAP", fmt.Sprintf("-Xms%dm -Xmx%dm", heap/2, heap)),
		},
		Ports:          []kapi.ContainerPort{port("http", 8080), port("management", 9000), port("jgroups", 7800)},
		StartupProbe:   httpProbe("/health/started", "management", 10, 5, 60),
		ReadinessProbe: httpProbe("/health/ready", "management", 0, 10, 3),
		LivenessProbe:  httpProbe("/health/live", "management", 0, 10, 6),
		Resources:      r.resources(),
	}
	r.clientService("keycloak", "keycloak", nil, svcPort("http", 8080))
	r.deployment("keycloak", "keycloak", r.replicas, kapi.PodSpec{Containers: []kapi.Container{kc}})
	r.pdb("keycloak", r.replicas)
	r.backupJob("docker.io/library/postgres:17.6", `export PGPASSWORD="$DB_PASSWORD"
pg_dump -h "$HOST" -U keycloak -d keycloak -Fc -f "/backup/keycloak-$stamp.dump"`,
		env("HOST", r.host("keycloak-db")), r.secretEnv("DB_PASSWORD", "db_password"))
	return nil
}

// --- Grafana ---

func grafanaDef() *def {
	return &def{
		svc: Service{
			Name: "grafana", Title: "Grafana", Kind: "observability", Version: "12.1.1",
			Description: "Dashboards and alerting (SQLite on its volume). A user interface: apps cannot --use it.",
		},
		image: "docker.io/grafana/grafana", port: 3000,
		storage: "2Gi", cpu: "100m", memory: "256Mi",
		haNote:  "single replica at every tier: several replicas need a shared MySQL/PostgreSQL database and are not set up here",
		entNote: "native /metrics scraped, nightly copy of grafana.db",
		backup:  true,
		creds:   []credSpec{{"username", "user:admin"}, {"admin_password", "password"}},
		metrics: metricsAt(3000, "/metrics"),
		connect: func(r *rc) Connection {
			h := r.host("grafana")
			return Connection{Host: h, Port: 3000, User: "admin", Password: r.creds["admin_password"], URL: "http://" + h + ":3000"}
		},
		render: func(r *rc) error {
			c := kapi.Container{
				Name:  "grafana",
				Image: r.image,
				Env: []kapi.EnvVar{
					env("GF_SECURITY_ADMIN_USER", "admin"),
					r.secretEnv("GF_SECURITY_ADMIN_PASSWORD", "admin_password"),
					env("GF_ANALYTICS_REPORTING_ENABLED", "false"),
					env("GF_ANALYTICS_CHECK_FOR_UPDATES", "false"),
					env("GF_PATHS_DATA", "/var/lib/grafana"),
				},
				Ports:          []kapi.ContainerPort{port("http", 3000)},
				StartupProbe:   httpProbe("/api/health", "http", 5, 5, 60),
				ReadinessProbe: httpProbe("/api/health", "http", 0, 10, 3),
				LivenessProbe:  httpProbe("/api/health", "http", 0, 10, 6),
				Resources:      r.resources(),
				VolumeMounts:   []kapi.VolumeMount{mount("data", "/var/lib/grafana")},
			}
			gid := int64(472)
			spec := kapi.PodSpec{Containers: []kapi.Container{c}, SecurityContext: &kapi.PodSecurityContext{FSGroup: &gid}}
			r.headless("grafana-headless", "grafana", svcPort("http", 3000))
			r.clientService("grafana", "grafana", nil, svcPort("http", 3000))
			r.dataStatefulSet("grafana", "grafana-headless", 1, spec, false)
			// The database file lives on a ReadWriteOnce volume the job
			// cannot mount; Grafana's API exports what matters instead.
			r.backupJob(curlImage, `mkdir -p "/backup/grafana-$stamp"
for uid in $(curl -sf -u "admin:$PW" "http://$HOST:3000/api/search?type=dash-db&limit=5000" | grep -o '"uid":"[^"]*"' | cut -d'"' -f4); do
  curl -sf -u "admin:$PW" "http://$HOST:3000/api/dashboards/uid/$uid" -o "/backup/grafana-$stamp/$uid.json"
done
curl -sf -u "admin:$PW" "http://$HOST:3000/api/datasources" -o "/backup/grafana-$stamp/datasources.json"`,
				env("HOST", r.host("grafana")), r.secretEnv("PW", "admin_password"))
			return nil
		},
	}
}

// --- Prometheus ---

func prometheusDef() *def {
	return &def{
		svc: Service{
			Name: "prometheus", Title: "Prometheus", Kind: "observability", Version: "v3.5.0",
			Description: "Metrics database with basic auth; accepts remote write and OTLP. It scrapes itself; cluster-wide " +
				"discovery needs a ClusterRole, which instances (confined to their namespace) do not get.",
			Provides: "prometheus",
		},
		image: "docker.io/prom/prometheus", port: 9090,
		storage: "20Gi", cpu: "250m", memory: "1Gi",
		haNote:  "single server at every tier: Prometheus HA is two independent scrapers plus a query layer (Thanos/Mimir), not set up here",
		entNote: "nightly TSDB snapshot CronJob (admin API)",
		backup:  true,
		extra: []setting{
			{Setting{Key: "retention", Default: "15d", Description: "--storage.tsdb.retention.time"}, func(v string) error {
				if !regexp15d.MatchString(v) {
					return fmt.Errorf("%q: a duration like 15d, 12h, 4w or 1y", v)
				}
				return nil
			}},
		},
		creds: []credSpec{{"username", "user:admin"}, {"admin_password", "password"}, {"password_hash", "bcrypt:admin_password"}},
		env: []envSpec{
			{"PROMETHEUS_URL", "key:url"}, {"PROMETHEUS_USER", "user"}, {"PROMETHEUS_PASSWORD", "password"},
		},
		metrics: metricsAt(9090, "/metrics"),
		derive: func(r *rc) map[string]string {
			return map[string]string{
				"web_config": fmt.Sprintf("basic_auth_users:\n  admin: %q\n", r.creds["password_hash"]),
				"basic_auth": base64.StdEncoding.EncodeToString([]byte("admin:" + r.creds["admin_password"])),
			}
		},
		connect: func(r *rc) Connection {
			h := r.host("prometheus")
			return Connection{Host: h, Port: 9090, User: "admin", Password: r.creds["admin_password"], URL: "http://" + h + ":9090"}
		},
		render: func(r *rc) error {
			conf := `global:
  scrape_interval: 30s
  evaluation_interval: 30s
scrape_configs:
  - job_name: prometheus
    basic_auth:
      username: admin
      password_file: /etc/prometheus/secret/password
    static_configs:
      - targets: ["127.0.0.1:9090"]
`
			r.configMap("prometheus-config", "prometheus", map[string]string{"prometheus.yml": conf})
			probe := func(path string) string {
				return `wget -q -O /dev/null --header "Authorization: Basic $BASIC_AUTH" http://127.0.0.1:9090` + path
			}
			c := kapi.Container{
				Name:  "prometheus",
				Image: r.image,
				Args: []string{
					"--config.file=/etc/prometheus/config/prometheus.yml",
					"--web.config.file=/etc/prometheus/secret/web.yml",
					"--storage.tsdb.path=/prometheus",
					"--storage.tsdb.retention.time=" + r.set["retention"],
					"--storage.tsdb.retention.size=" + fmt.Sprintf("%dMB", r.storage.Value()*8/10/1000000),
					"--web.enable-remote-write-receiver",
					"--web.enable-otlp-receiver",
					"--web.enable-admin-api",
					"--web.enable-lifecycle",
				},
				Env:            []kapi.EnvVar{r.secretEnv("BASIC_AUTH", "basic_auth")},
				Ports:          []kapi.ContainerPort{port("http", 9090)},
				StartupProbe:   shProbe(5, 5, 5, 120, probe("/-/ready")),
				ReadinessProbe: shProbe(0, 10, 5, 3, probe("/-/ready")),
				LivenessProbe:  shProbe(0, 15, 5, 6, probe("/-/healthy")),
				Resources:      r.resources(),
				VolumeMounts: []kapi.VolumeMount{mount("data", "/prometheus"), mount("config", "/etc/prometheus/config"),
					mount("secret", "/etc/prometheus/secret")},
			}
			gid := int64(65534)
			spec := kapi.PodSpec{
				Containers: []kapi.Container{c},
				Volumes: []kapi.Volume{configVolume("config", "prometheus-config", 0o644),
					secretVolume("secret", map[string]string{"web_config": "web.yml", "admin_password": "password"}, 0o444)},
				SecurityContext: &kapi.PodSecurityContext{FSGroup: &gid},
			}
			r.headless("prometheus-headless", "prometheus", svcPort("http", 9090))
			r.clientService("prometheus", "prometheus", nil, svcPort("http", 9090))
			r.dataStatefulSet("prometheus", "prometheus-headless", 1, spec, false)
			// A snapshot lands on Prometheus's own volume (snapshots/);
			// the job triggers it and keeps its name in /backup.
			r.backupJob(curlImage, `curl -sf -X POST -u "admin:$PW" "http://$HOST:9090/api/v1/admin/tsdb/snapshot" | tee "/backup/prometheus-$stamp.json"`,
				env("HOST", r.host("prometheus")), r.secretEnv("PW", "admin_password"))
			return nil
		},
	}
}

// --- Loki ---

func lokiDef() *def {
	return &def{
		svc: Service{
			Name: "loki", Title: "Grafana Loki", Kind: "observability", Version: "3.5.5",
			Description: "Log aggregation, single binary with filesystem storage. No authentication (single tenant): " +
				"reachable inside the cluster only.",
			Provides: "loki",
		},
		image: "docker.io/grafana/loki", port: 3100,
		storage: "20Gi", cpu: "250m", memory: "512Mi",
		haNote:  "single binary at every tier: replicated Loki needs object storage (S3) and the microservice or simple-scalable mode",
		entNote: "native /metrics scraped; no backup job",
		extra: []setting{
			{Setting{Key: "retention", Default: "744h", Description: "log retention (hours, multiple of 24h)"}, func(v string) error {
				var h int
				if _, err := fmt.Sscanf(v, "%dh", &h); err != nil || fmt.Sprintf("%dh", h) != v || h < 24 || h%24 != 0 {
					return fmt.Errorf("%q: hours, a multiple of 24 (e.g. 744h)", v)
				}
				return nil
			}},
		},
		env:     []envSpec{{"LOKI_URL", "key:url"}, {"LOKI_HOST", "host"}, {"LOKI_PORT", "port"}},
		metrics: metricsAt(3100, "/metrics"),
		connect: func(r *rc) Connection {
			h := r.host("loki")
			return Connection{Host: h, Port: 3100, URL: "http://" + h + ":3100"}
		},
		render: func(r *rc) error {
			conf := fmt.Sprintf(`auth_enabled: false
server:
  http_listen_port: 3100
  grpc_listen_port: 9095
  log_level: warn
common:
  instance_addr: 127.0.0.1
  path_prefix: /loki
  replication_factor: 1
  ring:
    kvstore:
      store: inmemory
  storage:
    filesystem:
      chunks_directory: /loki/chunks
      rules_directory: /loki/rules
schema_config:
  configs:
    - from: "2024-01-01"
      store: tsdb
      object_store: filesystem
      schema: v13
      index:
        prefix: index_
        period: 24h
limits_config:
  retention_period: %s
compactor:
  working_directory: /loki/compactor
  retention_enabled: true
  delete_request_store: filesystem
analytics:
  reporting_enabled: false
`, r.set["retention"])
			r.configMap("loki-config", "loki", map[string]string{"loki.yaml": conf})
			c := kapi.Container{
				Name:           "loki",
				Image:          r.image,
				Args:           []string{"-config.file=/etc/loki/loki.yaml"},
				Ports:          []kapi.ContainerPort{port("http", 3100), port("grpc", 9095)},
				StartupProbe:   httpProbe("/ready", "http", 5, 5, 60),
				ReadinessProbe: httpProbe("/ready", "http", 0, 10, 3),
				LivenessProbe:  tcpProbe("http", 0, 10, 6),
				Resources:      r.resources(),
				VolumeMounts:   []kapi.VolumeMount{mount("data", "/loki"), mount("config", "/etc/loki")},
			}
			uid := int64(10001)
			spec := kapi.PodSpec{
				Containers:      []kapi.Container{c},
				Volumes:         []kapi.Volume{configVolume("config", "loki-config", 0o644)},
				SecurityContext: &kapi.PodSecurityContext{FSGroup: &uid},
			}
			r.headless("loki-headless", "loki", svcPort("http", 3100), svcPort("grpc", 9095))
			r.clientService("loki", "loki", nil, svcPort("http", 3100))
			r.dataStatefulSet("loki", "loki-headless", 1, spec, false)
			return nil
		},
	}
}
