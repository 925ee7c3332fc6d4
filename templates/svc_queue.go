package templates

import (
	"fmt"
	"github.com/runos/runos-agent/templates/kapi"
	"strings"
)

func secretVolume(name string, keys map[string]string, mode int32) kapi.Volume {
	var items []kapi.KeyToPath
	for _, k := range sortedKeys(keys) {
		items = append(items, kapi.KeyToPath{Key: k, Path: keys[k]})
	}
	return kapi.Volume{Name: name, VolumeSource: kapi.VolumeSource{Secret: &kapi.SecretVolumeSource{
		SecretName: SecretName, Items: items, DefaultMode: &mode}}}
}

// --- MongoDB ---

func mongodbDef() *def {
	return &def{
		svc: Service{
			Name: "mongodb", Title: "MongoDB", Kind: "database", Version: "8.0.13",
			Description: "Document database, always a replica set (transactions and change streams work at every tier).",
			Provides:    "mongodb",
		},
		image: "docker.io/library/mongo", port: 27017,
		storage: "10Gi", cpu: "250m", memory: "1Gi",
		haReplicas: 3, minHA: 3, maxHA: 7, odd: true,
		haOK:    true,
		haNote:  "replica set of 3/5/7 members with automatic election (initiated by a bootstrap Job); members are fixed at creation",
		entNote: "mongodb_exporter sidecar, nightly mongodump backup CronJob",
		backup:  true,
		creds: []credSpec{
			{"username", "user:app"}, {"password_app", "password"}, {"dbname", "db:app"},
			{"root_password", "password"}, {"keyfile", "token"},
		},
		env: []envSpec{
			{"MONGODB_URI", "url"}, {"MONGO_URL", "url"}, {"MONGODB_HOST", "host"}, {"MONGODB_PORT", "port"},
			{"MONGODB_USER", "user"}, {"MONGODB_PASSWORD", "password"}, {"MONGODB_DATABASE", "database"},
		},
		metrics: metricsAt(9216, ""),
		connect: func(r *rc) Connection {
			u, p, db := r.creds["username"], r.creds["password_app"], r.creds["dbname"]
			h := r.host("mongodb")
			// The Service is only the seed: drivers discover the members
			// (pod DNS names) from the replica set configuration.
			return Connection{Host: h, Port: 27017, User: u, Password: p, Database: db,
				URL: fmt.Sprintf("mongodb://%s:%s@%s:27017/%s?replicaSet=rs0&authSource=%s", u, p, h, db, db)}
		},
		render: renderMongo,
	}
}

// mongoStart installs the replica-set key file with the owner and mode
// mongod insists on, then runs the image's entrypoint (which creates the
// root user on first start).
const mongoStart = `set -eu
install -o mongodb -g mongodb -m 0400 /keyfile/keyfile /work/keyfile
exec docker-entrypoint.sh mongod --replSet rs0 --bind_ip_all --keyFile /work/keyfile --wiredTigerCacheSizeGB "$CACHE_GB" "$@"
`

// mongoInit initiates the replica set (first run only) and creates the
// app user; every step checks first, so re-running is harmless.
const mongoInit = `set -eu
until mongosh --quiet --host "$FIRST" --eval 'db.adminCommand("ping").ok' >/dev/null 2>&1; do echo "waiting for $FIRST"; sleep 3; done
mongosh --quiet "mongodb://root:$ROOT_PASSWORD@$FIRST:27017/admin?directConnection=true" --eval '
const members = process.env.MEMBERS.split(",").map((h, i) => ({ _id: i, host: h + ":27017" }));
try { rs.status(); print("replica set already initiated"); }
catch (e) {
  if (e.codeName !== "NotYetInitialized") throw e;
  rs.initiate({ _id: "rs0", members: members });
  print("replica set initiated");
}
'
until mongosh --quiet "mongodb://root:$ROOT_PASSWORD@$SEED:27017/admin?replicaSet=rs0" --eval 'db.hello().isWritablePrimary' 2>/dev/null | grep -q true; do echo "waiting for a primary"; sleep 3; done
mongosh --quiet "mongodb://root:$ROOT_PASSWORD@$SEED:27017/admin?replicaSet=rs0" --eval '
const d = db.getSiblingDB(process.env.APP_DB);
if (d.getUser(process.env.APP_USER) === null) {
  d.createUser({ user: process.env.APP_USER, pwd: process.env.APP_PASSWORD, roles: [{ role: "dbOwner", db: process.env.APP_DB }] });
  print("app user created");
} else { print("app user exists"); }
'
`

