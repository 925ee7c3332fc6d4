package templates

import (
	"fmt"
	"github.com/runos/runos-agent/templates/kapi"
)

// pgFlavor is PostgreSQL or an image built on the official one (same
// entrypoint, PGDATA and tools) that adds an extension.
type pgFlavor struct {
	name, title, image, version, description string
	extension                                string // created in the app database at initialisation
}

func postgresDef() *def {
	return postgresLikeDef(pgFlavor{name: "postgres", title: "PostgreSQL", image: "docker.io/library/postgres", version: "17.6",
		description: "Relational database (official postgres image)."})
}

func pgvectorDef() *def {
	return postgresLikeDef(pgFlavor{name: "pgvector", title: "PostgreSQL + pgvector", image: "docker.io/pgvector/pgvector",
		version: "0.8.1-pg17", extension: "vector",
		description: "PostgreSQL 17 with the pgvector extension (vector similarity search), enabled in the app database."})
}

func timescaledbDef() *def {
	return postgresLikeDef(pgFlavor{name: "timescaledb", title: "TimescaleDB", image: "docker.io/timescale/timescaledb",
		version:     "2.20.3-pg17",
		description: "PostgreSQL 17 with TimescaleDB (time-series hypertables); the image enables the extension in the app database."})
}

func postgresLikeDef(f pgFlavor) *def {
	return &def{
		svc: Service{
			Name: f.name, Title: f.title, Kind: "database", Version: f.version,
			Description: f.description,
			Provides:    "postgres",
		},
		image: f.image, port: 5432,
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
			h := r.host(f.name)
			return Connection{Host: h, Port: 5432, User: u, Password: p, Database: db,
				URL: fmt.Sprintf("postgres://%s:%s@%s:5432/%s?sslmode=disable", u, p, h, db)}
		},
		render: func(r *rc) error { return renderPostgres(r, f) },
	}
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
  runas() { if command -v gosu >/dev/null; then gosu postgres "$@"; else su-exec postgres "$@"; fi; }
  until runas pg_basebackup -h "$PRIMARY_HOST" -U replicator -D "$PGDATA" -R -X stream -c fast; do
    echo "waiting for primary $PRIMARY_HOST"; rm -rf "$PGDATA"/*; sleep 5
  done
  unset PGPASSWORD
  echo "primary_conninfo = 'host=$PRIMARY_HOST user=replicator password=$REPLICATION_PASSWORD application_name=$HOSTNAME'" >> "$PGDATA/postgresql.auto.conf"
fi
exec docker-entrypoint.sh postgres "$@"
`

func renderPostgres(r *rc, f pgFlavor) error {
	name, headless := f.name, f.name+"-headless"
	mc := r.set["max_connections"]
	args := []string{"-c", "max_connections=" + mc, "-c", "listen_addresses=*"}
	if r.ha() {
		args = append(args, "-c", "wal_level=replica", "-c", "max_wal_senders=10", "-c", "wal_keep_size=1GB", "-c", "hot_standby=on")
	}
	ready := `pg_isready -q -h 127.0.0.1 -U "$POSTGRES_USER" -d "$POSTGRES_DB"`
	c := kapi.Container{
		Name:  "postgres",
		Image: r.image,
		Env: []kapi.EnvVar{
			r.secretEnv("POSTGRES_USER", "username"),
			r.secretEnv("POSTGRES_PASSWORD", "password_app"),
			r.secretEnv("POSTGRES_DB", "dbname"),
			r.secretEnv("REPLICATION_PASSWORD", "replication_password"),
			env("PGDATA", "/var/lib/postgresql/data/pgdata"),
			env("PRIMARY_HOST", r.podHost(name, 0, headless)),
		},
		Command:        []string{"sh", "-c", pgStart, "--"},
		Args:           args,
		Ports:          []kapi.ContainerPort{port("postgres", 5432)},
		StartupProbe:   shProbe(5, 5, 5, 120, ready),
		ReadinessProbe: shProbe(0, 5, 5, 3, ready),
		LivenessProbe:  shProbe(0, 10, 5, 6, ready),
		Resources:      r.resources(),
		VolumeMounts: []kapi.VolumeMount{
			mount("data", "/var/lib/postgresql/data"), mount("shm", "/dev/shm"),
			// Files, not the directory: images built on postgres keep
			// their own init scripts there.
			{Name: "init", MountPath: "/docker-entrypoint-initdb.d/10-replication.sh", SubPath: "10-replication.sh"},
		},
	}
	spec := kapi.PodSpec{
		Containers: []kapi.Container{c},
		Volumes:    []kapi.Volume{configVolume("init", name+"-init", 0o755), memDir("shm", "256Mi")},
	}
	if r.enterprise() {
		spec.Containers = append(spec.Containers, kapi.Container{
			Name:  "exporter",
			Image: "quay.io/prometheuscommunity/postgres-exporter:v0.17.1",
			Env: []kapi.EnvVar{
				r.secretEnv("DATA_SOURCE_USER", "username"),
				r.secretEnv("DATA_SOURCE_PASS", "password_app"),
				r.secretEnv("PGDB", "dbname"),
				env("DATA_SOURCE_URI", "127.0.0.1:5432/$(PGDB)?sslmode=disable"),
			},
			Ports:          []kapi.ContainerPort{port("metrics", 9187)},
			ReadinessProbe: httpProbe("/", "metrics", 5, 10, 3),
			Resources:      r.small(),
		})
	}
	initScript := pgInitReplication
	if f.extension != "" {
		initScript += `psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" -c "CREATE EXTENSION IF NOT EXISTS ` + f.extension + `;"
`
	}
	r.configMap(name+"-init", name, map[string]string{"10-replication.sh": initScript})
	r.headless(headless, name, svcPort("postgres", 5432))
	// The client Service reaches the primary only (pod 0).
	r.clientService(name, name, map[string]string{
		LabelOSID: r.inst.OSID, "app.kubernetes.io/component": name,
		"statefulset.kubernetes.io/pod-name": name + "-0"}, svcPort("postgres", 5432))
	if r.ha() {
		r.clientService(name+"-replicas", name, nil, svcPort("postgres", 5432))
	}
	r.dataStatefulSet(name, headless, r.replicas, spec, false)
	r.pdb(name, r.replicas)
	r.backupJob(r.image, `export PGPASSWORD="$POSTGRES_PASSWORD"
pg_dump -h "$HOST" -U "$POSTGRES_USER" -d "$POSTGRES_DB" -Fc -f "/backup/`+name+`-$stamp.dump"`,
		env("HOST", r.host(name)),
		r.secretEnv("POSTGRES_USER", "username"),
		r.secretEnv("POSTGRES_PASSWORD", "password_app"),
		r.secretEnv("POSTGRES_DB", "dbname"))
	return nil
}
