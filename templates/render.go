package templates

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"github.com/runos/runos-agent/templates/kapi"
	"maps"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// SecretName is the name of the Secret holding an instance's credentials
// and connection details, in the instance's namespace.
const SecretName = "credentials"

// rc is the render context of one instance: resolved settings plus the
// objects rendered so far.
type rc struct {
	d        *def
	inst     Instance
	ns       string
	tier     string
	set      map[string]string
	version  string
	image    string
	replicas int

	cpu, memory, storage, backupStorage kapi.Quantity

	creds map[string]string
	objs  []any
}

func (r *rc) ha() bool         { return r.tier != TierLightweight }
func (r *rc) enterprise() bool { return r.tier == TierEnterprise }

// host is the in-cluster DNS name of a Service of this instance.
func (r *rc) host(svc string) string { return svc + "." + r.ns + ".svc.cluster.local" }

// podHost is the stable DNS name of pod i of a StatefulSet governed by a
// headless Service.
func (r *rc) podHost(sts string, i int, headless string) string {
	return fmt.Sprintf("%s-%d.%s.%s.svc.cluster.local", sts, i, headless, r.ns)
}

// Render turns a validated instance (with credentials) into Kubernetes
// objects: the Namespace first, then RBAC, Secret, ConfigMaps, PVCs,
// Services, workloads, Jobs, PDBs, CronJobs. Same Instance, same output.
func Render(inst Instance) ([]kapi.Object, error) {
	r, err := resolve(inst)
	if err != nil {
		return nil, err
	}
	if err := r.checkCreds(); err != nil {
		return nil, err
	}
	r.add(&kapi.Namespace{ObjectMeta: kapi.ObjectMeta{Name: r.ns, Labels: r.labels("")}})
	sec, err := r.secret(SecretName, r.labels(""))
	if err != nil {
		return nil, err
	}
	r.add(sec)
	if err := r.d.render(r); err != nil {
		return nil, fmt.Errorf("%s: %w", r.d.svc.Name, err)
	}
	return toObjects(r.objs)
}

func (r *rc) checkCreds() error {
	r.creds = r.inst.Credentials
	for _, c := range r.d.creds {
		if r.creds[c.key] == "" {
			return fmt.Errorf("%s %s: credential %q missing (generate with NewCredentials)", r.d.svc.Name, r.inst.OSID, c.key)
		}
	}
	return nil
}

// secret holds the raw credentials plus the connection details (host,
// port, user, password, database, url), so a copy in an app's namespace is
// all the app needs.
func (r *rc) secret(name string, labels map[string]string) (*kapi.Secret, error) {
	data := map[string][]byte{}
	for k, v := range r.creds {
		data[k] = []byte(v)
	}
	if r.d.derive != nil {
		for k, v := range r.d.derive(r) {
			data[k] = []byte(v)
		}
	}
	c := r.d.connect(r)
	data["host"] = []byte(c.Host)
	data["port"] = []byte(strconv.Itoa(c.Port))
	for k, v := range map[string]string{"user": c.User, "password": c.Password, "database": c.Database, "url": c.URL} {
		if v != "" {
			data[k] = []byte(v)
		}
	}
	return &kapi.Secret{
		ObjectMeta: kapi.ObjectMeta{Name: name, Namespace: r.ns, Labels: labels},
		Type:       kapi.SecretTypeOpaque,
		Data:       data,
	}, nil
}

// Connect returns how apps reach the instance.
func Connect(inst Instance) (Connection, error) {
	r, err := resolve(inst)
	if err != nil {
		return Connection{}, err
	}
	if err := r.checkCreds(); err != nil {
		return Connection{}, err
	}
	c := r.d.connect(r)
	c.Secret = SecretName
	c.SecretKeys = map[string]string{}
	for _, e := range r.d.env {
		if k, secret := secretKey(e.field); secret {
			c.SecretKeys[e.name] = k
		}
	}
	return c, nil
}

// appUserConnection is the connection of a service reached at svc:port
// as the app user (credentials "username" and "password_app") with the
// URL scheme://user:password@host:port followed by path.
func (r *rc) appUserConnection(svc string, port int, scheme, path string) Connection {
	h := r.host(svc)
	u, p := r.creds["username"], r.creds["password_app"]
	return Connection{Host: h, Port: port, User: u, Password: p, URL: fmt.Sprintf("%s://%s:%s@%s:%d%s", scheme, u, p, h, port, path)}
}

