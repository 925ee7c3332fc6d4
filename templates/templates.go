// Package templates is the service catalog: 20+ services, each at three tiers,
// rendered into Kubernetes objects in the instance's own namespace (its
// OSID). Everything here is a pure function: no cluster, no clock, no I/O;
// randomness comes in through an io.Reader.
//
// This file is the contract the rest of the agent codes against (kube/,
// agent/, the CLI and UI). The catalog itself lives in the other files.
package templates

// Tiers.
const (
	TierLightweight = "lightweight"
	TierHA          = "ha"
	TierEnterprise  = "enterprise"
)

// Labels put on every object an instance owns (and on its namespace).
const (
	LabelManagedBy = "app.kubernetes.io/managed-by" // "runos"
	LabelOSID      = "runos.io/osid"
	LabelService   = "runos.io/service"
	LabelTier      = "runos.io/tier"
	ManagedBy      = "runos"
)

// Service describes one catalog entry.
type Service struct {
	Name        string `json:"name"`    // "postgres"
	Title       string `json:"title"`   // "PostgreSQL"
	Kind        string `json:"kind"`    // "database", "cache", "queue", ...
	Version     string `json:"version"` // default image version
	Description string `json:"description"`
	// Tiers lists each tier and what it means for this service; a tier the
	// software cannot honour without an operator says so in its Note.
	Tiers []TierInfo `json:"tiers"`
	// Settings are the overridable keys (`--set key=value`) with defaults.
	Settings []Setting `json:"settings"`
	// Provides names the connection kind apps can `--use` ("postgres",
	// "redis", "s3", ...), and the env variables an app then receives.
	Provides string   `json:"provides"`
	Env      []string `json:"env"`
}

// TierInfo is one tier of a service.
type TierInfo struct {
	Name     string `json:"name"`
	Replicas int    `json:"replicas"`
	HA       bool   `json:"ha"`             // really fault tolerant at this tier
	Note     string `json:"note,omitempty"` // e.g. "single primary; HA needs an operator"
}

// Setting is one override key.
type Setting struct {
	Key         string `json:"key"` // "version", "storage", "replicas", "cpu", "memory", ...
	Default     string `json:"default"`
	Description string `json:"description"`
}

// Instance is what a deploy asks for, fully resolved: the agent builds it
// (OSID, credentials) and commits it to Raft before anything is rendered.
type Instance struct {
	OSID    string            `json:"osid"`
	Service string            `json:"service"`
	Tier    string            `json:"tier"`
	Set     map[string]string `json:"set,omitempty"` // validated overrides
	// Credentials are generated once (NewCredentials) and kept, sealed, in
	// the Raft state; rendering puts them in a Secret.
	Credentials map[string]string `json:"-"`
}

// Connection is how an app (or a person) reaches an instance.
type Connection struct {
	Host     string `json:"host"` // <svc>.<osid>.svc.cluster.local
	Port     int    `json:"port"`
	User     string `json:"user,omitempty"`
	Password string `json:"password,omitempty"`
	Database string `json:"database,omitempty"`
	URL      string `json:"url,omitempty"`
	// Secret is the Secret (in the instance's namespace) holding the
	// credentials; SecretKeys maps env variable -> key in that Secret.
	Secret     string            `json:"secret"`
	SecretKeys map[string]string `json:"secret_keys,omitempty"`
}

// App is a user's container deployed with connections to instances.
type App struct {
	OSID  string            `json:"osid"`
	Name  string            `json:"name"`
	Image string            `json:"image"`
	Port  int               `json:"port,omitempty"`
	Env   map[string]string `json:"env,omitempty"`
	Uses  []Instance        `json:"uses,omitempty"` // resolved instances it consumes
}

// The catalog files implement:
//
//	func Catalog() []Service                           // sorted by name
//	func Lookup(name string) (Service, bool)
//	func NewOSID(rand io.Reader, service string) (string, error) // "<service>-<5 chars>"
//	func ValidOSID(osid string) error
//	func NewCredentials(rand io.Reader, service string) (map[string]string, error)
//	func Validate(inst *Instance) error               // fills defaults, rejects bad --set
//	func Render(inst Instance) ([]kapi.Object, error) // namespace first
//	func Connect(inst Instance) (Connection, error)
//	func RenderApp(app App) ([]kapi.Object, error)
//
// Notes for callers (the reconciler):
//   - Validate pins every default into Instance.Set; commit the validated
//     instance. Render and Connect re-validate and need Credentials.
//   - Render's order is the apply order: Namespace, ServiceAccount/RBAC,
//     Secret, ConfigMaps, PVCs, Services, StatefulSets, Deployments, Jobs,
//     PDBs, CronJobs. Objects carry no status and no creationTimestamp.
//   - Jobs (bootstrap: enable auth, initiate a replica set, create a
//     bucket) are idempotent and kept after completion; their pod template
//     is immutable, so apply them unchanged (they are deterministic).
//   - The instance Secret is SecretName ("credentials") in the OSID
//     namespace. RenderApp also renders, in the app's namespace, a copy of
//     each used instance's Secret named by the instance's OSID (label
//     LabelUses); the reconciler applies it like the rest and re-renders
//     the app when a used instance changes.
//   - Delete an instance or app by deleting its namespace (the OSID); PVCs
//     of StatefulSets are retained until then.
