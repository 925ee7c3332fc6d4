package templates

import (
	"fmt"
	"github.com/runos/runos-agent/templates/kapi"
	"strings"
)

// mysqlFlavor is MySQL or MariaDB: same protocol and image conventions,
// different names and replication SQL.
type mysqlFlavor struct {
	name, title, image, version string
	envPrefix                   string // MYSQL_ / MARIADB_
	server, client, admin, dump string
	exporter                    string
	replicaSQL                  string // %s: primary host
	serverArgs                  []string
}

func mysqlDef() *def {
	return mysqlLikeDef(mysqlFlavor{
		name: "mysql", title: "MySQL", image: "docker.io/library/mysql", version: "8.4.6",
		envPrefix: "MYSQL_", server: "mysqld", client: "mysql", admin: "mysqladmin", dump: "mysqldump",
		replicaSQL: `CHANGE REPLICATION SOURCE TO SOURCE_HOST='%s', SOURCE_USER='replicator', SOURCE_PASSWORD='$REPLICATION_PASSWORD', SOURCE_AUTO_POSITION=1, GET_SOURCE_PUBLIC_KEY=1, SOURCE_CONNECT_RETRY=10;
START REPLICA;`,
		serverArgs: []string{"--gtid-mode=ON", "--enforce-gtid-consistency=ON"},
	})
}

func mariadbDef() *def {
	return mysqlLikeDef(mysqlFlavor{
		name: "mariadb", title: "MariaDB", image: "docker.io/library/mariadb", version: "11.8.3",
		envPrefix: "MARIADB_", server: "mariadbd", client: "mariadb", admin: "mariadb-admin", dump: "mariadb-dump",
		replicaSQL: `CHANGE MASTER TO MASTER_HOST='%s', MASTER_USER='replicator', MASTER_PASSWORD='$REPLICATION_PASSWORD', MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=10;
START SLAVE;`,
	})
}

func mysqlLikeDef(f mysqlFlavor) *def {
	return &def{
		svc: Service{
			Name: f.name, Title: f.title, Kind: "database", Version: f.version,
			Description: f.title + " relational database (official image).",
			Provides:    "mysql",
		},
		image: f.image, port: 3306,
		storage: "10Gi", cpu: "250m", memory: "512Mi",
		haReplicas: 2, minHA: 2, maxHA: 5,
		haOK: false,
		haNote: "primary plus GTID replicas (read-only, service " + f.name + "-replicas for reads); " +
			"no automatic failover: that needs an operator (e.g. MySQL Operator / InnoDB Cluster, mariadb-operator)",
		entNote: "mysqld_exporter sidecar, nightly dump backup CronJob",
		backup:  true,
		extra: []setting{
			{Setting{Key: "max_connections", Default: "151", Description: "max_connections"}, intRange(10, 10000)},
		},
		creds: []credSpec{
			{"username", "user:app"}, {"password_app", "password"}, {"dbname", "db:app"},
			{"root_password", "password"}, {"replication_password", "password"},
		},
		env: []envSpec{
			{"DATABASE_URL", "url"}, {"MYSQL_HOST", "host"}, {"MYSQL_PORT", "port"},
			{"MYSQL_USER", "user"}, {"MYSQL_PASSWORD", "password"}, {"MYSQL_DATABASE", "database"},
		},
		metrics: metricsAt(9104, ""),
		connect: func(r *rc) Connection {
			u, p, db := r.creds["username"], r.creds["password_app"], r.creds["dbname"]
			h := r.host(f.name)
			return Connection{Host: h, Port: 3306, User: u, Password: p, Database: db,
				URL: fmt.Sprintf("mysql://%s:%s@%s:3306/%s", u, p, h, db)}
		},
		render: func(r *rc) error { return renderMySQL(r, f) },
	}
}

// mysqlInit runs once at initialisation of each pod's data directory
// (sourced by the image's entrypoint, so docker_process_sql is there).
// Only the primary creates the app user and database, and does so again
// here with IF NOT EXISTS so that the statements are in its binary log
// whatever the entrypoint did: replicas (which skip the entrypoint's user
// creation) get them by replication instead of clashing with their own.
const mysqlInit = `ord="${HOSTNAME##*-}"
if [ "$ord" = "0" ]; then
docker_process_sql <<SQL
SET SQL_LOG_BIN=0;
CREATE USER IF NOT EXISTS 'replicator'@'%' IDENTIFIED BY '$REPLICATION_PASSWORD';
GRANT REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO 'replicator'@'%';
SET SQL_LOG_BIN=1;
CREATE DATABASE IF NOT EXISTS $APP_DB;
CREATE USER IF NOT EXISTS '$APP_USER'@'%' IDENTIFIED BY '$APP_PASSWORD';
GRANT ALL ON $APP_DB.* TO '$APP_USER'@'%';
SQL
else
docker_process_sql <<SQL
REPLICA_SQL
SET PERSIST_OR_GLOBAL read_only=ON;
SQL
fi
`