func renderMongo(r *rc) error {
	headless := "mongodb-headless"
	var members []string
	for i := range r.replicas {
		members = append(members, r.podHost("mongodb", i, headless))
	}
	// WiredTiger cache: half of (memory - 1 GiB), at least 0.25 GB, as
	// mongod would pick for the container's limit.
	cache := (float64(r.memoryMiB()) - 1024) / 2 / 1024
	if cache < 0.25 {
		cache = 0.25
	}
	ping := `mongosh --quiet --eval 'db.adminCommand("ping").ok' | grep -q 1`
	c := kapi.Container{
		Name:    "mongod",
		Image:   r.image,
		Command: []string{"bash", "-c", mongoStart, "--"},
		Env: []kapi.EnvVar{
			env("MONGO_INITDB_ROOT_USERNAME", "root"),
			r.secretEnv("MONGO_INITDB_ROOT_PASSWORD", "root_password"),
			env("CACHE_GB", fmt.Sprintf("%.2f", cache)),
		},
		Ports:          []kapi.ContainerPort{port("mongodb", 27017)},
		StartupProbe:   shProbe(5, 5, 10, 120, ping),
		ReadinessProbe: shProbe(0, 10, 10, 3, ping),
		LivenessProbe:  tcpProbe("mongodb", 0, 10, 6),
		Resources:      r.resources(),
		VolumeMounts:   []kapi.VolumeMount{mount("data", "/data/db"), mount("keyfile", "/keyfile"), mount("work", "/work")},
	}
	spec := kapi.PodSpec{
		Containers: []kapi.Container{c},
		Volumes:    []kapi.Volume{secretVolume("keyfile", map[string]string{"keyfile": "keyfile"}, 0o400), emptyDir("work")},
	}
	if r.enterprise() {
		spec.Containers = append(spec.Containers, kapi.Container{
			Name:  "exporter",
			Image: "docker.io/percona/mongodb_exporter:0.47.1",
			Args:  []string{"--collect-all", "--compatible-mode", "--web.listen-address=:9216"},
			Env: []kapi.EnvVar{
				r.secretEnv("ROOT_PASSWORD", "root_password"),
				env("MONGODB_URI", "mongodb://root:$(ROOT_PASSWORD)@127.0.0.1:27017/admin?directConnection=true"),
			},
			Ports:          []kapi.ContainerPort{port("metrics", 9216)},
			ReadinessProbe: tcpProbe("metrics", 5, 10, 3),
			Resources:      r.small(),
		})
	}
	r.headless(headless, "mongodb", svcPort("mongodb", 27017))
	r.clientService("mongodb", "mongodb", nil, svcPort("mongodb", 27017))
	r.dataStatefulSet("mongodb", headless, r.replicas, spec, true)
	r.pdb("mongodb", r.replicas)
	r.bootstrapJob("init-replica-set", r.image, mongoInit,
		env("FIRST", members[0]),
		env("SEED", r.host("mongodb")),
		env("MEMBERS", strings.Join(members, ",")),
		r.secretEnv("ROOT_PASSWORD", "root_password"),
		r.secretEnv("APP_USER", "username"),
		r.secretEnv("APP_PASSWORD", "password_app"),
		r.secretEnv("APP_DB", "dbname"))
	r.backupJob(r.image, `mongodump --uri="mongodb://root:$ROOT_PASSWORD@$HOST:27017/admin?replicaSet=rs0&readPreference=secondaryPreferred" --gzip --archive="/backup/mongodb-$stamp.archive.gz"`,
		env("HOST", r.host("mongodb")), r.secretEnv("ROOT_PASSWORD", "root_password"))
	return nil
}

// --- Kafka (KRaft) ---

