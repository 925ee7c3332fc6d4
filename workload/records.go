package workload

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"

	"github.com/runos/runos-agent/templates/kapi"

	"github.com/runos/runos-agent/api"
	"github.com/runos/runos-agent/raftstore"
	"github.com/runos/runos-agent/seal"
	"github.com/runos/runos-agent/templates"
)

// Records: the one validation of a deploy, for the local API and cloud
// commands alike. The caller draws the OSID and the credentials' randomness:
// the local API from crypto/rand, a cloud command from a stream keyed by its
// command ID, so a retried command yields the same record. Credentials are
// sealed into the record; they never leave the cluster.

func catalogNames() string {
	var names []string
	for _, s := range templates.Catalog() {
		names = append(names, s.Name)
	}
	return strings.Join(names, ", ")
}

// NewServiceRecord validates a service deploy — a known service, tier and
// --set keys, an instance that renders — and builds its record. drawOSID
// picks the OSID (before the credentials are drawn from rnd); the
// credentials are sealed with key. Errors the request causes are
// ErrInvalid.
func NewServiceRecord(key seal.Sealer, rnd io.Reader, drawOSID func(service string) (string, error), req api.ServiceRequest) (*raftstore.ServiceRecord, error) {
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
	sealed, err := key.Seal(raftstore.CredentialsPurpose(osid), credJSON)
	if err != nil {
		return nil, err
	}
	return &raftstore.ServiceRecord{OSID: osid, Service: inst.Service, Tier: inst.Tier, Set: inst.Set, Credentials: sealed}, nil
}

// OpenInstance opens a record's credentials into a templates.Instance.
func OpenInstance(key seal.Sealer, r *raftstore.ServiceRecord) (templates.Instance, error) {
	inst := templates.Instance{OSID: r.OSID, Service: r.Service, Tier: r.Tier, Set: maps.Clone(r.Set)}
	b, err := key.Open(raftstore.CredentialsPurpose(r.OSID), r.Credentials)
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
func BuildApp(key seal.Sealer, osid, name, image string, port int, env map[string]string, uses []string, services map[string]*raftstore.ServiceRecord) (templates.App, error) {
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

// CheckApp refuses an app request without a name or an image (ErrInvalid).
func CheckApp(req api.AppRequest) error {
	if req.Name == "" || req.Image == "" {
		return invalid(errors.New("an app needs a name and an image"))
	}
	return nil
}

// NewAppRecord validates an app deploy — a name and an image, every --use
// instance present and usable, an app that renders — and builds its record
// under osid. It also returns the rendered objects (for InjectedEnv).
// Errors the request causes are ErrInvalid. That the name is free is
// checked by Apply (raftstore.ErrAppNameTaken).
func NewAppRecord(key seal.Sealer, osid string, req api.AppRequest, services map[string]*raftstore.ServiceRecord) (*raftstore.AppRecord, []kapi.Object, error) {
	if err := CheckApp(req); err != nil {
		return nil, nil, err
	}
	uses := slices.Clone(req.Use)
	app, err := BuildApp(key, osid, req.Name, req.Image, req.Port, req.Env, uses, services)
	if err != nil {
		return nil, nil, err
	}
	objs, err := templates.RenderApp(app)
	if err != nil {
		return nil, nil, invalid(err)
	}
	rec := &raftstore.AppRecord{OSID: osid, Name: req.Name, Image: req.Image, Port: req.Port, Env: maps.Clone(req.Env), Uses: uses}
	return rec, objs, nil
}

// newOSID draws an OSID not used by any service or app.
func newOSID(rnd io.Reader, st *raftstore.State, name string) (string, error) {
	for range 20 {
		id, err := templates.NewOSID(rnd, name)
		if err != nil {
			return "", invalid(err)
		}
		if !st.Workloads.Exists(id) {
			return id, nil
		}
	}
	return "", errors.New("no free OSID found")
}