// secretKey says whether a connection field is secret, and its Secret
// key. Fields: "host", "port", "user", "database", "hostport" and
// "const:VALUE" are plain; "key:NAME" is Secret key NAME; anything else
// ("password", "url", ...) is the Secret key of that name.
func secretKey(field string) (string, bool) {
	switch {
	case field == "host", field == "port", field == "user", field == "database", field == "hostport",
		strings.HasPrefix(field, "const:"), strings.HasPrefix(field, "value:"):
		return field, false
	case strings.HasPrefix(field, "key:"):
		return strings.TrimPrefix(field, "key:"), true
	}
	return field, true
}

// --- object helpers ---

func (r *rc) add(objs ...any) { r.objs = append(r.objs, objs...) }

// labels are put on every object; component names the part ("" for the
// instance as a whole).
func (r *rc) labels(component string) map[string]string {
	l := map[string]string{
		LabelManagedBy:              ManagedBy,
		LabelOSID:                   r.inst.OSID,
		LabelService:                r.d.svc.Name,
		LabelTier:                   r.tier,
		"app.kubernetes.io/name":    r.d.svc.Name,
		"app.kubernetes.io/version": r.version,
	}
	if component != "" {
		l["app.kubernetes.io/component"] = component
	}
	return l
}

// stableLabels are labels without the version, for the parts Kubernetes
// does not let an update change (PVC templates, Job pod templates).
func (r *rc) stableLabels(component string) map[string]string {
	l := r.labels(component)
	delete(l, "app.kubernetes.io/version")
	return l
}

// selector is the immutable part of the labels that picks a component's
// pods (the namespace already scopes it to the instance).
func (r *rc) selector(component string) map[string]string {
	return map[string]string{LabelOSID: r.inst.OSID, "app.kubernetes.io/component": component}
}

func (r *rc) meta(name, component string) kapi.ObjectMeta {
	return kapi.ObjectMeta{Name: name, Namespace: r.ns, Labels: r.labels(component)}
}

// resources: lightweight and ha request cpu/memory and limit memory;
// enterprise sets requests == limits for Guaranteed QoS.
func (r *rc) resources() kapi.ResourceRequirements {
	return r.res(r.cpu, r.memory)
}

func (r *rc) res(cpu, mem kapi.Quantity) kapi.ResourceRequirements {
	req := kapi.ResourceList{kapi.ResourceCPU: cpu, kapi.ResourceMemory: mem}
	lim := kapi.ResourceList{kapi.ResourceMemory: mem}
	if r.enterprise() {
		lim = kapi.ResourceList{kapi.ResourceCPU: cpu, kapi.ResourceMemory: mem}
	}
	return kapi.ResourceRequirements{Requests: req, Limits: lim}
}

// small is the resources of a helper container (sidecar, job).
func (r *rc) small() kapi.ResourceRequirements {
	return r.res(kapi.MustParseQuantity("50m"), kapi.MustParseQuantity("64Mi"))
}

// memoryMiB is the memory setting in MiB, for software that wants a number.
func (r *rc) memoryMiB() int64 { return r.memory.Value() / (1 << 20) }

func (r *rc) secretEnv(name, key string) kapi.EnvVar {
	return kapi.EnvVar{Name: name, ValueFrom: &kapi.EnvVarSource{SecretKeyRef: &kapi.SecretKeySelector{
		LocalObjectReference: kapi.LocalObjectReference{Name: SecretName}, Key: key}}}
}

// hash is a short content hash for pod-template annotations.
func hash(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:8])
}

func sortedKeys[V any](m map[string]V) []string { return slices.Sorted(maps.Keys(m)) }

func env(name, value string) kapi.EnvVar { return kapi.EnvVar{Name: name, Value: value} }

func fieldEnv(name, path string) kapi.EnvVar {
	return kapi.EnvVar{Name: name, ValueFrom: &kapi.EnvVarSource{FieldRef: &kapi.ObjectFieldSelector{FieldPath: path}}}
}