func kafkaDef() *def {
	return &def{
		svc: Service{
			Name: "kafka", Title: "Apache Kafka", Kind: "queue", Version: "4.1.0",
			Description: "Event streaming in KRaft mode (no ZooKeeper); SASL/PLAIN authentication for clients and brokers.",
			Provides:    "kafka",
		},
		image: "docker.io/apache/kafka", port: 9092,
		storage: "20Gi", cpu: "500m", memory: "1Gi",
		haReplicas: 3, minHA: 3, maxHA: 7, odd: true,
		haOK: true,
		haNote: "3/5/7 combined broker+controller nodes: KRaft quorum, replication factor 3, min.insync.replicas 2; " +
			"nodes are fixed at creation",
		entNote: "kafka_exporter sidecar; no backup job (durability comes from replication)",
		extra: []setting{
			{Setting{Key: "partitions", Default: "3", Description: "default partitions of auto-created topics"}, intRange(1, 1000)},
			{Setting{Key: "retention_hours", Default: "168", Description: "log.retention.hours"}, intRange(1, 876000)},
		},
		creds: []credSpec{
			{"username", "user:app"}, {"password_app", "password"}, {"broker_password", "password"}, {"cluster_id", "kraft-id"},
		},
		env: []envSpec{
			{"KAFKA_BOOTSTRAP_SERVERS", "hostport"}, {"KAFKA_BROKERS", "hostport"},
			{"KAFKA_SECURITY_PROTOCOL", "const:SASL_PLAINTEXT"}, {"KAFKA_SASL_MECHANISM", "const:PLAIN"},
			{"KAFKA_SASL_USERNAME", "user"}, {"KAFKA_SASL_PASSWORD", "password"},
		},
		metrics: metricsAt(9308, ""),
		connect: func(r *rc) Connection { return r.appUserConnection("kafka", 9092, "kafka", "") },
		render:  renderKafka,
	}
}

// kafkaStart derives the node id and advertised names from the pod name
// and builds the JAAS lines from the Secret, then runs the image's
// launcher, which turns KAFKA_* variables into server.properties.
const kafkaStart = `set -eu
export KAFKA_NODE_ID="${HOSTNAME##*-}"
self="$HOSTNAME.$HEADLESS"
export KAFKA_ADVERTISED_LISTENERS="CLIENT://$self:9092,INTERNAL://$self:9094"
users="user_broker=\"$BROKER_PASSWORD\" user_$APP_USER=\"$APP_PASSWORD\""
export KAFKA_LISTENER_NAME_CLIENT_PLAIN_SASL_JAAS_CONFIG="org.apache.kafka.common.security.plain.PlainLoginModule required $users;"
export KAFKA_LISTENER_NAME_INTERNAL_PLAIN_SASL_JAAS_CONFIG="org.apache.kafka.common.security.plain.PlainLoginModule required username=\"broker\" password=\"$BROKER_PASSWORD\" $users;"
unset BROKER_PASSWORD APP_PASSWORD
mkdir -p /var/lib/kafka/data/logs
exec /etc/kafka/docker/run
`

