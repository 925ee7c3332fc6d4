package templates

import (
	"crypto/rand"
	"encoding/json"
	"encoding/xml"
	"fmt"
	"github.com/runos/runos-agent/templates/kapi"
	"io"
	"maps"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/validation"
	"sigs.k8s.io/yaml"
)

var tiers = []string{TierLightweight, TierHA, TierEnterprise}

func newInstance(t testing.TB, service, tier string, set map[string]string) Instance {
	t.Helper()
	return newInstanceFrom(t, rand.Reader, service, tier, set)
}

// newInstanceFrom is newInstance with OSID and credentials drawn from rnd.
func newInstanceFrom(t testing.TB, rnd io.Reader, service, tier string, set map[string]string) Instance {
	t.Helper()
	osid, err := NewOSID(rnd, service)
	if err != nil {
		t.Fatal(err)
	}
	creds, err := NewCredentials(rnd, service)
	if err != nil {
		t.Fatal(err)
	}
	inst := Instance{OSID: osid, Service: service, Tier: tier, Set: set, Credentials: creds}
	if err := Validate(&inst); err != nil {
		t.Fatalf("%s/%s: %v", service, tier, err)
	}
	return inst
}

// rendered is a Render result decoded into typed objects for checking.
type rendered struct {
	objs     []*unstructured.Unstructured
	secrets  map[string]*corev1.Secret
	cms      map[string]*corev1.ConfigMap
	services map[string]*corev1.Service
	pvcs     map[string]*corev1.PersistentVolumeClaim
	pods     map[string]*corev1.PodTemplateSpec // by workload kind/name
	replicas map[string]int32
	pdbs     []*policyv1.PodDisruptionBudget
	sts      map[string]*appsv1.StatefulSet
	jobPods  map[string]*corev1.PodTemplateSpec
}

func decode(t testing.TB, objs []*unstructured.Unstructured) *rendered {
	t.Helper()
	r := &rendered{objs: objs, secrets: map[string]*corev1.Secret{}, cms: map[string]*corev1.ConfigMap{},
		services: map[string]*corev1.Service{}, pvcs: map[string]*corev1.PersistentVolumeClaim{},
		pods: map[string]*corev1.PodTemplateSpec{}, replicas: map[string]int32{}, sts: map[string]*appsv1.StatefulSet{},
		jobPods: map[string]*corev1.PodTemplateSpec{}}
	conv := func(u *unstructured.Unstructured, into any) {
		if err := runtime.DefaultUnstructuredConverter.FromUnstructuredWithValidation(u.Object, into, true); err != nil {
			t.Fatalf("%s %s: decode: %v", u.GetKind(), u.GetName(), err)
		}
	}
	for _, u := range objs {
		key := u.GetKind() + "/" + u.GetName()
		switch u.GetKind() {
		case "Secret":
			var s corev1.Secret
			conv(u, &s)
			r.secrets[s.Name] = &s
		case "ConfigMap":
			var c corev1.ConfigMap
			conv(u, &c)
			r.cms[c.Name] = &c
		case "Service":
			var s corev1.Service
			conv(u, &s)
			r.services[s.Name] = &s
		case "PersistentVolumeClaim":
			var p corev1.PersistentVolumeClaim
			conv(u, &p)
			r.pvcs[p.Name] = &p
		case "StatefulSet":
			var s appsv1.StatefulSet
			conv(u, &s)
			r.pods[key] = &s.Spec.Template
			r.replicas[key] = *s.Spec.Replicas
			r.sts[s.Name] = &s
		case "Deployment":
			var d appsv1.Deployment
			conv(u, &d)
			r.pods[key] = &d.Spec.Template
			r.replicas[key] = *d.Spec.Replicas
		case "Job":
			var j batchv1.Job
			conv(u, &j)
			r.jobPods[key] = &j.Spec.Template
		case "CronJob":
			var j batchv1.CronJob
			conv(u, &j)
			r.jobPods[key] = &j.Spec.JobTemplate.Spec.Template
		case "PodDisruptionBudget":
			var p policyv1.PodDisruptionBudget
			conv(u, &p)
			r.pdbs = append(r.pdbs, &p)
		case "Namespace", "ServiceAccount", "Role", "RoleBinding":
		default:
			t.Fatalf("unexpected kind %s", u.GetKind())
		}
	}
	return r
}

func matches(sel, labels map[string]string) bool {
	if len(sel) == 0 {
		return false
	}
	for k, v := range sel {
		if k == "statefulset.kubernetes.io/pod-name" || k == "apps.kubernetes.io/pod-index" {
			continue // set by the StatefulSet controller on each pod
		}
		if labels[k] != v {
			return false
		}
	}
	return true
}

var portNameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]*[a-z0-9])?$`)

// checkObjects asserts what Kubernetes validation and our own contract
// need of every rendered object.
func checkObjects(t *testing.T, inst Instance, objs []*unstructured.Unstructured) *rendered {
	t.Helper()
	if len(objs) == 0 || objs[0].GetKind() != "Namespace" || objs[0].GetName() != inst.OSID {
		t.Fatalf("first object is not Namespace %s", inst.OSID)
	}
	seen := map[string]bool{}
	for _, u := range objs {
		id := u.GetKind() + "/" + u.GetName()
		if u.GetAPIVersion() == "" || u.GetKind() == "" || u.GetName() == "" {
			t.Errorf("%s: missing apiVersion/kind/name", id)
		}
		if seen[id] {
			t.Errorf("%s rendered twice", id)
		}
		seen[id] = true
		if u.GetKind() != "Namespace" && u.GetNamespace() != inst.OSID {
			t.Errorf("%s: namespace %q, want %q", id, u.GetNamespace(), inst.OSID)
		}
		if errs := validation.IsDNS1123Label(u.GetName()); len(errs) > 0 {
			t.Errorf("%s: name: %v", id, errs)
		}
		if u.GetKind() == "Service" {
			if errs := validation.IsDNS1035Label(u.GetName()); len(errs) > 0 {
				t.Errorf("%s: name: %v", id, errs)
			}
		}
		l := u.GetLabels()
		if l[LabelManagedBy] != ManagedBy || l[LabelOSID] != inst.OSID || l[LabelService] != inst.Service || l[LabelTier] != inst.Tier {
			t.Errorf("%s: labels %v", id, l)
		}
		for k, v := range l {
			if errs := validation.IsQualifiedName(k); len(errs) > 0 {
				t.Errorf("%s: label key %q: %v", id, k, errs)
			}
			if errs := validation.IsValidLabelValue(v); len(errs) > 0 {
				t.Errorf("%s: label %s=%q: %v", id, k, v, errs)
			}
		}
	}
	r := decode(t, objs)
	for name, s := range r.services {
		if len(s.Spec.Ports) == 0 {
			t.Errorf("Service %s: no ports", name)
		}
		var pod *corev1.PodTemplateSpec
		for _, p := range r.pods {
			if matches(s.Spec.Selector, p.Labels) {
				pod = p
			}
		}
		if pod == nil {
			t.Errorf("Service %s: selector %v matches no workload", name, s.Spec.Selector)
			continue
		}
		for _, sp := range s.Spec.Ports {
			if !hasPort(pod, sp.TargetPort.StrVal) {
				t.Errorf("Service %s: target port %q not on the pods", name, sp.TargetPort.StrVal)
			}
			checkPortName(t, "Service "+name, sp.Name)
		}
	}
	for key, s := range r.sts {
		if h, ok := r.services[s.Spec.ServiceName]; !ok || h.Spec.ClusterIP != corev1.ClusterIPNone {
			t.Errorf("StatefulSet %s: governing headless Service %q missing", key, s.Spec.ServiceName)
		}
	}
	all := map[string]*corev1.PodTemplateSpec{}
	for k, p := range r.pods {
		all[k] = p
	}
	for k, p := range r.jobPods {
		all[k] = p
	}
	for key, p := range all {
		checkPod(t, key, p, r, inst.Tier == TierEnterprise)
	}
	for key, p := range r.pods {
		if !strings.HasPrefix(key, "StatefulSet/") && !strings.HasPrefix(key, "Deployment/") {
			continue
		}
		u := objByName(objs, key)
		sel, _, _ := unstructured.NestedStringMap(u.Object, "spec", "selector", "matchLabels")
		if !matches(sel, p.Labels) {
			t.Errorf("%s: selector %v does not match template labels %v", key, sel, p.Labels)
		}
		for _, c := range p.Spec.Containers {
			if c.ReadinessProbe == nil {
				t.Errorf("%s/%s: no readiness probe", key, c.Name)
			}
		}
	}
	return r
}

func objByName(objs []*unstructured.Unstructured, key string) *unstructured.Unstructured {
	for _, u := range objs {
		if u.GetKind()+"/"+u.GetName() == key {
			return u
		}
	}
	return nil
}

func hasPort(p *corev1.PodTemplateSpec, name string) bool {
	for _, c := range p.Spec.Containers {
		for _, cp := range c.Ports {
			if cp.Name == name {
				return true
			}
		}
	}
	return false
}

func checkPortName(t *testing.T, where, name string) {
	t.Helper()
	if errs := validation.IsValidPortName(name); len(errs) > 0 {
		t.Errorf("%s: port name %q: %v", where, name, errs)
	}
}

func checkPod(t *testing.T, key string, p *corev1.PodTemplateSpec, r *rendered, guaranteed bool) {
	t.Helper()
	vols := map[string]bool{}
	for _, v := range p.Spec.Volumes {
		if vols[v.Name] {
			t.Errorf("%s: volume %s twice", key, v.Name)
		}
		vols[v.Name] = true
		if v.Secret != nil && r.secrets[v.Secret.SecretName] != nil {
			for _, it := range v.Secret.Items {
				if _, ok := r.secrets[v.Secret.SecretName].Data[it.Key]; !ok {
					t.Errorf("%s: volume %s: Secret %s has no key %q", key, v.Name, v.Secret.SecretName, it.Key)
				}
			}
		}
		if v.ConfigMap != nil && r.cms[v.ConfigMap.Name] == nil {
			t.Errorf("%s: volume %s: ConfigMap %s not rendered", key, v.Name, v.ConfigMap.Name)
		}
		if v.PersistentVolumeClaim != nil && r.pvcs[v.PersistentVolumeClaim.ClaimName] == nil {
			t.Errorf("%s: volume %s: PVC %s not rendered", key, v.Name, v.PersistentVolumeClaim.ClaimName)
		}
		if v.Secret != nil && r.secrets[v.Secret.SecretName] == nil {
			t.Errorf("%s: volume %s: Secret %s not rendered", key, v.Name, v.Secret.SecretName)
		}
	}
	if strings.HasPrefix(key, "StatefulSet/") {
		for _, vc := range r.sts[strings.TrimPrefix(key, "StatefulSet/")].Spec.VolumeClaimTemplates {
			if vols[vc.Name] {
				t.Errorf("%s: claim template %s collides with a pod volume", key, vc.Name)
			}
			vols[vc.Name] = true
		}
	}
	portNames := map[string]bool{}
	cs := slices.Concat(p.Spec.InitContainers, p.Spec.Containers)
	names := map[string]bool{}
	for _, c := range cs {
		where := key + "/" + c.Name
		if names[c.Name] {
			t.Errorf("%s: duplicate container name", where)
		}
		names[c.Name] = true
		if errs := validation.IsDNS1123Label(c.Name); len(errs) > 0 {
			t.Errorf("%s: container name: %v", where, errs)
		}
		if !strings.Contains(c.Image, ":") || strings.HasSuffix(c.Image, ":latest") {
			t.Errorf("%s: image %q not pinned", where, c.Image)
		}
		for _, m := range c.VolumeMounts {
			if !vols[m.Name] {
				t.Errorf("%s: mount of undefined volume %q", where, m.Name)
			}
		}
		for _, e := range c.Env {
			if errs := validation.IsEnvVarName(e.Name); len(errs) > 0 {
				t.Errorf("%s: env %q: %v", where, e.Name, errs)
			}
			if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
				ref := e.ValueFrom.SecretKeyRef
				s := r.secrets[ref.Name]
				if s == nil {
					t.Errorf("%s: env %s: Secret %s not rendered", where, e.Name, ref.Name)
				} else if _, ok := s.Data[ref.Key]; !ok {
					t.Errorf("%s: env %s: Secret %s has no key %q", where, e.Name, ref.Name, ref.Key)
				}
			}
		}
		for _, cp := range c.Ports {
			checkPortName(t, where, cp.Name)
			if portNames[cp.Name] {
				t.Errorf("%s: port name %s used twice in the pod", where, cp.Name)
			}
			portNames[cp.Name] = true
		}
		paths := map[string]bool{}
		for _, m := range c.VolumeMounts {
			if paths[m.MountPath] {
				t.Errorf("%s: two mounts at %s", where, m.MountPath)
			}
			paths[m.MountPath] = true
		}
		if c.LivenessProbe != nil && c.LivenessProbe.SuccessThreshold != 1 || c.StartupProbe != nil && c.StartupProbe.SuccessThreshold != 1 {
			t.Errorf("%s: liveness/startup success threshold must be 1", where)
		}
		for _, pr := range []*corev1.Probe{c.ReadinessProbe, c.LivenessProbe, c.StartupProbe} {
			if pr == nil {
				continue
			}
			if pr.PeriodSeconds < 1 || pr.TimeoutSeconds < 1 || pr.FailureThreshold < 1 || pr.SuccessThreshold != 1 {
				t.Errorf("%s: probe timing %+v", where, pr)
			}
			port := ""
			if pr.TCPSocket != nil {
				port = pr.TCPSocket.Port.StrVal
			}
			if pr.HTTPGet != nil {
				port = pr.HTTPGet.Port.StrVal
			}
			if port != "" && !slices.ContainsFunc(c.Ports, func(p corev1.ContainerPort) bool { return p.Name == port }) {
				t.Errorf("%s: probe on port %q the container does not declare", where, port)
			}
		}
		req, lim := c.Resources.Requests, c.Resources.Limits
		if req.Cpu().IsZero() || req.Memory().IsZero() {
			t.Errorf("%s: no cpu/memory requests", where)
		}
		if guaranteed && (req.Cpu().Cmp(*lim.Cpu()) != 0 || req.Memory().Cmp(*lim.Memory()) != 0) {
			t.Errorf("%s: enterprise wants requests == limits, got %v / %v", where, req, lim)
		}
	}
}

func TestEveryServiceEveryTierRenders(t *testing.T) {
	cat := Catalog()
	if len(cat) < 20 {
		t.Fatalf("catalog has %d services", len(cat))
	}
	for _, s := range cat {
		for _, ti := range s.Tiers {
			t.Run(s.Name+"/"+ti.Name, func(t *testing.T) {
				inst := newInstance(t, s.Name, ti.Name, nil)
				objs, err := renderU(inst)
				if err != nil {
					t.Fatal(err)
				}
				r := checkObjects(t, inst, objs)
				// Credentials appear in the Secret only, never in a
				// ConfigMap, env value, command or annotation.
				for _, u := range objs {
					if u.GetKind() == "Secret" {
						continue
					}
					j, _ := json.Marshal(u)
					for k, v := range inst.Credentials {
						if len(v) >= 16 && strings.Contains(string(j), v) {
							t.Errorf("%s %s contains credential %s", u.GetKind(), u.GetName(), k)
						}
					}
				}
				if ti.Name == TierLightweight {
					for k, n := range r.replicas {
						if n != 1 && !strings.Contains(k, "haproxy") {
							t.Errorf("lightweight %s has %d replicas", k, n)
						}
					}
				}
				if ti.Name != TierLightweight && ti.HA {
					if ti.Replicas < 2 {
						t.Errorf("ha tier with %d replicas", ti.Replicas)
					}
					for k, p := range r.pods {
						if r.replicas[k] < 2 {
							continue
						}
						if p.Spec.Affinity == nil || p.Spec.Affinity.PodAntiAffinity == nil {
							t.Errorf("%s: no pod anti-affinity", k)
						}
						if !slices.ContainsFunc(r.pdbs, func(b *policyv1.PodDisruptionBudget) bool {
							return matches(b.Spec.Selector.MatchLabels, p.Labels)
						}) {
							t.Errorf("%s: no PodDisruptionBudget", k)
						}
					}
					if len(r.pdbs) == 0 {
						t.Error("no PodDisruptionBudget")
					}
				}
				if ti.Name != TierLightweight && !ti.HA && ti.Note == "" {
					t.Error("non-HA ha tier without a note saying why")
				}
			})
		}
	}
}

func TestCatalogDescribesEveryService(t *testing.T) {
	cat := Catalog()
	if !slices.IsSortedFunc(cat, func(a, b Service) int { return strings.Compare(a.Name, b.Name) }) {
		t.Error("catalog not sorted")
	}
	for _, s := range cat {
		if s.Title == "" || s.Kind == "" || s.Version == "" || s.Description == "" {
			t.Errorf("%s: incomplete %+v", s.Name, s)
		}
		if len(s.Tiers) != 3 || s.Tiers[0].Name != TierLightweight || s.Tiers[1].Name != TierHA || s.Tiers[2].Name != TierEnterprise {
			t.Errorf("%s: tiers %+v", s.Name, s.Tiers)
		}
		if (s.Provides == "") != (len(s.Env) == 0) {
			t.Errorf("%s: provides %q with env %v", s.Name, s.Provides, s.Env)
		}
		got, ok := Lookup(s.Name)
		if !ok || got.Name != s.Name {
			t.Errorf("Lookup(%s) = %v, %v", s.Name, got.Name, ok)
		}
		if len(s.Settings) > 0 {
			// Lookup returns copies: mutating one does not change the catalog.
			got.Settings[0].Default = "mutated"
			if again, _ := Lookup(s.Name); again.Settings[0].Default == "mutated" {
				t.Errorf("%s: Lookup shares its slices", s.Name)
			}
		}
	}
	if _, ok := Lookup("nope"); ok {
		t.Error("Lookup(nope) found something")
	}
}

func TestRenderDeterministic(t *testing.T) {
	for _, s := range Catalog() {
		for _, tier := range tiers {
			inst := newInstance(t, s.Name, tier, nil)
			a, err := renderU(inst)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := renderU(inst)
			ja, _ := json.Marshal(a)
			jb, _ := json.Marshal(b)
			if string(ja) != string(jb) {
				t.Errorf("%s/%s: two renders differ", s.Name, tier)
			}
		}
	}
}

func TestRenderNeedsCredentials(t *testing.T) {
	inst := newInstance(t, "postgres", TierLightweight, nil)
	inst.Credentials = nil
	if _, err := renderU(inst); err == nil || !strings.Contains(err.Error(), "credential") {
		t.Errorf("Render without credentials: %v", err)
	}
	if _, err := Connect(inst); err == nil {
		t.Error("Connect without credentials succeeded")
	}
}

func TestEnterpriseHasBackupAndMetrics(t *testing.T) {
	for _, s := range Catalog() {
		d, _ := lookupDef(s.Name)
		inst := newInstance(t, s.Name, TierEnterprise, nil)
		objs, err := renderU(inst)
		if err != nil {
			t.Fatal(err)
		}
		r := decode(t, objs)
		cron := r.jobPods["CronJob/backup"]
		if d.backup != (cron != nil) {
			t.Errorf("%s: backup %v but CronJob %v", s.Name, d.backup, cron != nil)
		}
		if cron != nil {
			// Backups are named <service>-..., which is what pruning removes.
			script := cron.Spec.Containers[0].Command[2]
			if !strings.Contains(script, "/backup/"+s.Name+"-$stamp") || !strings.Contains(script, "-name '"+s.Name+"-*'") {
				t.Errorf("%s: backup names and pruning disagree:\n%s", s.Name, script)
			}
			if r.pvcs["backup"] == nil {
				t.Errorf("%s: no backup PVC", s.Name)
			}
		}
		scraped := false
		for _, p := range r.pods {
			if p.Annotations["prometheus.io/scrape"] == "true" {
				scraped = true
				if !hasPortNumber(p, p.Annotations["prometheus.io/port"]) {
					t.Errorf("%s: scrape port %s not on the pod", s.Name, p.Annotations["prometheus.io/port"])
				}
			}
		}
		if scraped != (d.metrics.port != 0) {
			t.Errorf("%s: metrics port %d but scrape annotation %v", s.Name, d.metrics.port, scraped)
		}
		// Lightweight has neither.
		objs, _ = renderU(newInstance(t, s.Name, TierLightweight, nil))
		for _, u := range objs {
			if u.GetKind() == "CronJob" || u.GetAnnotations()["prometheus.io/scrape"] != "" {
				t.Errorf("%s: lightweight renders %s %s", s.Name, u.GetKind(), u.GetName())
			}
		}
	}
}

func hasPortNumber(p *corev1.PodTemplateSpec, n string) bool {
	for _, c := range p.Spec.Containers {
		for _, cp := range c.Ports {
			if fmt.Sprint(cp.ContainerPort) == n {
				return true
			}
		}
	}
	return false
}

func TestValidate(t *testing.T) {
	cases := []struct {
		service, tier string
		set           map[string]string
		err           string // "" = accepted
	}{
		{"postgres", TierLightweight, nil, ""},
		{"postgres", TierHA, map[string]string{"replicas": "3", "storage": "20Gi", "cpu": "1", "memory": "2Gi", "version": "16.10"}, ""},
		{"postgres", TierEnterprise, map[string]string{"backup_schedule": "0 */6 * * 1-5", "backup_keep_days": "30"}, ""},
		{"postgres", TierLightweight, map[string]string{"replicas": "1"}, ""},
		{"postgres", TierLightweight, map[string]string{"max_connections": "500"}, ""},
		{"postgres", TierLightweight, map[string]string{"bogus": "1"}, "unknown setting \"bogus\""},
		{"postgres", TierLightweight, map[string]string{"storage": "lots"}, "not a Kubernetes quantity"},
		{"postgres", TierLightweight, map[string]string{"storage": "1Ki"}, "out of range"},
		{"postgres", TierLightweight, map[string]string{"cpu": "-1"}, "not a Kubernetes quantity"},
		{"postgres", TierLightweight, map[string]string{"storage": "9e999999999"}, "not a Kubernetes quantity"},
		{"postgres", TierLightweight, map[string]string{"storage": "1e10"}, ""},
		{"postgres", TierLightweight, map[string]string{"cpu": "1.5"}, ""},
		{"postgres", TierLightweight, map[string]string{"memory": "1e30"}, "out of range"},
		{"postgres", TierLightweight, map[string]string{"replicas": "3"}, "lightweight tier runs 1 replica"},
		{"postgres", TierHA, map[string]string{"replicas": "1"}, "out of range"},
		{"postgres", TierHA, map[string]string{"replicas": "x"}, "not a number"},
		{"postgres", TierLightweight, map[string]string{"version": "17 ; rm -rf"}, "not an image tag"},
		{"postgres", TierLightweight, map[string]string{"version": ""}, "not an image tag"},
		{"postgres", TierLightweight, map[string]string{"version": "a/b"}, "not an image tag"},
		{"postgres", TierLightweight, map[string]string{"version": strings.Repeat("1", 64)}, "at most 63"},
		{"postgres", TierLightweight, map[string]string{"version": "17."}, "ending with a letter or digit"},
		{"postgres", TierLightweight, map[string]string{"max_connections": "5"}, "out of range"},
		{"postgres", TierEnterprise, map[string]string{"backup_schedule": "daily"}, "backup_schedule"},
		{"postgres", TierEnterprise, map[string]string{"backup_schedule": "61 * * * *"}, "backup_schedule"},
		{"postgres", TierEnterprise, map[string]string{"backup_keep_days": "0"}, "backup_keep_days"},
		{"redis", TierHA, map[string]string{"replicas": "4"}, "must be odd"},
		{"redis", TierHA, map[string]string{"replicas": "5"}, ""},
		{"redis", TierLightweight, map[string]string{"maxmemory_policy": "allkeys-lru"}, ""},
		{"redis", TierLightweight, map[string]string{"maxmemory_policy": "lru"}, "not one of"},
		{"grafana", TierHA, map[string]string{"replicas": "2"}, "single replica at every tier"},
		{"grafana", TierEnterprise, nil, ""},
		{"etcd", TierHA, map[string]string{"replicas": "5"}, ""},
		{"etcd", TierHA, map[string]string{"replicas": "9"}, "out of range"},
		{"minio", TierHA, map[string]string{"replicas": "3"}, "out of range"},
		{"minio", TierHA, map[string]string{"replicas": "6", "bucket": "media"}, ""},
		{"minio", TierHA, map[string]string{"bucket": "Bad_Bucket"}, "bucket"},
		{"kafka", TierHA, map[string]string{"partitions": "0"}, "out of range"},
		{"influxdb", TierLightweight, map[string]string{"retention": "30d"}, ""},
		{"influxdb", TierLightweight, map[string]string{"retention": "30 days"}, "retention"},
		{"loki", TierLightweight, map[string]string{"retention": "25h"}, "multiple of 24"},
		{"prometheus", TierLightweight, map[string]string{"retention": "90d"}, ""},
		{"prometheus", TierLightweight, map[string]string{"retention": "90"}, "retention"},
		{"memcached", TierLightweight, map[string]string{"storage": "1Gi"}, "unknown setting \"storage\""},
		{"postgres", "gold", nil, "unknown tier"},
		{"postgres", "", nil, "tier missing"},
		{"nosuch", TierLightweight, nil, "unknown service"},
	}
	for _, c := range cases {
		osid := c.service + "-abcde"
		inst := Instance{OSID: osid, Service: c.service, Tier: c.tier, Set: c.set}
		err := Validate(&inst)
		switch {
		case c.err == "" && err != nil:
			t.Errorf("%s/%s %v: %v", c.service, c.tier, c.set, err)
		case c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)):
			t.Errorf("%s/%s %v: got %v, want error with %q", c.service, c.tier, c.set, err, c.err)
		case c.err == "":
			d, _ := Lookup(c.service)
			for _, s := range d.Settings {
				if _, ok := inst.Set[s.Key]; !ok {
					t.Errorf("%s: default %s not filled in", c.service, s.Key)
				}
			}
		}
	}
	// Wrong OSID for the service.
	inst := Instance{OSID: "redis-abcde", Service: "postgres", Tier: TierLightweight}
	if err := Validate(&inst); err == nil {
		t.Error("postgres with a redis OSID accepted")
	}
	// Validation pins the defaults.
	inst = Instance{OSID: "postgres-abcde", Service: "postgres", Tier: TierHA}
	if err := Validate(&inst); err != nil {
		t.Fatal(err)
	}
	if inst.Set["version"] != "17.6" || inst.Set["replicas"] != "2" || inst.Set["memory"] != "1Gi" || inst.Set["cpu"] != "500m" {
		t.Errorf("defaults %v", inst.Set)
	}
}

func TestOSID(t *testing.T) {
	seen := map[string]bool{}
	for range 2000 {
		id, err := NewOSID(rand.Reader, "postgres")
		if err != nil {
			t.Fatal(err)
		}
		if err := ValidOSID(id); err != nil {
			t.Fatal(err)
		}
		suf := strings.TrimPrefix(id, "postgres-")
		if len(suf) != 5 || strings.ContainsAny(suf, "01oil") {
			t.Fatalf("bad suffix %q", suf)
		}
		seen[suf] = true
	}
	if len(seen) < 1990 {
		t.Errorf("only %d distinct suffixes in 2000", len(seen))
	}
	for _, bad := range []string{"", "postgres", "postgres-", "postgres-abcd", "postgres-abcdef", "postgres-abcd0",
		"postgres-abcdo", "postgres-abcdl", "postgres-abcdi", "postgres-abcd1", "Postgres-abcde", "-abcde",
		"9pg-abcde", "pg_x-abcde", strings.Repeat("a", 58) + "-abcde", "pg--abcde", "pg-ABCDE"} {
		if ValidOSID(bad) == nil {
			t.Errorf("ValidOSID(%q) accepted", bad)
		}
	}
	for _, good := range []string{"postgres-k9m3w", "my-app-22222", strings.Repeat("a", 57) + "-zzzzz"} {
		if err := ValidOSID(good); err != nil {
			t.Errorf("ValidOSID(%q): %v", good, err)
		}
	}
	if _, err := NewOSID(rand.Reader, "Bad_Name"); err == nil {
		t.Error("NewOSID accepted a bad name")
	}
	if _, err := NewOSID(strings.NewReader(""), "pg"); err == nil {
		t.Error("NewOSID with an empty random source succeeded")
	}
}

func FuzzValidOSID(f *testing.F) {
	for _, s := range []string{"postgres-k9m3w", "a-22222", "", "-", "x--abcde", "pg-abcd0"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if ValidOSID(s) != nil {
			return
		}
		// Anything accepted is a valid namespace name.
		if errs := validation.IsDNS1123Label(s); len(errs) > 0 {
			t.Fatalf("ValidOSID accepted %q: %v", s, errs)
		}
	})
}

func FuzzValidate(f *testing.F) {
	f.Add("postgres", "ha", "replicas", "3")
	f.Add("redis", "lightweight", "storage", "1Gi")
	f.Add("redis", "enterprise", "backup_schedule", "0 0 * * *")
	f.Add("minio", "ha", "bucket", "media")
	f.Add("postgres", "lightweight", "version", "17.6-bookworm")
	f.Add("etcd", "enterprise", "storage", "100Gi")
	f.Add("postgres", "lightweight", "storage", "9e999999999") // hung ParseQuantity before the grammar check
	f.Fuzz(func(t *testing.T, service, tier, key, value string) {
		inst := Instance{OSID: service + "-abcde", Service: service, Tier: tier, Set: map[string]string{key: value}}
		if Validate(&inst) != nil {
			return
		}
		// Whatever Validate accepts renders.
		creds, err := NewCredentials(rand.Reader, service)
		if err != nil {
			t.Fatal(err)
		}
		inst.Credentials = creds
		objs, err := renderU(inst)
		if err != nil {
			t.Fatalf("validated %+v but Render: %v", inst, err)
		}
		checkObjects(t, inst, objs)
	})
}

func TestCredentials(t *testing.T) {
	for _, s := range Catalog() {
		a, err := NewCredentials(rand.Reader, s.Name)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := NewCredentials(rand.Reader, s.Name)
		d, _ := lookupDef(s.Name)
		if len(a) != len(d.creds) {
			t.Errorf("%s: %d keys, want %d", s.Name, len(a), len(d.creds))
		}
		for _, c := range d.creds {
			if a[c.key] == "" {
				t.Errorf("%s: key %s empty", s.Name, c.key)
			}
			if c.kind == "password" || c.kind == "token" || c.kind == "complex-password" || c.kind == "kraft-id" {
				if a[c.key] == b[c.key] {
					t.Errorf("%s: %s same in two calls", s.Name, c.key)
				}
				if len(a[c.key]) < 22 {
					t.Errorf("%s: %s only %d characters", s.Name, c.key, len(a[c.key]))
				}
				if url.PathEscape(a[c.key]) != a[c.key] {
					t.Errorf("%s: %s needs URL escaping", s.Name, c.key)
				}
			}
		}
	}
	for range 500 {
		c, _ := NewCredentials(rand.Reader, "kafka")
		if id := c["cluster_id"]; len(id) != 22 || id[0] == '-' {
			t.Fatalf("bad KRaft cluster id %q", id)
		}
	}
	if _, err := NewCredentials(rand.Reader, "nosuch"); err == nil {
		t.Error("credentials for an unknown service")
	}
	if _, err := NewCredentials(strings.NewReader("short"), "postgres"); err == nil {
		t.Error("credentials from an exhausted random source")
	}
}

func TestConnect(t *testing.T) {
	for _, s := range Catalog() {
		inst := newInstance(t, s.Name, TierLightweight, nil)
		c, err := Connect(inst)
		if err != nil {
			t.Fatal(err)
		}
		if want := "." + inst.OSID + ".svc.cluster.local"; !strings.HasSuffix(c.Host, want) || c.Port <= 0 || c.Secret != SecretName {
			t.Errorf("%s: %+v", s.Name, c)
		}
		if c.URL != "" {
			u, err := url.Parse(c.URL)
			if err != nil {
				t.Errorf("%s: URL %q: %v", s.Name, c.URL, err)
			} else if u.Hostname() != c.Host || u.Port() != fmt.Sprint(c.Port) {
				t.Errorf("%s: URL %q does not point at %s:%d", s.Name, c.URL, c.Host, c.Port)
			}
			if c.Password != "" && u != nil && u.User != nil {
				if p, _ := u.User.Password(); p != c.Password {
					t.Errorf("%s: URL password does not round-trip", s.Name)
				}
			}
		}
		// The instance's own Secret has every key SecretKeys names.
		objs, _ := renderU(inst)
		r := decode(t, objs)
		for envName, key := range c.SecretKeys {
			if _, ok := r.secrets[SecretName].Data[key]; !ok {
				t.Errorf("%s: %s -> key %s missing from the Secret", s.Name, envName, key)
			}
		}
		if s.Provides != "" && c.Password != "" && len(c.SecretKeys) == 0 {
			t.Errorf("%s: password but no secret keys", s.Name)
		}
	}
}

func TestRenderApp(t *testing.T) {
	pg := newInstance(t, "postgres", TierHA, nil)
	rd := newInstance(t, "redis", TierLightweight, nil)
	app := App{OSID: "shop-k9m3w", Name: "shop", Image: "ghcr.io/acme/shop:1.2", Port: 8080,
		Env: map[string]string{"LOG_LEVEL": "debug"}, Uses: []Instance{pg, rd}}
	objs, err := renderAppU(app)
	if err != nil {
		t.Fatal(err)
	}
	if objs[0].GetKind() != "Namespace" || objs[0].GetName() != app.OSID {
		t.Fatal("first object is not the app namespace")
	}
	var dep appsv1.Deployment
	secrets := map[string]*corev1.Secret{}
	kinds := map[string]int{}
	for _, u := range objs {
		kinds[u.GetKind()]++
		if u.GetKind() != "Namespace" && u.GetNamespace() != app.OSID {
			t.Errorf("%s %s in namespace %q", u.GetKind(), u.GetName(), u.GetNamespace())
		}
		if u.GetLabels()[LabelOSID] != app.OSID || u.GetLabels()[LabelManagedBy] != ManagedBy {
			t.Errorf("%s %s: labels %v", u.GetKind(), u.GetName(), u.GetLabels())
		}
		switch u.GetKind() {
		case "Deployment":
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &dep); err != nil {
				t.Fatal(err)
			}
		case "Secret":
			var s corev1.Secret
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &s); err != nil {
				t.Fatal(err)
			}
			secrets[s.Name] = &s
		}
	}
	if kinds["Deployment"] != 1 || kinds["Service"] != 1 || kinds["Secret"] != 2 {
		t.Errorf("kinds %v", kinds)
	}
	if secrets[pg.OSID] == nil || secrets[rd.OSID] == nil || secrets[pg.OSID].Labels[LabelUses] != pg.OSID {
		t.Fatalf("connection Secret copies missing: %v", secrets)
	}
	var pw []string
	for _, inst := range app.Uses {
		for _, v := range inst.Credentials {
			if len(v) >= 16 {
				pw = append(pw, v)
			}
		}
	}
	envs := map[string]corev1.EnvVar{}
	for _, e := range dep.Spec.Template.Spec.Containers[0].Env {
		envs[e.Name] = e
		for _, p := range pw {
			if strings.Contains(e.Value, p) {
				t.Errorf("env %s carries a secret in its plain value", e.Name)
			}
		}
		if e.ValueFrom != nil {
			ref := e.ValueFrom.SecretKeyRef
			if ref == nil || secrets[ref.Name] == nil {
				t.Errorf("env %s: bad reference %+v", e.Name, e.ValueFrom)
			} else if _, ok := secrets[ref.Name].Data[ref.Key]; !ok {
				t.Errorf("env %s: Secret %s has no key %s", e.Name, ref.Name, ref.Key)
			}
		}
	}
	for _, name := range []string{"DATABASE_URL", "POSTGRES_PASSWORD", "REDIS_URL", "REDIS_PASSWORD"} {
		if e, ok := envs[name]; !ok || e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil {
			t.Errorf("%s not a secretKeyRef: %+v", name, e)
		}
	}
	if envs["POSTGRES_HOST"].Value != "postgres."+pg.OSID+".svc.cluster.local" || envs["REDIS_PORT"].Value != "6379" ||
		envs["LOG_LEVEL"].Value != "debug" {
		t.Errorf("plain env wrong: %v", envs)
	}
	c, _ := Connect(pg)
	if got := string(secrets[pg.OSID].Data["url"]); got != c.URL {
		t.Errorf("copied url %q, want %q", got, c.URL)
	}

	// Refusals.
	bad := []struct {
		name string
		app  App
		err  string
	}{
		{"collision with user env", App{OSID: "shop-k9m3w", Name: "shop", Image: "x:1", Env: map[string]string{"DATABASE_URL": "x"}, Uses: []Instance{pg}}, "already set by"},
		{"two of a kind", App{OSID: "shop-k9m3w", Name: "shop", Image: "x:1", Uses: []Instance{pg, newInstance(t, "postgres", TierLightweight, nil)}}, "both provide"},
		{"same twice", App{OSID: "shop-k9m3w", Name: "shop", Image: "x:1", Uses: []Instance{pg, pg}}, "used twice"},
		{"bad osid", App{OSID: "shop", Name: "shop", Image: "x:1"}, "osid"},
		{"osid of another", App{OSID: "shap-k9m3w", Name: "shop", Image: "x:1"}, "does not belong"},
		{"no image", App{OSID: "shop-k9m3w", Name: "shop"}, "image"},
		{"bad port", App{OSID: "shop-k9m3w", Name: "shop", Image: "x:1", Port: 70000}, "port"},
		{"bad env", App{OSID: "shop-k9m3w", Name: "shop", Image: "x:1", Env: map[string]string{"1X": "y"}}, "env name"},
		{"provides nothing", App{OSID: "shop-k9m3w", Name: "shop", Image: "x:1", Uses: []Instance{newInstance(t, "grafana", TierLightweight, nil)}}, "provides nothing an app can use"},
		{"no credentials", App{OSID: "shop-k9m3w", Name: "shop", Image: "x:1", Uses: []Instance{{OSID: pg.OSID, Service: "postgres", Tier: TierLightweight}}}, "credential"},
	}
	for _, b := range bad {
		if _, err := renderAppU(b.app); err == nil || !strings.Contains(err.Error(), b.err) {
			t.Errorf("%s: got %v, want %q", b.name, err, b.err)
		}
	}
	// Without a port: no Service.
	objs, err = renderAppU(App{OSID: "worker-k9m3w", Name: "worker", Image: "x:1", Uses: []Instance{rd}})
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range objs {
		if u.GetKind() == "Service" {
			t.Error("Service rendered for an app without a port")
		}
	}
}

func BenchmarkRenderCatalog(b *testing.B) {
	var insts []Instance
	for _, s := range Catalog() {
		for _, tier := range tiers {
			insts = append(insts, newInstance(b, s.Name, tier, nil))
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	objs := 0
	for b.Loop() {
		for _, inst := range insts {
			o, err := renderU(inst)
			if err != nil {
				b.Fatal(err)
			}
			objs += len(o)
		}
	}
	b.ReportMetric(float64(len(insts)), "instances/op")
	b.ReportMetric(float64(objs)/float64(b.N), "objects/op")
}

// TestDump writes every service × tier as JSON into $RUNOS_TEMPLATES_DUMP
// for reading or a manual `kubectl apply --dry-run=server -f`.
func TestDump(t *testing.T) {
	dir := os.Getenv("RUNOS_TEMPLATES_DUMP")
	if dir == "" {
		t.Skip("set RUNOS_TEMPLATES_DUMP=dir to write the rendered catalog")
	}
	for _, s := range Catalog() {
		for _, tier := range tiers {
			objs, err := renderU(newInstance(t, s.Name, tier, nil))
			if err != nil {
				t.Fatal(err)
			}
			b, _ := json.MarshalIndent(map[string]any{"apiVersion": "v1", "kind": "List", "items": objs}, "", "  ")
			if err := os.WriteFile(filepath.Join(dir, s.Name+"-"+tier+".json"), b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// TestScriptsAndConfigsParse runs `sh -n`/`bash -n` on every shell script
// the catalog puts in a container (commands, probes, jobs) and parses
// every YAML and XML config file it renders.
func TestScriptsAndConfigsParse(t *testing.T) {
	shells := map[string]string{}
	for _, sh := range []string{"sh", "bash"} {
		if p, err := exec.LookPath(sh); err == nil {
			shells[sh] = p
		}
	}
	for _, s := range Catalog() {
		for _, tier := range tiers {
			inst := newInstance(t, s.Name, tier, nil)
			objs, err := renderU(inst)
			if err != nil {
				t.Fatal(err)
			}
			r := decode(t, objs)
			pods := map[string]*corev1.PodTemplateSpec{}
			maps.Copy(pods, r.pods)
			maps.Copy(pods, r.jobPods)
			for key, p := range pods {
				for _, c := range slices.Concat(p.Spec.InitContainers, p.Spec.Containers) {
					cmds := [][]string{c.Command}
					for _, pr := range []*corev1.Probe{c.ReadinessProbe, c.LivenessProbe, c.StartupProbe} {
						if pr != nil && pr.Exec != nil {
							cmds = append(cmds, pr.Exec.Command)
						}
					}
					for _, cmd := range cmds {
						if len(cmd) < 3 || cmd[1] != "-c" {
							continue
						}
						sh, ok := shells[cmd[0]]
						if !ok {
							t.Fatalf("no %s to check scripts with", cmd[0])
						}
						if out, err := exec.Command(sh, "-n", "-c", cmd[2]).CombinedOutput(); err != nil {
							t.Errorf("%s/%s %s/%s: script does not parse: %v\n%s\n%s", s.Name, tier, key, c.Name, err, out, cmd[2])
						}
					}
				}
			}
			for name, cm := range r.cms {
				for file, data := range cm.Data {
					var err error
					switch filepath.Ext(file) {
					case ".yaml", ".yml":
						var v any
						err = yaml.Unmarshal([]byte(data), &v)
					case ".xml":
						d := xml.NewDecoder(strings.NewReader(data))
						for err == nil {
							_, err = d.Token()
						}
						if err == io.EOF {
							err = nil
						}
					case ".sh":
						if out, e := exec.Command(shells["bash"], "-n", "-c", data).CombinedOutput(); e != nil {
							err = fmt.Errorf("%v: %s", e, out)
						}
					}
					if err != nil {
						t.Errorf("%s/%s ConfigMap %s %s: %v", s.Name, tier, name, file, err)
					}
				}
			}
		}
	}
}

// TestRenderAppEveryService: an app using any service gets every variable
// the catalog lists, secrets only through references to its own copy of
// the Secret, and no credential in a plain value.
func TestRenderAppEveryService(t *testing.T) {
	for _, s := range Catalog() {
		if s.Provides == "" {
			continue
		}
		inst := newInstance(t, s.Name, TierHA, nil)
		objs, err := renderAppU(App{OSID: "web-22222", Name: "web", Image: "nginx:1.29", Port: 80, Uses: []Instance{inst}})
		if err != nil {
			t.Fatalf("%s: %v", s.Name, err)
		}
		var dep appsv1.Deployment
		var sec corev1.Secret
		for _, u := range objs {
			switch u.GetKind() {
			case "Deployment":
				if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &dep); err != nil {
					t.Fatal(err)
				}
			case "Secret":
				if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &sec); err != nil {
					t.Fatal(err)
				}
			}
		}
		if sec.Name != inst.OSID || sec.Namespace != "web-22222" {
			t.Fatalf("%s: Secret copy %s/%s", s.Name, sec.Namespace, sec.Name)
		}
		got := map[string]bool{}
		c, _ := Connect(inst)
		for _, e := range dep.Spec.Template.Spec.Containers[0].Env {
			got[e.Name] = true
			for k, v := range inst.Credentials {
				if len(v) >= 16 && strings.Contains(e.Value, v) {
					t.Errorf("%s: %s carries credential %s in a plain value", s.Name, e.Name, k)
				}
			}
			if e.ValueFrom != nil {
				ref := e.ValueFrom.SecretKeyRef
				if ref == nil || ref.Name != sec.Name {
					t.Errorf("%s: %s: bad reference %+v", s.Name, e.Name, e.ValueFrom)
				} else if _, ok := sec.Data[ref.Key]; !ok {
					t.Errorf("%s: %s: copy has no key %s", s.Name, e.Name, ref.Key)
				}
				if c.SecretKeys[e.Name] != ref.Key {
					t.Errorf("%s: %s: Connect says key %q, app uses %q", s.Name, e.Name, c.SecretKeys[e.Name], ref.Key)
				}
			} else if e.Value == "" {
				t.Errorf("%s: %s is empty", s.Name, e.Name)
			}
		}
		for _, name := range s.Env {
			if !got[name] {
				t.Errorf("%s: app lacks %s", s.Name, name)
			}
		}
	}
}

// TestREADMEListsCatalog keeps the README's catalog table in step with the
// code (service, pinned image, ha).
func TestREADMEListsCatalog(t *testing.T) {
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Skip("no README next to the package")
	}
	for _, s := range Catalog() {
		d, _ := lookupDef(s.Name)
		tag := s.Version
		if d.tagFormat != "" {
			tag = fmt.Sprintf(d.tagFormat, s.Version)
		}
		ha := "no"
		if s.Tiers[1].HA {
			ha = "yes"
		}
		row := fmt.Sprintf("| %s | `%s:%s` | %d | %s |", s.Name, d.image, tag, s.Tiers[1].Replicas, ha)
		if !strings.Contains(string(b), row) {
			t.Errorf("README lacks the row %s", row)
		}
	}
}

func TestMemcachedServersListEveryPod(t *testing.T) {
	mc := newInstance(t, "memcached", TierHA, map[string]string{"replicas": "4"})
	objs, err := renderAppU(App{OSID: "web-22222", Name: "web", Image: "x:1", Uses: []Instance{mc}})
	if err != nil {
		t.Fatal(err)
	}
	var dep appsv1.Deployment
	for _, u := range objs {
		if u.GetKind() == "Deployment" {
			_ = runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &dep)
		}
	}
	for _, e := range dep.Spec.Template.Spec.Containers[0].Env {
		if e.Name == "MEMCACHED_SERVERS" {
			s := strings.Split(e.Value, ",")
			if len(s) != 4 || s[3] != "memcached-3.memcached-headless."+mc.OSID+".svc.cluster.local:11211" {
				t.Errorf("MEMCACHED_SERVERS = %q", e.Value)
			}
			return
		}
	}
	t.Error("no MEMCACHED_SERVERS")
}

// renderU and renderAppU hand the tests the rendered objects as the API
// machinery's Unstructured, so they are checked through the real
// Kubernetes types (FromUnstructured), not through package kapi's mirror.
func renderU(inst Instance) ([]*unstructured.Unstructured, error) {
	objs, err := Render(inst)
	return toU(objs), err
}

func renderAppU(app App) ([]*unstructured.Unstructured, error) {
	objs, err := RenderApp(app)
	return toU(objs), err
}

func toU(objs []kapi.Object) []*unstructured.Unstructured {
	var out []*unstructured.Unstructured
	for _, o := range objs {
		out = append(out, &unstructured.Unstructured{Object: o})
	}
	return out
}