func renderMySQL(r *rc, f mysqlFlavor) error {
	name, headless := f.name, f.name+"-headless"
	p := f.envPrefix
	primary := r.podHost(name, 0, headless)
	init := strings.Replace(mysqlInit, "REPLICA_SQL", fmt.Sprintf(f.replicaSQL, primary), 1)
	if f.name == "mysql" {
		init = strings.Replace(init, "SET PERSIST_OR_GLOBAL read_only=ON;", "SET PERSIST super_read_only=ON;", 1)
	} else {
		// MariaDB has no SET PERSIST; the start script passes --read-only
		// to every member but the first.
		init = strings.Replace(init, "SET PERSIST_OR_GLOBAL read_only=ON;\n", "", 1)
	}
	r.configMap(name+"-init", name, map[string]string{"10-replication.sh": init})
	start := fmt.Sprintf(`set -eu
ord="${HOSTNAME##*-}"
extra=""
if [ "$ord" != "0" ]; then
  # Replicas get the app user and database from the primary.
  unset %[1]sUSER %[1]sPASSWORD %[1]sDATABASE
  if [ "%[2]s" = "mariadb" ]; then extra="--read-only=ON"; fi
fi
exec docker-entrypoint.sh %[3]s --server-id=$((100 + ord)) $extra "$@"
`, p, f.name, f.server)
	args := append([]string{"--max-connections=" + r.set["max_connections"], "--log-bin=binlog", "--skip-name-resolve"}, f.serverArgs...)
	if f.name == "mariadb" {
		args = append(args, "--log-slave-updates=ON")
	}
	ping := fmt.Sprintf(`MYSQL_PWD="$%sROOT_PASSWORD" %s ping -h 127.0.0.1 -uroot --silent`, p, f.admin)
	ready := fmt.Sprintf(`MYSQL_PWD="$%sROOT_PASSWORD" %s -h 127.0.0.1 -uroot -e 'SELECT 1' >/dev/null`, p, f.client)
	c := kapi.Container{
		Name:  "server",
		Image: r.image,
		Env: []kapi.EnvVar{
			r.secretEnv(p+"ROOT_PASSWORD", "root_password"),
			r.secretEnv(p+"USER", "username"),
			r.secretEnv(p+"PASSWORD", "password_app"),
			r.secretEnv(p+"DATABASE", "dbname"),
			r.secretEnv("REPLICATION_PASSWORD", "replication_password"),
			r.secretEnv("APP_USER", "username"),
			r.secretEnv("APP_PASSWORD", "password_app"),
			r.secretEnv("APP_DB", "dbname"),
		},
		Command:        []string{"bash", "-c", start, "--"},
		Args:           args,
		Ports:          []kapi.ContainerPort{port("mysql", 3306)},
		StartupProbe:   shProbe(10, 5, 5, 120, ping),
		ReadinessProbe: shProbe(0, 5, 5, 3, ready),
		LivenessProbe:  shProbe(0, 10, 5, 6, ping),
		Resources:      r.resources(),
		VolumeMounts:   []kapi.VolumeMount{mount("data", "/var/lib/mysql"), mount("init", "/docker-entrypoint-initdb.d")},
	}
	spec := kapi.PodSpec{
		Containers: []kapi.Container{c},
		Volumes:    []kapi.Volume{configVolume("init", name+"-init", 0o644)},
	}
	if r.enterprise() {
		spec.Containers = append(spec.Containers, kapi.Container{
			Name:           "exporter",
			Image:          "docker.io/prom/mysqld-exporter:v0.17.2",
			Args:           []string{"--mysqld.address=127.0.0.1:3306", "--mysqld.username=root"},
			Env:            []kapi.EnvVar{r.secretEnv("MYSQLD_EXPORTER_PASSWORD", "root_password")},
			Ports:          []kapi.ContainerPort{port("metrics", 9104)},
			ReadinessProbe: httpProbe("/", "metrics", 5, 10, 3),
			Resources:      r.small(),
		})
	}
	r.headless(headless, name, svcPort("mysql", 3306))
	r.clientService(name, name, map[string]string{LabelOSID: r.inst.OSID, "app.kubernetes.io/component": name,
		"statefulset.kubernetes.io/pod-name": name + "-0"}, svcPort("mysql", 3306))
	if r.ha() {
		r.clientService(name+"-replicas", name, nil, svcPort("mysql", 3306))
	}
	r.dataStatefulSet(name, headless, r.replicas, spec, false)
	r.pdb(name, r.replicas)
	r.backupJob(r.image, fmt.Sprintf(`MYSQL_PWD="$ROOT_PASSWORD" %s -h "$HOST" -uroot --single-transaction --routines --events --all-databases > "/backup/%s-$stamp.sql"`, f.dump, f.name),
		env("HOST", r.host(name)), r.secretEnv("ROOT_PASSWORD", "root_password"))
	return nil
}