func renderKafka(r *rc) error {
	headless := "kafka-headless"
	var voters []string
	for i := range r.replicas {
		voters = append(voters, fmt.Sprintf("%d@%s:9093", i, r.podHost("kafka", i, headless)))
	}
	rf, isr := 1, 1
	if r.replicas >= 3 {
		rf, isr = 3, 2
	}
	heap := r.memoryMiB() / 2
	c := kapi.Container{
		Name:    "kafka",
		Image:   r.image,
		Command: []string{"bash", "-c", kafkaStart},
		Env: []kapi.EnvVar{
			env("HEADLESS", headless+"."+r.ns+".svc.cluster.local"),
			r.secretEnv("CLUSTER_ID", "cluster_id"),
			r.secretEnv("APP_USER", "username"),
			r.secretEnv("APP_PASSWORD", "password_app"),
			r.secretEnv("BROKER_PASSWORD", "broker_password"),
			env("KAFKA_PROCESS_ROLES", "broker,controller"),
			env("KAFKA_CONTROLLER_QUORUM_VOTERS", strings.Join(voters, ",")),
			env("KAFKA_LISTENERS", "CLIENT://:9092,INTERNAL://:9094,CONTROLLER://:9093"),
			env("KAFKA_LISTENER_SECURITY_PROTOCOL_MAP", "CLIENT:SASL_PLAINTEXT,INTERNAL:SASL_PLAINTEXT,CONTROLLER:PLAINTEXT"),
			env("KAFKA_CONTROLLER_LISTENER_NAMES", "CONTROLLER"),
			env("KAFKA_INTER_BROKER_LISTENER_NAME", "INTERNAL"),
			env("KAFKA_SASL_ENABLED_MECHANISMS", "PLAIN"),
			env("KAFKA_SASL_MECHANISM_INTER_BROKER_PROTOCOL", "PLAIN"),
			env("KAFKA_LOG_DIRS", "/var/lib/kafka/data/logs"),
			env("KAFKA_NUM_PARTITIONS", r.set["partitions"]),
			env("KAFKA_LOG_RETENTION_HOURS", r.set["retention_hours"]),
			env("KAFKA_DEFAULT_REPLICATION_FACTOR", fmt.Sprint(rf)),
			env("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", fmt.Sprint(rf)),
			env("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", fmt.Sprint(rf)),
			env("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", fmt.Sprint(isr)),
			env("KAFKA_MIN_INSYNC_REPLICAS", fmt.Sprint(isr)),
			env("KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS", "3000"),
			env("KAFKA_HEAP_OPTS", fmt.Sprintf("-Xms%dm -Xmx%dm", heap, heap)),
		},
		Ports:          []kapi.ContainerPort{port("client", 9092), port("controller", 9093), port("internal", 9094)},
		StartupProbe:   tcpProbe("client", 10, 5, 60),
		ReadinessProbe: tcpProbe("client", 0, 10, 3),
		LivenessProbe:  tcpProbe("controller", 0, 10, 6),
		Resources:      r.resources(),
		VolumeMounts:   []kapi.VolumeMount{mount("data", "/var/lib/kafka/data")},
	}
	uid := int64(1000)
	grace := int64(60)
	spec := kapi.PodSpec{
		Containers:                    []kapi.Container{c},
		SecurityContext:               &kapi.PodSecurityContext{FSGroup: &uid},
		TerminationGracePeriodSeconds: &grace,
	}
	if r.enterprise() {
		spec.Containers = append(spec.Containers, kapi.Container{
			Name:  "exporter",
			Image: "docker.io/danielqsj/kafka-exporter:v1.9.0",
			Args: []string{"--kafka.server=127.0.0.1:9092", "--sasl.enabled", "--sasl.mechanism=plain",
				"--sasl.username=$(APP_USER)", "--sasl.password=$(APP_PASSWORD)", "--web.listen-address=:9308"},
			Env: []kapi.EnvVar{
				r.secretEnv("APP_USER", "username"),
				r.secretEnv("APP_PASSWORD", "password_app"),
			},
			Ports:          []kapi.ContainerPort{port("metrics", 9308)},
			ReadinessProbe: tcpProbe("metrics", 10, 10, 3),
			Resources:      r.small(),
		})
	}
	r.headless(headless, "kafka", svcPort("client", 9092), svcPort("controller", 9093), svcPort("internal", 9094))
	r.clientService("kafka", "kafka", nil, svcPort("client", 9092))
	r.dataStatefulSet("kafka", headless, r.replicas, spec, true)
	r.pdb("kafka", r.replicas)
	return nil
}

// --- RabbitMQ ---

func rabbitmqDef() *def {
	return &def{
		svc: Service{
			Name: "rabbitmq", Title: "RabbitMQ", Kind: "queue", Version: "4.1.4",
			Description: "AMQP message broker with the management UI and Prometheus plugin.",
			Provides:    "amqp",
		},
		image: "docker.io/library/rabbitmq", tagFormat: "%s-management", port: 5672,
		storage: "8Gi", cpu: "250m", memory: "1Gi",
		haReplicas: 3, minHA: 3, maxHA: 7, odd: true,
		haOK: true,
		haNote: "cluster of 3/5/7 nodes formed from the StatefulSet's stable names (classic peer discovery), " +
			"quorum queues by default, pause_minority on partitions; nodes are fixed at creation",
		entNote: "native Prometheus endpoint scraped, nightly definitions export backup CronJob",
		backup:  true,
		creds: []credSpec{
			{"username", "user:app"}, {"password_app", "password"}, {"erlang_cookie", "token"},
		},
		env: []envSpec{
			{"AMQP_URL", "url"}, {"RABBITMQ_URL", "url"}, {"RABBITMQ_HOST", "host"}, {"RABBITMQ_PORT", "port"},
			{"RABBITMQ_USER", "user"}, {"RABBITMQ_PASSWORD", "password"},
		},
		metrics: metricsAt(15692, ""),
		connect: func(r *rc) Connection { return r.appUserConnection("rabbitmq", 5672, "amqp", "/") },
		render:  renderRabbitMQ,
	}
}

