package cloudlink

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"

	"github.com/runos/runos-agent/api"
	"github.com/runos/runos-agent/cloudproto"
	"github.com/runos/runos-agent/raftstore"
	"github.com/runos/runos-agent/seal"
	"github.com/runos/runos-agent/templates"
)

// Services and apps through the cloud: their records in the mirror, and the
// console's deploys and deletes as commands.
//
// A deploy draws an OSID and credentials. For a command they are drawn from
// a stream keyed by the cluster data key and the command ID, so a retried
// or replayed command yields the same OSID (and its result can be told
// again without storing it), while the FSM's dedup by command ID applies
// it once. The credentials are sealed into the record like a local deploy's;
// they never travel to the cloud.

// ServiceView is a service record in the local API's shape (never its
// credentials). apps, when given, fill UsedBy.
func ServiceView(r *raftstore.ServiceRecord, apps map[string]*raftstore.AppRecord) *api.Service {
	s := &api.Service{
		OSID: r.OSID, Service: r.Service, Tier: r.Tier, Set: r.Set,
		Status: r.Status.Phase, Reason: r.Status.Reason, Ready: r.Status.Ready, Total: r.Status.Total,
		Conditions: r.Status.Conditions, CreatedAt: r.CreatedAt, UpdatedAt: r.Status.UpdatedAt,
	}
	if svc, ok := templates.Lookup(r.Service); ok {
		for _, t := range svc.Tiers {
			if t.Name == r.Tier {
				s.TierNote = t.Note
			}
		}
	}
	for _, app := range sortedApps(apps) {
		if app.Desired == raftstore.DesiredPresent && slices.Contains(app.Uses, r.OSID) {
			s.UsedBy = append(s.UsedBy, app.OSID)
		}
	}
	return s
}

// AppView is an app record in the local API's shape.
func AppView(r *raftstore.AppRecord) *api.App {
	return &api.App{
		OSID: r.OSID, Name: r.Name, Image: r.Image, Port: r.Port, Env: r.Env, Uses: r.Uses, Tier: "app",
		Status: r.Status.Phase, Reason: r.Status.Reason, Ready: r.Status.Ready, Total: r.Status.Total,
		Conditions: r.Status.Conditions, CreatedAt: r.CreatedAt, UpdatedAt: r.Status.UpdatedAt,
	}
}

func sortedApps(m map[string]*raftstore.AppRecord) []*raftstore.AppRecord {
	out := slices.Collect(maps.Values(m))
	slices.SortFunc(out, func(a, b *raftstore.AppRecord) int { return strings.Compare(a.OSID, b.OSID) })
	return out
}

// workloadLists are every service and app of st in the api shape, sorted
// by OSID. The mirror computes UsedBy itself, so a service's record does
// not change when an app starts using it.
func workloadLists(st *raftstore.State) ([]api.Service, []api.App) {
	svcs := make([]api.Service, 0, len(st.Workloads.Services))
	for _, id := range slices.Sorted(maps.Keys(st.Workloads.Services)) {
		svcs = append(svcs, *ServiceView(st.Workloads.Services[id], nil))
	}
	apps := make([]api.App, 0, len(st.Workloads.Apps))
	for _, r := range sortedApps(st.Workloads.Apps) {
		apps = append(apps, *AppView(r))
	}
	return svcs, apps
}

// workloadChange fills a change's record of the service or app osid.
func workloadChange(st *raftstore.State, ch *cloudproto.Change, osid string) {
	ch.WorkloadID = osid
	if r, ok := st.Workloads.Services[osid]; ok {
		ch.Service = ServiceView(r, nil)
	} else if r, ok := st.Workloads.Apps[osid]; ok {
		ch.App = AppView(r)
	}
}

// cmdRand is the random stream of command cmdID for purpose: ChaCha8
// seeded by an HMAC of the command ID under the cluster data key.
func (l *Link) cmdRand(purpose, cmdID string) io.Reader {
	m := hmac.New(sha256.New, l.cfg.DataKey[:])
	m.Write([]byte("runos cloud " + purpose + "\x00" + cmdID))
	var seed [32]byte
	copy(seed[:], m.Sum(nil))
	return rand.NewChaCha8(seed)
}

func catalogNames() string {
	var names []string
	for _, s := range templates.Catalog() {
		names = append(names, s.Name)
	}
	return strings.Join(names, ", ")
}