func port(name string, p int) kapi.ContainerPort {
	return kapi.ContainerPort{Name: name, ContainerPort: int32(p), Protocol: kapi.ProtocolTCP}
}

func svcPort(name string, p int) kapi.ServicePort {
	return kapi.ServicePort{Name: name, Port: int32(p), TargetPort: kapi.FromString(name), Protocol: kapi.ProtocolTCP}
}

func execProbe(initial, period, timeout, failures int32, cmd ...string) *kapi.Probe {
	return &kapi.Probe{ProbeHandler: kapi.ProbeHandler{Exec: &kapi.ExecAction{Command: cmd}},
		InitialDelaySeconds: initial, PeriodSeconds: period, TimeoutSeconds: timeout, FailureThreshold: failures, SuccessThreshold: 1}
}

func shProbe(initial, period, timeout, failures int32, script string) *kapi.Probe {
	return execProbe(initial, period, timeout, failures, "sh", "-c", script)
}

func tcpProbe(portName string, initial, period, failures int32) *kapi.Probe {
	return &kapi.Probe{ProbeHandler: kapi.ProbeHandler{TCPSocket: &kapi.TCPSocketAction{Port: kapi.FromString(portName)}},
		InitialDelaySeconds: initial, PeriodSeconds: period, TimeoutSeconds: 5, FailureThreshold: failures, SuccessThreshold: 1}
}

func httpProbe(path, portName string, initial, period, failures int32) *kapi.Probe {
	return &kapi.Probe{ProbeHandler: kapi.ProbeHandler{HTTPGet: &kapi.HTTPGetAction{Path: path, Port: kapi.FromString(portName), Scheme: kapi.URISchemeHTTP}},
		InitialDelaySeconds: initial, PeriodSeconds: period, TimeoutSeconds: 5, FailureThreshold: failures, SuccessThreshold: 1}
}

func mount(name, path string) kapi.VolumeMount {
	return kapi.VolumeMount{Name: name, MountPath: path}
}

func configVolume(name, configMap string, mode int32) kapi.Volume {
	return kapi.Volume{Name: name, VolumeSource: kapi.VolumeSource{ConfigMap: &kapi.ConfigMapVolumeSource{
		LocalObjectReference: kapi.LocalObjectReference{Name: configMap}, DefaultMode: &mode}}}
}

func emptyDir(name string) kapi.Volume {
	return kapi.Volume{Name: name, VolumeSource: kapi.VolumeSource{EmptyDir: &kapi.EmptyDirVolumeSource{}}}
}

func memDir(name string, size string) kapi.Volume {
	q := kapi.MustParseQuantity(size)
	return kapi.Volume{Name: name, VolumeSource: kapi.VolumeSource{EmptyDir: &kapi.EmptyDirVolumeSource{Medium: kapi.StorageMediumMemory, SizeLimit: &q}}}
}

func (r *rc) configMap(name, component string, data map[string]string) {
	r.add(&kapi.ConfigMap{ObjectMeta: r.meta(name, component), Data: data})
}

// headless is the governing Service of a StatefulSet; it publishes
// not-ready pods so peers find each other while forming a cluster.
func (r *rc) headless(name, component string, ports ...kapi.ServicePort) {
	r.add(&kapi.Service{ObjectMeta: r.meta(name, component), Spec: kapi.ServiceSpec{
		ClusterIP: kapi.ClusterIPNone, PublishNotReadyAddresses: true, Selector: r.selector(component), Ports: ports}})
}

// clientService is the ClusterIP Service apps connect to.
func (r *rc) clientService(name, component string, sel map[string]string, ports ...kapi.ServicePort) {
	if sel == nil {
		sel = r.selector(component)
	}
	r.add(&kapi.Service{ObjectMeta: r.meta(name, component), Spec: kapi.ServiceSpec{
		Type: kapi.ServiceTypeClusterIP, Selector: sel, Ports: ports}})
}

