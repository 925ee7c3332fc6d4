package templates

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"
)

func postgresDef() *def {
	return &def{
		svc: Service{
			Name: "postgres", Title: "PostgreSQL", Kind: "database", Version: "17.6",
			Description: "Relational database (official postgres image).",
			Provides:    "postgres",
		},
		image: "docker.io/library/postgres", port: 5432,
		storage: "10Gi", cpu: "250m", memory: "512Mi",
		haReplicas: 2, minHA: 2, maxHA: 5,
		haOK: false,
		haNote: "primary plus streaming hot-standby replicas (service postgres-replicas for reads); " +
			"no automatic failover: that needs an operator such as CloudNativePG",
		entNote: "postgres-exporter sidecar, nightly pg_dump backup CronJob",
		backup:  true,
		extra: []setting{
			{Setting{Key: "max_connections", Default: "100", Description: "max_connections"}, intRange(10, 5000)},
		},
		creds: []credSpec{
			{"username", "user:app"}, {"password_app", "password"}, {"dbname", "db:app"},
			{"replication_password", "password"},
		},
		env: []envSpec{
			{"DATABASE_URL", "url"}, {"POSTGRES_HOST", "host"}, {"POSTGRES_PORT", "port"},
			{"POSTGRES_USER", "user"}, {"POSTGRES_PASSWORD", "password"}, {"POSTGRES_DB", "database"},
			{"PGHOST", "host"}, {"PGPORT", "port"}, {"PGUSER", "user"}, {"PGPASSWORD", "password"}, {"PGDATABASE", "database"},
		},
		metrics: metricsAt(9187, ""),
		connect: func(r *rc) Connection {
			u, p, db := r.creds["username"], r.creds["password_app"], r.creds["dbname"]
			h := r.host("postgres")
			return Connection{Host: h, Port: 5432, User: u, Password: p, Database: db,
				URL: fmt.Sprintf("postgres://%s:%s@%s:5432/%s?sslmode=disable", u, p, h, db)}
		},
		render: renderPostgres,
	}
}

func metricsAt(port int, path string) struct {
	port int
	path string
} {
	return struct {
		port int
		path string
	}{port, path}
}

const pgInitReplication = `#!/bin/sh
# Runs once, at initdb on the primary: a replication role and its pg_hba line.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<SQL
CREATE ROLE replicator WITH REPLICATION LOGIN PASSWORD '$REPLICATION_PASSWORD';
SQL
echo "host replication replicator all scram-sha-256" >> "$PGDATA/pg_hba.conf"
`

// pgStart: pod 0 is the primary; others clone it with pg_basebackup on
// first start and then follow it as hot standbys.
const pgStart = `set -eu
ord="${HOSTNAME##*-}"
if [ "$ord" != "0" ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
  mkdir -p "$PGDATA"; chown postgres:postgres "$PGDATA"; chmod 700 "$PGDATA"
  export PGPASSWORD="$REPLICATION_PASSWORD"
  until gosu postgres pg_basebackup -h "$PRIMARY_HOST" -U replicator -D "$PGDATA" -R -X stream -c fast; do
    echo "waiting for primary $PRIMARY_HOST"; rm -rf "$PGDATA"/*; sleep 5
  done
  unset PGPASSWORD
  echo "primary_conninfo = 'host=$PRIMARY_HOST user=replicator password=$REPLICATION_PASSWORD application_name=$HOSTNAME'" >> "$PGDATA/postgresql.auto.conf"
fi
exec docker-entrypoint.sh postgres "$@"
`

func renderPostgres(r *rc) error {
	mc := r.set["max_connections"]
	args := []string{"-c", "max_connections=" + mc, "-c", "listen_addresses=*"}
	if r.ha() {
		args = append(args, "-c", "wal_level=replica", "-c", "max_wal_senders=10", "-c", "wal_keep_size=1GB", "-c", "hot_standby=on")
	}
	ready := `pg_isready -q -h 127.0.0.1 -U "$POSTGRES_USER" -d "$POSTGRES_DB"`
	c := corev1.Container{
		Name:  "postgres",
		Image: r.image,
		Env: []corev1.EnvVar{
			r.secretEnv("POSTGRES_USER", "username"),
			r.secretEnv("POSTGRES_PASSWORD", "password_app"),
			r.secretEnv("POSTGRES_DB", "dbname"),
			r.secretEnv("REPLICATION_PASSWORD", "replication_password"),
			env("PGDATA", "/var/lib/postgresql/data/pgdata"),
			env("PRIMARY_HOST", r.podHost("postgres", 0, "postgres-headless")),
		},
		Command:        []string{"sh", "-c", pgStart, "--"},
		Args:           args,
		Ports:          []corev1.ContainerPort{port("postgres", 5432)},
		StartupProbe:   shProbe(5, 5, 5, 120, ready),
		ReadinessProbe: shProbe(0, 5, 5, 3, ready),
		LivenessProbe:  shProbe(0, 10, 5, 6, ready),
		Resources:      r.resources(),
		VolumeMounts: []corev1.VolumeMount{
			mount("data", "/var/lib/postgresql/data"), mount("init", "/docker-entrypoint-initdb.d"), mount("shm", "/dev/shm"),
		},
	}
	spec := corev1.PodSpec{
		Containers: []corev1.Container{c},
		Volumes:    []corev1.Volume{configVolume("init", "postgres-init", 0o755), memDir("shm", "256Mi")},
	}
	if r.enterprise() {
		spec.Containers = append(spec.Containers, corev1.Container{
			Name:  "exporter",
			Image: "quay.io/prometheuscommunity/postgres-exporter:v0.17.1",
			Env: []corev1.EnvVar{
				r.secretEnv("DATA_SOURCE_USER", "username"),
				r.secretEnv("DATA_SOURCE_PASS", "password_app"),
				r.secretEnv("PGDB", "dbname"),
				env("DATA_SOURCE_URI", "127.0.0.1:5432/$(PGDB)?sslmode=disable"),
			},
			Ports:          []corev1.ContainerPort{port("metrics", 9187)},
			ReadinessProbe: httpProbe("/", "metrics", 5, 10, 3),
			Resources:      r.small(),
		})
	}
	r.configMap("postgres-init", "postgres", map[string]string{"10-replication.sh": pgInitReplication})
	r.headless("postgres-headless", "postgres", svcPort("postgres", 5432))
	// The client Service reaches the primary only (pod 0).
	r.clientService("postgres", "postgres", map[string]string{
		LabelOSID: r.inst.OSID, "app.kubernetes.io/component": "postgres",
		"statefulset.kubernetes.io/pod-name": "postgres-0"}, svcPort("postgres", 5432))
	if r.ha() {
		r.clientService("postgres-replicas", "postgres", map[string]string{
			LabelOSID: r.inst.OSID, "app.kubernetes.io/component": "postgres"}, svcPort("postgres", 5432))
	}
	sts := r.statefulSet("postgres", "postgres", "postgres-headless", r.replicas, spec, false)
	r.volumeClaim(sts, "data", r.storage)
	r.pdb("postgres", r.replicas)
	r.backupJob(r.image, `export PGPASSWORD="$POSTGRES_PASSWORD"
pg_dump -h "$HOST" -U "$POSTGRES_USER" -d "$POSTGRES_DB" -Fc -f "/backup/postgres-$stamp.dump"`,
		env("HOST", r.host("postgres")),
		r.secretEnv("POSTGRES_USER", "username"),
		r.secretEnv("POSTGRES_PASSWORD", "password_app"),
		r.secretEnv("POSTGRES_DB", "dbname"))
	return nil
}