// rabbitStart installs the Erlang cookie (owner-only, as Erlang demands)
// and the secret part of the config, then runs the image's entrypoint.
const rabbitStart = `set -eu
install -o rabbitmq -g rabbitmq -m 0600 /cookie/erlang_cookie /var/lib/rabbitmq/.erlang.cookie
# Probes run rabbitmq-diagnostics as root: it needs the cookie too.
install -m 0600 /cookie/erlang_cookie /root/.erlang.cookie
cp /config/enabled_plugins /etc/rabbitmq/enabled_plugins
cp /config/rabbitmq.conf /etc/rabbitmq/conf.d/10-runos.conf
printf 'default_user = %s\ndefault_pass = %s\n' "$APP_USER" "$APP_PASSWORD" > /etc/rabbitmq/conf.d/20-secret.conf
chown -R rabbitmq:rabbitmq /etc/rabbitmq
unset APP_PASSWORD
exec docker-entrypoint.sh rabbitmq-server
`

func renderRabbitMQ(r *rc) error {
	headless := "rabbitmq-headless"
	var b strings.Builder
	fmt.Fprintf(&b, `listeners.tcp.default = 5672
management.tcp.port = 15672
prometheus.tcp.port = 15692
loopback_users.guest = false
vm_memory_high_watermark.relative = 0.6
disk_free_limit.absolute = 1GB
cluster_name = %s
cluster_partition_handling = pause_minority
cluster_formation.peer_discovery_backend = classic_config
`, r.inst.OSID)
	for i := range r.replicas {
		fmt.Fprintf(&b, "cluster_formation.classic_config.nodes.%d = rabbit@%s\n", i+1, r.podHost("rabbitmq", i, headless))
	}
	if r.replicas > 1 {
		b.WriteString("default_queue_type = quorum\n")
	}
	r.configMap("rabbitmq-config", "rabbitmq", map[string]string{
		"rabbitmq.conf":   b.String(),
		"enabled_plugins": "[rabbitmq_management,rabbitmq_prometheus].\n",
	})
	c := kapi.Container{
		Name:    "rabbitmq",
		Image:   r.image,
		Command: []string{"bash", "-c", rabbitStart},
		Env: []kapi.EnvVar{
			fieldEnv("POD_NAME", "metadata.name"),
			env("RABBITMQ_USE_LONGNAME", "true"),
			env("RABBITMQ_NODENAME", "rabbit@$(POD_NAME)."+headless+"."+r.ns+".svc.cluster.local"),
			r.secretEnv("APP_USER", "username"),
			r.secretEnv("APP_PASSWORD", "password_app"),
		},
		Ports: []kapi.ContainerPort{port("amqp", 5672), port("management", 15672), port("prometheus", 15692),
			port("epmd", 4369), port("dist", 25672)},
		StartupProbe:   shProbe(10, 10, 20, 60, "rabbitmq-diagnostics -q ping"),
		ReadinessProbe: tcpProbe("amqp", 0, 10, 3),
		LivenessProbe:  shProbe(0, 30, 20, 6, "rabbitmq-diagnostics -q ping"),
		Resources:      r.resources(),
		VolumeMounts: []kapi.VolumeMount{mount("data", "/var/lib/rabbitmq"), mount("config", "/config"),
			mount("cookie", "/cookie")},
	}
	grace := int64(120)
	spec := kapi.PodSpec{
		Containers: []kapi.Container{c},
		Volumes: []kapi.Volume{configVolume("config", "rabbitmq-config", 0o644),
			secretVolume("cookie", map[string]string{"erlang_cookie": "erlang_cookie"}, 0o400)},
		TerminationGracePeriodSeconds: &grace,
	}
	r.headless(headless, "rabbitmq", svcPort("amqp", 5672), svcPort("epmd", 4369), svcPort("dist", 25672))
	r.clientService("rabbitmq", "rabbitmq", nil, svcPort("amqp", 5672), svcPort("management", 15672))
	r.dataStatefulSet("rabbitmq", headless, r.replicas, spec, true)
	r.pdb("rabbitmq", r.replicas)
	r.backupJob(curlImage, `curl -sf -u "$APP_USER:$APP_PASSWORD" "http://$HOST:15672/api/definitions" -o "/backup/rabbitmq-$stamp.json"`,
		env("HOST", r.host("rabbitmq")), r.secretEnv("APP_USER", "username"), r.secretEnv("APP_PASSWORD", "password_app"))
	return nil
}

// --- MinIO ---