// podSpec finishes a pod: anti-affinity and spread at ha tiers, security
// defaults, termination grace.
func (r *rc) podTemplate(component string, spec kapi.PodSpec, annotations map[string]string) kapi.PodTemplateSpec {
	if r.ha() {
		spec.Affinity = &kapi.Affinity{PodAntiAffinity: &kapi.PodAntiAffinity{
			// Preferred, not required: an edge cluster of one or two nodes
			// still runs every replica; with enough nodes they spread.
			PreferredDuringSchedulingIgnoredDuringExecution: []kapi.WeightedPodAffinityTerm{{
				Weight: 100,
				PodAffinityTerm: kapi.PodAffinityTerm{
					LabelSelector: &kapi.LabelSelector{MatchLabels: r.selector(component)},
					TopologyKey:   "kubernetes.io/hostname",
				},
			}},
		}}
	}
	if spec.TerminationGracePeriodSeconds == nil {
		g := int64(30)
		spec.TerminationGracePeriodSeconds = &g
	}
	if spec.EnableServiceLinks == nil {
		// Thousands of *_SERVICE_HOST variables confuse some images
		// (e.g. a Service named "redis" sets REDIS_PORT=tcp://...).
		f := false
		spec.EnableServiceLinks = &f
	}
	return kapi.PodTemplateSpec{ObjectMeta: kapi.ObjectMeta{Labels: r.labels(component), Annotations: annotations}, Spec: spec}
}

// statefulSet renders a StatefulSet with no volume claim templates (see
// dataStatefulSet and volumeClaim); parallel starts all pods at once.
func (r *rc) statefulSet(name, component, headlessName string, replicas int, spec kapi.PodSpec, parallel bool) *kapi.StatefulSet {
	n := int32(replicas)
	sts := &kapi.StatefulSet{
		ObjectMeta: r.meta(name, component),
		Spec: kapi.StatefulSetSpec{
			Replicas:            &n,
			ServiceName:         headlessName,
			Selector:            &kapi.LabelSelector{MatchLabels: r.selector(component)},
			PodManagementPolicy: kapi.OrderedReadyPodManagement,
			UpdateStrategy:      kapi.StatefulSetUpdateStrategy{Type: kapi.RollingUpdateStatefulSetStrategyType},
			Template:            r.podTemplate(component, spec, r.metricsAnnotations(spec)),
			PersistentVolumeClaimRetentionPolicy: &kapi.StatefulSetPersistentVolumeClaimRetentionPolicy{
				WhenDeleted: kapi.RetainPersistentVolumeClaimRetentionPolicyType,
				WhenScaled:  kapi.RetainPersistentVolumeClaimRetentionPolicyType,
			},
		},
	}
	if parallel {
		// Quorum systems must start all members together: ordered start
		// waits for member 0 to be ready, which needs a quorum.
		sts.Spec.PodManagementPolicy = kapi.ParallelPodManagement
	}
	r.add(sts)
	return sts
}

// dataStatefulSet is the shape most services use: a StatefulSet named after
// its component with one PVC template "data" of the instance's storage
// size, which the containers mount by that name.
func (r *rc) dataStatefulSet(component, headlessName string, replicas int, spec kapi.PodSpec, parallel bool) *kapi.StatefulSet {
	sts := r.statefulSet(component, component, headlessName, replicas, spec, parallel)
	r.volumeClaim(sts, "data", r.storage)
	return sts
}

// volumeClaim adds a PVC template of size q to a StatefulSet.
func (r *rc) volumeClaim(sts *kapi.StatefulSet, name string, q kapi.Quantity) {
	sts.Spec.VolumeClaimTemplates = append(sts.Spec.VolumeClaimTemplates, kapi.PersistentVolumeClaim{
		ObjectMeta: kapi.ObjectMeta{Name: name, Labels: r.stableLabels(sts.Labels["app.kubernetes.io/component"])},
		Spec: kapi.PersistentVolumeClaimSpec{
			AccessModes: []kapi.PersistentVolumeAccessMode{kapi.ReadWriteOnce},
			Resources:   kapi.VolumeResourceRequirements{Requests: kapi.ResourceList{kapi.ResourceStorage: q}},
		},
	})
}

func (r *rc) deployment(name, component string, replicas int, spec kapi.PodSpec) *kapi.Deployment {
	n := int32(replicas)
	dep := &kapi.Deployment{
		ObjectMeta: r.meta(name, component),
		Spec: kapi.DeploymentSpec{
			Replicas: &n,
			Selector: &kapi.LabelSelector{MatchLabels: r.selector(component)},
			Template: r.podTemplate(component, spec, r.metricsAnnotations(spec)),
		},
	}
	r.add(dep)
	return dep
}