// serviceOSID is the OSID deploy_service command c creates.
func (l *Link) serviceOSID(c cloudproto.Command, service string) (io.Reader, string, error) {
	rnd := l.cmdRand("deploy", c.ID)
	osid, err := templates.NewOSID(rnd, service)
	return rnd, osid, err
}

func decodeArgs(kind string, c cloudproto.Command, v any) error {
	if len(c.Args) == 0 {
		return fmt.Errorf("%s: arguments are required", kind)
	}
	dec := json.NewDecoder(strings.NewReader(string(c.Args)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%s: malformed args: %w", kind, err)
	}
	return nil
}

// ErrInvalid marks a deploy refused for what it asks (the local API's 400).
var ErrInvalid = errors.New("invalid request")

type invalidErr struct{ error }

func (e invalidErr) Is(target error) bool { return target == ErrInvalid }
func (e invalidErr) Unwrap() error        { return e.error }

func invalid(err error) error { return invalidErr{err} }

// NewServiceRecord is the one validation of a service deploy, for the
// local API and cloud commands alike: a known service, tier and --set keys,
// an instance that renders. drawOSID picks the OSID (before the
// credentials are drawn from rnd); the credentials are sealed with key.
// Errors the request causes are ErrInvalid.
func NewServiceRecord(key seal.Key, rnd io.Reader, drawOSID func(service string) (string, error), req api.ServiceRequest) (*raftstore.ServiceRecord, error) {
	if _, ok := templates.Lookup(req.Service); !ok {
		return nil, invalid(fmt.Errorf("unknown service %q (one of: %s)", req.Service, catalogNames()))
	}
	if req.Tier == "" {
		req.Tier = templates.TierLightweight
	}
	osid, err := drawOSID(req.Service)
	if err != nil {
		return nil, err
	}
	inst := templates.Instance{OSID: osid, Service: req.Service, Tier: req.Tier, Set: maps.Clone(req.Set)}
	if err := templates.Validate(&inst); err != nil {
		return nil, invalid(err)
	}
	creds, err := templates.NewCredentials(rnd, req.Service)
	if err != nil {
		return nil, err
	}
	inst.Credentials = creds
	// Render now so a request that cannot render fails here, not later in
	// the reconciler.
	if _, err := templates.Render(inst); err != nil {
		return nil, invalid(err)
	}
	credJSON, _ := json.Marshal(creds)
	sealed, err := seal.Seal(key, raftstore.CredentialsPurpose(osid), credJSON)
	if err != nil {
		return nil, err
	}
	return &raftstore.ServiceRecord{OSID: osid, Service: inst.Service, Tier: inst.Tier, Set: inst.Set, Credentials: sealed}, nil
}

// OpenInstance opens a record's credentials into a templates.Instance.
func OpenInstance(key seal.Key, r *raftstore.ServiceRecord) (templates.Instance, error) {
	inst := templates.Instance{OSID: r.OSID, Service: r.Service, Tier: r.Tier, Set: maps.Clone(r.Set)}
	b, err := seal.Open(key, raftstore.CredentialsPurpose(r.OSID), r.Credentials)
	if err != nil {
		return inst, fmt.Errorf("%s credentials: %w", r.OSID, err)
	}
	if err := json.Unmarshal(b, &inst.Credentials); err != nil {
		return inst, fmt.Errorf("%s credentials: %w", r.OSID, err)
	}
	return inst, nil
}

// BuildApp resolves an app's --use instances (each must be present) into
// the templates.App the reconciler renders. A missing instance is
// ErrInvalid.
func BuildApp(key seal.Key, osid, name, image string, port int, env map[string]string, uses []string, services map[string]*raftstore.ServiceRecord) (templates.App, error) {
	app := templates.App{OSID: osid, Name: name, Image: image, Port: port, Env: maps.Clone(env)}
	for _, u := range uses {
		s, ok := services[u]
		if !ok || s.Desired != raftstore.DesiredPresent {
			return app, invalid(fmt.Errorf("--use %s: no such service instance (see `runos-agent services list`)", u))
		}
		inst, err := OpenInstance(key, s)
		if err != nil {
			return app, err
		}
		app.Uses = append(app.Uses, inst)
	}
	return app, nil
}

// prepareService is deploy_service: the OSID and credentials come from the
// command's own stream (see cmdRand).
func (l *Link) prepareService(c cloudproto.Command) (*raftstore.Command, error) {
	var a cloudproto.DeployServiceArgs
	if err := decodeArgs("deploy_service", c, &a); err != nil {
		return nil, err
	}
	rnd := l.cmdRand("deploy", c.ID)
	rec, err := NewServiceRecord(l.cfg.DataKey, rnd, func(service string) (string, error) { return templates.NewOSID(rnd, service) }, a)
	if err != nil {
		return nil, fmt.Errorf("deploy_service: %w", err)
	}
	return &raftstore.Command{Op: raftstore.OpWorkloadServiceCreate, Workload: &raftstore.WorkloadCmd{Service: rec}}, nil
}

// serviceResult reports the instance the command created, as it is now.
func (l *Link) serviceResult(c cloudproto.Command, _ json.RawMessage) (json.RawMessage, error) {
	var a cloudproto.DeployServiceArgs
	if err := decodeArgs("deploy_service", c, &a); err != nil {
		return nil, err
	}
	_, osid, err := l.serviceOSID(c, a.Service)
	if err != nil {
		return nil, err
	}
	st, _ := l.cfg.Host.State()
	if r, ok := st.Workloads.Services[osid]; ok {
		return json.Marshal(ServiceView(r, st.Workloads.Apps))
	}
	// Deleted and purged since: the OSID is still the answer.
	return json.Marshal(api.Service{OSID: osid, Service: a.Service, Tier: a.Tier, Status: api.StatusDeleting})
}

func (l *Link) appOSID(c cloudproto.Command, name string) (string, error) {
	return templates.NewOSID(l.cmdRand("deploy app", c.ID), name)
}

// prepareApp validates an app as the local API does: a name and an image,
// the name free, every --use instance present, and it renders.
func (l *Link) prepareApp(c cloudproto.Command) (*raftstore.Command, error) {
	var a cloudproto.DeployAppArgs
	if err := decodeArgs("deploy_app", c, &a); err != nil {
		return nil, err
	}
	if a.Name == "" || a.Image == "" {
		return nil, errors.New("deploy_app: an app needs a name and an image")
	}
	osid, err := l.appOSID(c, a.Name)
	if err != nil {
		return nil, fmt.Errorf("deploy_app: %w", err)
	}
	st, _ := l.cfg.Host.State()
	app, err := BuildApp(l.cfg.DataKey, osid, a.Name, a.Image, a.Port, a.Env, a.Use, st.Workloads.Services)
	if err != nil {
		return nil, fmt.Errorf("deploy_app: %w", err)
	}
	if _, err := templates.RenderApp(app); err != nil {
		return nil, fmt.Errorf("deploy_app: %w", err)
	}
	// A second app of the name is refused by Apply too (ErrAppNameTaken);
	// that error is the command's result then.
	rec := &raftstore.AppRecord{OSID: osid, Name: a.Name, Image: a.Image, Port: a.Port, Env: maps.Clone(a.Env), Uses: slices.Clone(a.Use)}
	return &raftstore.Command{Op: raftstore.OpWorkloadAppCreate, Workload: &raftstore.WorkloadCmd{App: rec}}, nil
}

func (l *Link) appResult(c cloudproto.Command, _ json.RawMessage) (json.RawMessage, error) {
	var a cloudproto.DeployAppArgs
	if err := decodeArgs("deploy_app", c, &a); err != nil {
		return nil, err
	}
	osid, err := l.appOSID(c, a.Name)
	if err != nil {
		return nil, err
	}
	st, _ := l.cfg.Host.State()
	if r, ok := st.Workloads.Apps[osid]; ok {
		return json.Marshal(AppView(r))
	}
	return json.Marshal(api.App{OSID: osid, Name: a.Name, Image: a.Image, Tier: "app", Status: api.StatusDeleting})
}

// prepareDelete builds delete_service / delete_app. Apply refuses an
// unknown OSID (or a service an app uses) with a clear error, which is
// the command's result.
func prepareDelete(kind, op string) func(c cloudproto.Command) (*raftstore.Command, error) {
	return func(c cloudproto.Command) (*raftstore.Command, error) {
		var a cloudproto.DeleteWorkloadArgs
		if err := decodeArgs(kind, c, &a); err != nil {
			return nil, err
		}
		if a.OSID == "" {
			return nil, fmt.Errorf("%s: args must name the osid ({\"osid\": ...})", kind)
		}
		return &raftstore.Command{Op: op, Workload: &raftstore.WorkloadCmd{OSID: a.OSID}}, nil
	}
}

func deleteResult(c cloudproto.Command, _ json.RawMessage) (json.RawMessage, error) {
	var a cloudproto.DeleteWorkloadArgs
	json.Unmarshal(c.Args, &a)
	return json.Marshal(map[string]string{"osid": a.OSID, "status": api.StatusDeleting})
}
