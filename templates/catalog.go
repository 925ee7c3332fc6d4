package templates

import (
	"fmt"
	"github.com/runos/runos-agent/templates/kapi"
	"slices"
	"sort"
	"strings"
	"sync"
)

// def is one catalog entry: the public Service description plus what it
// takes to render it. Entries are built once (registry) and never mutated.
type def struct {
	svc Service

	image     string // repository, e.g. "docker.io/library/postgres"
	tagFormat string // how a version becomes a tag ("%s-management"); "" means the version itself
	port      int    // main client port

	// Storage, CPU and memory defaults; stateless services have no storage.
	storage, cpu, memory string
	stateless            bool

	// Replica rules for ha/enterprise: default, range, odd-only for quorum
	// systems. Lightweight always runs one replica.
	haReplicas, minHA, maxHA int
	odd                      bool
	haOK                     bool   // ha is really fault tolerant
	haNote                   string // what ha means for this service
	entNote                  string // what enterprise adds

	// metrics: where Prometheus scrapes at the enterprise tier (native
	// endpoint or an exporter sidecar); port 0 means none.
	metrics metricsSpec

	// backup: enterprise renders a backup CronJob (and its PVC).
	backup bool

	extra []setting // service-specific --set keys

	// creds lists the credential keys and how they are generated.
	creds []credSpec

	// values are plain per-instance values apps can get ("value:KEY"
	// env fields), e.g. the list of memcached servers.
	values func(r *rc) map[string]string

	// derive adds deterministic values computed from the credentials to
	// the Secret (config files with passwords, basic-auth headers).
	derive func(r *rc) map[string]string

	render  func(r *rc) error
	connect func(r *rc) Connection
	// env: variables an app receives when it uses an instance, in order.
	env []envSpec
}

// metricsSpec is where Prometheus scrapes a pod: port 0 means nowhere;
// path "" means /metrics.
type metricsSpec struct {
	port int
	path string
}

func metricsAt(port int, path string) metricsSpec { return metricsSpec{port, path} }

// setting is a --set key with its validator.
type setting struct {
	Setting
	check func(v string) error
}

// envSpec is one env variable an app gets: a connection field ("host",
// "port", "user", "password", "database", "url") or a raw Secret key.
type envSpec struct {
	name  string
	field string
}

var registry = sync.OnceValue(func() map[string]*def {
	m := map[string]*def{}
	for _, d := range allDefs() {
		if _, dup := m[d.svc.Name]; dup {
			panic("templates: duplicate service " + d.svc.Name)
		}
		d.finish()
		m[d.svc.Name] = d
	}
	return m
})

// allDefs is the list of catalog builders; each service file adds itself.
func allDefs() []*def {
	return []*def{
		postgresDef(), pgvectorDef(), timescaledbDef(), redisDef(), valkeyDef(), mysqlDef(), mariadbDef(), memcachedDef(), etcdDef(), natsDef(),
		mongodbDef(), kafkaDef(), rabbitmqDef(), minioDef(),
		clickhouseDef(), opensearchDef(), influxdbDef(), meilisearchDef(),
		keycloakDef(), grafanaDef(), prometheusDef(), lokiDef(),
		zookeeperDef(), mosquittoDef(), qdrantDef(), couchdbDef(), neo4jDef(), cassandraDef(),
	}
}

// finish fills the public Service description from the definition.
func (d *def) finish() {
	s := &d.svc
	if d.haReplicas == 0 {
		d.haReplicas = 1
	}
	if d.minHA == 0 {
		d.minHA = d.haReplicas
	}
	if d.maxHA == 0 {
		d.maxHA = 9
		if d.haReplicas == 1 {
			d.maxHA = 1
		}
	}
	s.Tiers = []TierInfo{
		{Name: TierLightweight, Replicas: 1, HA: false, Note: "one replica, small requests; no fault tolerance"},
		{Name: TierHA, Replicas: d.haReplicas, HA: d.haOK, Note: d.haNote},
		{Name: TierEnterprise, Replicas: d.haReplicas, HA: d.haOK, Note: strings.TrimSpace("ha plus guaranteed resources (requests = limits). " + d.entNote)},
	}
	s.Settings = []Setting{
		{Key: "version", Default: s.Version, Description: "image tag version of " + d.image},
	}
	if !d.stateless {
		s.Settings = append(s.Settings, Setting{Key: "storage", Default: d.storage, Description: "volume size per replica (Kubernetes quantity)"})
	}
	rep := fmt.Sprintf("replicas at ha/enterprise (%d..%d", d.minHA, d.maxHA)
	if d.odd {
		rep += ", odd: quorum"
	}
	rep += "); lightweight runs 1"
	s.Settings = append(s.Settings,
		Setting{Key: "replicas", Default: fmt.Sprint(d.haReplicas), Description: rep},
		Setting{Key: "cpu", Default: d.cpu, Description: "CPU request per replica (limit too at enterprise); default doubled at ha/enterprise: " + doubled(d.cpu)},
		Setting{Key: "memory", Default: d.memory, Description: "memory request and limit per replica; default doubled at ha/enterprise: " + doubled(d.memory)},
	)
	if d.backup {
		s.Settings = append(s.Settings,
			Setting{Key: "backup_schedule", Default: "17 3 * * *", Description: "enterprise: cron schedule of the backup job"},
			Setting{Key: "backup_keep_days", Default: "7", Description: "enterprise: days backups are kept"},
			Setting{Key: "backup_storage", Default: d.storage, Description: "enterprise: size of the backup volume"},
		)
	}
	for _, e := range d.extra {
		s.Settings = append(s.Settings, e.Setting)
	}
	for _, e := range d.env {
		s.Env = append(s.Env, e.name)
	}
}

// doubled is the ha/enterprise default of a cpu or memory setting: twice
// the lightweight one.
func doubled(q string) string {
	v := kapi.MustParseQuantity(q)
	v.Add(v)
	return v.String()
}

// Catalog lists every service, sorted by name. The slices are copies.
func Catalog() []Service {
	reg := registry()
	out := make([]Service, 0, len(reg))
	for _, d := range reg {
		out = append(out, d.svc.clone())
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Lookup returns one service by name.
func Lookup(name string) (Service, bool) {
	d, ok := registry()[name]
	if !ok {
		return Service{}, false
	}
	return d.svc.clone(), true
}

func lookupDef(name string) (*def, error) {
	d, ok := registry()[name]
	if !ok {
		return nil, fmt.Errorf("unknown service %q (known: %s)", name, strings.Join(serviceNames(), ", "))
	}
	return d, nil
}

func serviceNames() []string {
	var names []string
	for n := range registry() {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

func (s Service) clone() Service {
	s.Tiers = slices.Clone(s.Tiers)
	s.Settings = slices.Clone(s.Settings)
	s.Env = slices.Clone(s.Env)
	return s
}