// pdb lets voluntary disruptions (drains) take at most one pod of a
// component at a time, so a quorum system of 3 or more keeps its majority;
// rendered at ha tiers with 2 or more replicas only.
func (r *rc) pdb(component string, replicas int) {
	if !r.ha() || replicas < 2 {
		return
	}
	maxUnavailable := kapi.FromInt32(1)
	r.add(&kapi.PodDisruptionBudget{
		ObjectMeta: r.meta(component, component),
		Spec: kapi.PodDisruptionBudgetSpec{
			MaxUnavailable: &maxUnavailable,
			Selector:       &kapi.LabelSelector{MatchLabels: r.selector(component)},
		},
	})
}

// metricsAnnotations tell Prometheus where to scrape a pod at the
// enterprise tier.
func (r *rc) metricsAnnotations(spec kapi.PodSpec) map[string]string {
	if !r.enterprise() || r.d.metrics.port == 0 {
		return nil
	}
	has := false
	for _, c := range spec.Containers {
		for _, p := range c.Ports {
			has = has || int(p.ContainerPort) == r.d.metrics.port
		}
	}
	if !has {
		return nil // a helper workload (e.g. Keycloak's database)
	}
	path := r.d.metrics.path
	if path == "" {
		path = "/metrics"
	}
	return map[string]string{
		"prometheus.io/scrape": "true",
		"prometheus.io/port":   strconv.Itoa(r.d.metrics.port),
		"prometheus.io/path":   path,
	}
}

// backupJob renders the enterprise backup: a PVC and a CronJob running
// script (which writes into /backup) with env; old files are pruned after
// backup_keep_days.
func (r *rc) backupJob(image string, script string, envs ...kapi.EnvVar) {
	r.backupJobWith(nil, image, script, envs...)
}

// backupJobWith runs init first (it may write into /backup), then script.
func (r *rc) backupJobWith(init *kapi.Container, image string, script string, envs ...kapi.EnvVar) {
	if !r.enterprise() || !r.d.backup {
		return
	}
	r.add(&kapi.PersistentVolumeClaim{
		ObjectMeta: r.meta("backup", "backup"),
		Spec: kapi.PersistentVolumeClaimSpec{
			AccessModes: []kapi.PersistentVolumeAccessMode{kapi.ReadWriteOnce},
			Resources:   kapi.VolumeResourceRequirements{Requests: kapi.ResourceList{kapi.ResourceStorage: r.backupStorage}},
		},
	})
	keep := r.set["backup_keep_days"]
	full := "set -eu\nmkdir -p /backup\nstamp=$(date -u +%Y%m%dT%H%M%SZ)\n" + script +
		"\nfind /backup -mindepth 1 -maxdepth 1 -name '" + r.d.svc.Name + "-*' -mtime +" + keep + " -exec rm -rf {} +\nls -l /backup\n"
	var one int32 = 1
	var hist int32 = 3
	deadline := int64(6 * 3600)
	r.add(&kapi.CronJob{
		ObjectMeta: r.meta("backup", "backup"),
		Spec: kapi.CronJobSpec{
			Schedule:                   r.set["backup_schedule"],
			ConcurrencyPolicy:          kapi.ForbidConcurrent,
			SuccessfulJobsHistoryLimit: &hist,
			FailedJobsHistoryLimit:     &hist,
			JobTemplate: kapi.JobTemplateSpec{
				ObjectMeta: kapi.ObjectMeta{Labels: r.labels("backup")},
				Spec: kapi.JobSpec{
					BackoffLimit:          &one,
					ActiveDeadlineSeconds: &deadline,
					Template: kapi.PodTemplateSpec{
						ObjectMeta: kapi.ObjectMeta{Labels: r.labels("backup")},
						Spec: kapi.PodSpec{
							RestartPolicy:      kapi.RestartPolicyNever,
							EnableServiceLinks: new(false),
							// Root, so that whatever the image's user, it
							// can write to the backup volume (not every
							// volume type honours fsGroup).
							SecurityContext: &kapi.PodSecurityContext{RunAsUser: new(int64(0))},
							Containers: []kapi.Container{{
								Name:         "backup",
								Image:        image,
								Command:      []string{"sh", "-c", full},
								Env:          envs,
								Resources:    r.res(kapi.MustParseQuantity("250m"), kapi.MustParseQuantity("256Mi")),
								VolumeMounts: []kapi.VolumeMount{mount("backup", "/backup")},
							}},
							InitContainers: initContainers(init),
							Volumes: []kapi.Volume{{Name: "backup", VolumeSource: kapi.VolumeSource{
								PersistentVolumeClaim: &kapi.PersistentVolumeClaimVolumeSource{ClaimName: "backup"}}}},
						},
					},
				},
			},
		},
	})
}

