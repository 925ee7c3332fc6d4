package workload

import (
	"slices"

	"github.com/runos/runos-agent/templates/kapi"

	"github.com/runos/runos-agent/api"
	"github.com/runos/runos-agent/raftstore"
	"github.com/runos/runos-agent/templates"
)

// Views: records in the API shape. The local API and the cloud's mirror
// show the same shape; neither ever shows credentials (ServiceInfo adds
// connection details on its own).

// ServiceView is a service record in the API shape. apps, when given, fill
// UsedBy.
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

// AppView is an app record in the API shape.
func AppView(r *raftstore.AppRecord) *api.App {
	return &api.App{
		OSID: r.OSID, Name: r.Name, Image: r.Image, Port: r.Port, Env: r.Env, Uses: r.Uses, Tier: "app",
		Status: r.Status.Phase, Reason: r.Status.Reason, Ready: r.Status.Ready, Total: r.Status.Total,
		Conditions: r.Status.Conditions, CreatedAt: r.CreatedAt, UpdatedAt: r.Status.UpdatedAt,
	}
}

// injectedEnv lists the env variables of the app's Deployment that come
// from --use (Secret references and connection details), sorted.
func injectedEnv(objs []kapi.Object, own map[string]string) []string {
	var out []string
	for _, o := range objs {
		if o.Kind() != "Deployment" {
			continue
		}
		for _, c := range o.Slice("spec", "template", "spec", "containers") {
			m, _ := c.(map[string]any)
			for _, e := range kapi.Object(m).Slice("env") {
				em, _ := e.(map[string]any)
				name, _ := em["name"].(string)
				if _, mine := own[name]; !mine {
					out = append(out, name)
				}
			}
		}
	}
	slices.Sort(out)
	return out
}