func minioDef() *def {
	return &def{
		svc: Service{
			Name: "minio", Title: "MinIO", Kind: "storage", Version: "RELEASE.2025-09-07T16-13-09Z",
			Description: "S3-compatible object storage; a bucket is created for apps.",
			Provides:    "s3",
		},
		image: "quay.io/minio/minio", port: 9000,
		storage: "20Gi", cpu: "250m", memory: "1Gi",
		haReplicas: 4, minHA: 4, maxHA: 16,
		haOK:    true,
		haNote:  "distributed erasure-coded cluster of 4..16 nodes (one drive each): reads survive losing half the nodes, writes all but half minus one; nodes are fixed at creation",
		entNote: "cluster metrics endpoint scraped (public); no backup job (use bucket replication to another site)",
		extra: []setting{
			{Setting{Key: "bucket", Default: "app", Description: "bucket created for apps"}, bucketName},
		},
		creds: []credSpec{{"access_key", "password"}, {"secret_key", "token"}},
		env: []envSpec{
			{"S3_ENDPOINT", "key:url"}, {"AWS_ENDPOINT_URL", "key:url"}, {"S3_BUCKET", "database"},
			{"AWS_ACCESS_KEY_ID", "key:access_key"}, {"AWS_SECRET_ACCESS_KEY", "key:secret_key"},
			{"AWS_REGION", "const:us-east-1"},
		},
		metrics: metricsAt(9000, "/minio/v2/metrics/cluster"),
		connect: func(r *rc) Connection {
			h := r.host("minio")
			return Connection{Host: h, Port: 9000, User: r.creds["access_key"], Password: r.creds["secret_key"],
				Database: r.set["bucket"], URL: "http://" + h + ":9000"}
		},
		render: renderMinio,
	}
}

func bucketName(v string) error {
	if len(v) < 3 || len(v) > 63 || validName(v) != nil {
		return fmt.Errorf("%q: 3-63 lowercase letters, digits and inner dashes, starting with a letter", v)
	}
	return nil
}

// minioBucket creates the apps' bucket with a SigV4-signed PUT (curl
// signs it); "already owned by you" counts as done.
const minioBucket = `set -eu
until curl -sf "$ENDPOINT/minio/health/ready" >/dev/null; do echo "waiting for $ENDPOINT"; sleep 3; done
code=$(curl -s -o /tmp/out -w '%{http_code}' -X PUT --aws-sigv4 "aws:amz:us-east-1:s3" --user "$ACCESS_KEY:$SECRET_KEY" "$ENDPOINT/$BUCKET")
cat /tmp/out; echo
case "$code" in 200) echo "bucket created";; 409) grep -q BucketAlreadyOwnedByYou /tmp/out && echo "bucket exists";; *) exit 1;; esac
`

func renderMinio(r *rc) error {
	headless := "minio-headless"
	args := []string{"server", "/data", "--console-address", ":9001"}
	if r.replicas > 1 {
		args = []string{"server", fmt.Sprintf("http://minio-{0...%d}.%s.%s.svc.cluster.local/data", r.replicas-1, headless, r.ns),
			"--console-address", ":9001"}
	}
	c := kapi.Container{
		Name:  "minio",
		Image: r.image,
		Args:  args,
		Env: []kapi.EnvVar{
			r.secretEnv("MINIO_ROOT_USER", "access_key"),
			r.secretEnv("MINIO_ROOT_PASSWORD", "secret_key"),
		},
		Ports:          []kapi.ContainerPort{port("s3", 9000), port("console", 9001)},
		StartupProbe:   httpProbe("/minio/health/live", "s3", 5, 5, 60),
		ReadinessProbe: httpProbe("/minio/health/ready", "s3", 0, 10, 3),
		LivenessProbe:  httpProbe("/minio/health/live", "s3", 0, 10, 6),
		Resources:      r.resources(),
		VolumeMounts:   []kapi.VolumeMount{mount("data", "/data")},
	}
	if r.enterprise() {
		c.Env = append(c.Env, env("MINIO_PROMETHEUS_AUTH_TYPE", "public"))
	}
	r.headless(headless, "minio", svcPort("s3", 9000))
	r.clientService("minio", "minio", nil, svcPort("s3", 9000), svcPort("console", 9001))
	r.dataStatefulSet("minio", headless, r.replicas, kapi.PodSpec{Containers: []kapi.Container{c}}, true)
	r.pdb("minio", r.replicas)
	r.bootstrapJob("create-bucket", curlImage, minioBucket,
		env("ENDPOINT", "http://"+r.host("minio")+":9000"), env("BUCKET", r.set["bucket"]),
		r.secretEnv("ACCESS_KEY", "access_key"), r.secretEnv("SECRET_KEY", "secret_key"))
	return nil
}