// bootstrapJob runs an idempotent one-off script once the service answers
// (enable auth, initiate a replica set). It is kept after completion so a
// re-apply does not run it again; if it is deleted, running it again is
// harmless.
func (r *rc) bootstrapJob(name, image, script string, envs ...kapi.EnvVar) {
	backoff := int32(30)
	deadline := int64(3600)
	r.add(&kapi.Job{
		ObjectMeta: r.meta(name, "bootstrap"),
		Spec: kapi.JobSpec{
			BackoffLimit:          &backoff,
			ActiveDeadlineSeconds: &deadline,
			Template: kapi.PodTemplateSpec{
				ObjectMeta: kapi.ObjectMeta{Labels: r.stableLabels("bootstrap")},
				Spec: kapi.PodSpec{
					RestartPolicy:      kapi.RestartPolicyOnFailure,
					EnableServiceLinks: new(false),
					Containers: []kapi.Container{{
						Name:      name,
						Image:     image,
						Command:   []string{"sh", "-c", script},
						Env:       envs,
						Resources: r.small(),
					}},
				},
			},
		},
	})
}

func initContainers(c *kapi.Container) []kapi.Container {
	if c == nil {
		return nil
	}
	return []kapi.Container{*c}
}

// --- conversion ---

// kindOrder is the apply order: what others refer to comes first.
var kindOrder = map[string]int{
	"Namespace": 0, "ServiceAccount": 1, "Role": 2, "RoleBinding": 3, "Secret": 4, "ConfigMap": 5,
	"PersistentVolumeClaim": 6, "Service": 7, "StatefulSet": 8, "Deployment": 9, "Job": 10,
	"PodDisruptionBudget": 11, "CronJob": 12,
}

func gvk(o any) (string, string) {
	switch o.(type) {
	case *kapi.Namespace:
		return "v1", "Namespace"
	case *kapi.ServiceAccount:
		return "v1", "ServiceAccount"
	case *kapi.Secret:
		return "v1", "Secret"
	case *kapi.ConfigMap:
		return "v1", "ConfigMap"
	case *kapi.PersistentVolumeClaim:
		return "v1", "PersistentVolumeClaim"
	case *kapi.Service:
		return "v1", "Service"
	case *kapi.Role:
		return "rbac.authorization.k8s.io/v1", "Role"
	case *kapi.RoleBinding:
		return "rbac.authorization.k8s.io/v1", "RoleBinding"
	case *kapi.StatefulSet:
		return "apps/v1", "StatefulSet"
	case *kapi.Deployment:
		return "apps/v1", "Deployment"
	case *kapi.Job:
		return "batch/v1", "Job"
	case *kapi.CronJob:
		return "batch/v1", "CronJob"
	case *kapi.PodDisruptionBudget:
		return "policy/v1", "PodDisruptionBudget"
	}
	panic(fmt.Sprintf("templates: no kind for %T", o))
}

func toObjects(objs []any) ([]kapi.Object, error) {
	out := make([]kapi.Object, 0, len(objs))
	for _, o := range objs {
		api, kind := gvk(o)
		u, err := kapi.ToObject(api, kind, o)
		if err != nil {
			return nil, err
		}
		out = append(out, u)
	}
	sort.SliceStable(out, func(i, j int) bool { return kindOrder[out[i].Kind()] < kindOrder[out[j].Kind()] })
	return out, nil
}
