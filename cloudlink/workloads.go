package cloudlink

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"

	"github.com/runos/runos-agent/api"
	"github.com/runos/runos-agent/cloudproto"
	"github.com/runos/runos-agent/raftstore"
	"github.com/runos/runos-agent/templates"
	"github.com/runos/runos-agent/workload"
)

// Services and apps through the cloud: their records in the mirror, and the
// console's deploys and deletes as commands.
//
// A deploy draws an OSID and credentials. For a command they are drawn from
// a stream keyed by the cluster data key and the command ID, so a retried
// or replayed command yields the same OSID (and its result can be told
// again without storing it), while the FSM's dedup by command ID applies
// it once. The credentials are sealed into the record like a local deploy's;
// they never travel to the cloud. The records themselves are built and
// validated by package workload, as for a local deploy.

// workloadLists are every service and app of st in the api shape, sorted
// by OSID. The mirror computes UsedBy itself, so a service's record does
// not change when an app starts using it.
func workloadLists(st *raftstore.State) ([]api.Service, []api.App) {
	svcs := make([]api.Service, 0, len(st.Workloads.Services))
	for _, id := range slices.Sorted(maps.Keys(st.Workloads.Services)) {
		svcs = append(svcs, *workload.ServiceView(st.Workloads.Services[id], nil))
	}
	apps := make([]api.App, 0, len(st.Workloads.Apps))
	for _, id := range slices.Sorted(maps.Keys(st.Workloads.Apps)) {
		apps = append(apps, *workload.AppView(st.Workloads.Apps[id]))
	}
	return svcs, apps
}

// workloadChange fills a change's record of the service or app osid.
func workloadChange(st *raftstore.State, ch *cloudproto.Change, osid string) {
	ch.WorkloadID = osid
	if r, ok := st.Workloads.Services[osid]; ok {
		ch.Service = workload.ServiceView(r, nil)
	} else if r, ok := st.Workloads.Apps[osid]; ok {
		ch.App = workload.AppView(r)
	}
}

// cmdRand is the random stream of command cmdID for purpose: ChaCha8
// seeded by an HMAC of the command ID under the cluster data key.
func (l *Link) cmdRand(purpose, cmdID string) io.Reader {
	key := l.cfg.DataKey.Current()
	m := hmac.New(sha256.New, key[:])
	m.Write([]byte("runos cloud " + purpose + "\x00" + cmdID))
	var seed [32]byte
	copy(seed[:], m.Sum(nil))
	return rand.NewChaCha8(seed)
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

// prepareService is deploy_service: the OSID and credentials come from the
// command's own stream (see cmdRand).
func (l *Link) prepareService(c cloudproto.Command) (*raftstore.Command, error) {
	var a cloudproto.DeployServiceArgs
	if err := decodeArgs("deploy_service", c, &a); err != nil {
		return nil, err
	}
	rnd := l.cmdRand("deploy", c.ID)
	rec, err := workload.NewServiceRecord(l.cfg.DataKey, rnd, func(service string) (string, error) { return templates.NewOSID(rnd, service) }, a)
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
		return json.Marshal(workload.ServiceView(r, st.Workloads.Apps))
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
	if err := workload.CheckApp(a); err != nil {
		return nil, fmt.Errorf("deploy_app: %w", err)
	}
	osid, err := l.appOSID(c, a.Name)
	if err != nil {
		return nil, fmt.Errorf("deploy_app: %w", err)
	}
	st, _ := l.cfg.Host.State()
	// A second app of the name is refused by Apply (ErrAppNameTaken); that
	// error is the command's result then.
	rec, _, err := workload.NewAppRecord(l.cfg.DataKey, osid, a, st.Workloads.Services)
	if err != nil {
		return nil, fmt.Errorf("deploy_app: %w", err)
	}
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
		return json.Marshal(workload.AppView(r))
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
