package templates

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strconv"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
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

	cpu, memory, storage, backupStorage resource.Quantity

	creds map[string]string
	objs  []runtime.Object
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
func Render(inst Instance) ([]*unstructured.Unstructured, error) {
	r, err := resolve(inst)
	if err != nil {
		return nil, err
	}
	if err := r.checkCreds(); err != nil {
		return nil, err
	}
	r.add(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: r.ns, Labels: r.labels("")}})
	sec, err := r.secret(SecretName, r.labels(""))
	if err != nil {
		return nil, err
	}
	r.add(sec)
	if err := r.d.render(r); err != nil {
		return nil, fmt.Errorf("%s: %w", r.d.svc.Name, err)
	}
	return toUnstructured(r.objs)
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
func (r *rc) secret(name string, labels map[string]string) (*corev1.Secret, error) {
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
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: r.ns, Labels: labels},
		Type:       corev1.SecretTypeOpaque,
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

func (r *rc) add(objs ...runtime.Object) { r.objs = append(r.objs, objs...) }

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

func (r *rc) meta(name, component string) metav1.ObjectMeta {
	return metav1.ObjectMeta{Name: name, Namespace: r.ns, Labels: r.labels(component)}
}

// resources: lightweight and ha request cpu/memory and limit memory;
// enterprise sets requests == limits for Guaranteed QoS.
func (r *rc) resources() corev1.ResourceRequirements {
	return r.res(r.cpu, r.memory)
}

func (r *rc) res(cpu, mem resource.Quantity) corev1.ResourceRequirements {
	req := corev1.ResourceList{corev1.ResourceCPU: cpu, corev1.ResourceMemory: mem}
	lim := corev1.ResourceList{corev1.ResourceMemory: mem}
	if r.enterprise() {
		lim = corev1.ResourceList{corev1.ResourceCPU: cpu, corev1.ResourceMemory: mem}
	}
	return corev1.ResourceRequirements{Requests: req, Limits: lim}
}

// small is the resources of a helper container (sidecar, job).
func (r *rc) small() corev1.ResourceRequirements {
	return r.res(resource.MustParse("50m"), resource.MustParse("64Mi"))
}

// memoryMiB is the memory setting in MiB, for software that wants a number.
func (r *rc) memoryMiB() int64 { return r.memory.Value() / (1 << 20) }

func (r *rc) secretEnv(name, key string) corev1.EnvVar {
	return corev1.EnvVar{Name: name, ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{
		LocalObjectReference: corev1.LocalObjectReference{Name: SecretName}, Key: key}}}
}

// hash is a short content hash for pod-template annotations.
func hash(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:8])
}

func sortedKeys[V any](m map[string]V) []string { return slices.Sorted(maps.Keys(m)) }

func env(name, value string) corev1.EnvVar { return corev1.EnvVar{Name: name, Value: value} }

func fieldEnv(name, path string) corev1.EnvVar {
	return corev1.EnvVar{Name: name, ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: path}}}
}

func port(name string, p int) corev1.ContainerPort {
	return corev1.ContainerPort{Name: name, ContainerPort: int32(p), Protocol: corev1.ProtocolTCP}
}

func svcPort(name string, p int) corev1.ServicePort {
	return corev1.ServicePort{Name: name, Port: int32(p), TargetPort: intstr.FromString(name), Protocol: corev1.ProtocolTCP}
}

func execProbe(initial, period, timeout, failures int32, cmd ...string) *corev1.Probe {
	return &corev1.Probe{ProbeHandler: corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: cmd}},
		InitialDelaySeconds: initial, PeriodSeconds: period, TimeoutSeconds: timeout, FailureThreshold: failures, SuccessThreshold: 1}
}

func shProbe(initial, period, timeout, failures int32, script string) *corev1.Probe {
	return execProbe(initial, period, timeout, failures, "sh", "-c", script)
}

func tcpProbe(portName string, initial, period, failures int32) *corev1.Probe {
	return &corev1.Probe{ProbeHandler: corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromString(portName)}},
		InitialDelaySeconds: initial, PeriodSeconds: period, TimeoutSeconds: 5, FailureThreshold: failures, SuccessThreshold: 1}
}

func httpProbe(path, portName string, initial, period, failures int32) *corev1.Probe {
	return &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: path, Port: intstr.FromString(portName), Scheme: corev1.URISchemeHTTP}},
		InitialDelaySeconds: initial, PeriodSeconds: period, TimeoutSeconds: 5, FailureThreshold: failures, SuccessThreshold: 1}
}

func mount(name, path string) corev1.VolumeMount {
	return corev1.VolumeMount{Name: name, MountPath: path}
}

func configVolume(name, configMap string, mode int32) corev1.Volume {
	return corev1.Volume{Name: name, VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
		LocalObjectReference: corev1.LocalObjectReference{Name: configMap}, DefaultMode: &mode}}}
}

func emptyDir(name string) corev1.Volume {
	return corev1.Volume{Name: name, VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}
}

func memDir(name string, size string) corev1.Volume {
	q := resource.MustParse(size)
	return corev1.Volume{Name: name, VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{Medium: corev1.StorageMediumMemory, SizeLimit: &q}}}
}

func (r *rc) configMap(name, component string, data map[string]string) {
	r.add(&corev1.ConfigMap{ObjectMeta: r.meta(name, component), Data: data})
}

// headless is the governing Service of a StatefulSet; it publishes
// not-ready pods so peers find each other while forming a cluster.
func (r *rc) headless(name, component string, ports ...corev1.ServicePort) {
	r.add(&corev1.Service{ObjectMeta: r.meta(name, component), Spec: corev1.ServiceSpec{
		ClusterIP: corev1.ClusterIPNone, PublishNotReadyAddresses: true, Selector: r.selector(component), Ports: ports}})
}

// clientService is the ClusterIP Service apps connect to.
func (r *rc) clientService(name, component string, sel map[string]string, ports ...corev1.ServicePort) {
	if sel == nil {
		sel = r.selector(component)
	}
	r.add(&corev1.Service{ObjectMeta: r.meta(name, component), Spec: corev1.ServiceSpec{
		Type: corev1.ServiceTypeClusterIP, Selector: sel, Ports: ports}})
}

// podSpec finishes a pod: anti-affinity and spread at ha tiers, security
// defaults, termination grace.
func (r *rc) podTemplate(component string, spec corev1.PodSpec, annotations map[string]string) corev1.PodTemplateSpec {
	if r.ha() {
		spec.Affinity = &corev1.Affinity{PodAntiAffinity: &corev1.PodAntiAffinity{
			// Preferred, not required: an edge cluster of one or two nodes
			// still runs every replica; with enough nodes they spread.
			PreferredDuringSchedulingIgnoredDuringExecution: []corev1.WeightedPodAffinityTerm{{
				Weight: 100,
				PodAffinityTerm: corev1.PodAffinityTerm{
					LabelSelector: &metav1.LabelSelector{MatchLabels: r.selector(component)},
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
	return corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: r.labels(component), Annotations: annotations}, Spec: spec}
}

// statefulSet renders a StatefulSet with no volume claim templates (see
// dataStatefulSet and volumeClaim); parallel starts all pods at once.
func (r *rc) statefulSet(name, component, headlessName string, replicas int, spec corev1.PodSpec, parallel bool) *appsv1.StatefulSet {
	n := int32(replicas)
	sts := &appsv1.StatefulSet{
		ObjectMeta: r.meta(name, component),
		Spec: appsv1.StatefulSetSpec{
			Replicas:            &n,
			ServiceName:         headlessName,
			Selector:            &metav1.LabelSelector{MatchLabels: r.selector(component)},
			PodManagementPolicy: appsv1.OrderedReadyPodManagement,
			UpdateStrategy:      appsv1.StatefulSetUpdateStrategy{Type: appsv1.RollingUpdateStatefulSetStrategyType},
			Template:            r.podTemplate(component, spec, r.metricsAnnotations(spec)),
			PersistentVolumeClaimRetentionPolicy: &appsv1.StatefulSetPersistentVolumeClaimRetentionPolicy{
				WhenDeleted: appsv1.RetainPersistentVolumeClaimRetentionPolicyType,
				WhenScaled:  appsv1.RetainPersistentVolumeClaimRetentionPolicyType,
			},
		},
	}
	if parallel {
		// Quorum systems must start all members together: ordered start
		// waits for member 0 to be ready, which needs a quorum.
		sts.Spec.PodManagementPolicy = appsv1.ParallelPodManagement
	}
	r.add(sts)
	return sts
}

// dataStatefulSet is the shape most services use: a StatefulSet named after
// its component with one PVC template "data" of the instance's storage
// size, which the containers mount by that name.
func (r *rc) dataStatefulSet(component, headlessName string, replicas int, spec corev1.PodSpec, parallel bool) *appsv1.StatefulSet {
	sts := r.statefulSet(component, component, headlessName, replicas, spec, parallel)
	r.volumeClaim(sts, "data", r.storage)
	return sts
}

// volumeClaim adds a PVC template of size q to a StatefulSet.
func (r *rc) volumeClaim(sts *appsv1.StatefulSet, name string, q resource.Quantity) {
	sts.Spec.VolumeClaimTemplates = append(sts.Spec.VolumeClaimTemplates, corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: r.stableLabels(sts.Labels["app.kubernetes.io/component"])},
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			Resources:   corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: q}},
		},
	})
}

func (r *rc) deployment(name, component string, replicas int, spec corev1.PodSpec) *appsv1.Deployment {
	n := int32(replicas)
	dep := &appsv1.Deployment{
		ObjectMeta: r.meta(name, component),
		Spec: appsv1.DeploymentSpec{
			Replicas: &n,
			Selector: &metav1.LabelSelector{MatchLabels: r.selector(component)},
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
	maxUnavailable := intstr.FromInt32(1)
	r.add(&policyv1.PodDisruptionBudget{
		ObjectMeta: r.meta(component, component),
		Spec: policyv1.PodDisruptionBudgetSpec{
			MaxUnavailable: &maxUnavailable,
			Selector:       &metav1.LabelSelector{MatchLabels: r.selector(component)},
		},
	})
}

// metricsAnnotations tell Prometheus where to scrape a pod at the
// enterprise tier.
func (r *rc) metricsAnnotations(spec corev1.PodSpec) map[string]string {
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
func (r *rc) backupJob(image string, script string, envs ...corev1.EnvVar) {
	r.backupJobWith(nil, image, script, envs...)
}

// backupJobWith runs init first (it may write into /backup), then script.
func (r *rc) backupJobWith(init *corev1.Container, image string, script string, envs ...corev1.EnvVar) {
	if !r.enterprise() || !r.d.backup {
		return
	}
	r.add(&corev1.PersistentVolumeClaim{
		ObjectMeta: r.meta("backup", "backup"),
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			Resources:   corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: r.backupStorage}},
		},
	})
	keep := r.set["backup_keep_days"]
	full := "set -eu\nmkdir -p /backup\nstamp=$(date -u +%Y%m%dT%H%M%SZ)\n" + script +
		"\nfind /backup -mindepth 1 -maxdepth 1 -name '" + r.d.svc.Name + "-*' -mtime +" + keep + " -exec rm -rf {} +\nls -l /backup\n"
	var one int32 = 1
	var hist int32 = 3
	deadline := int64(6 * 3600)
	r.add(&batchv1.CronJob{
		ObjectMeta: r.meta("backup", "backup"),
		Spec: batchv1.CronJobSpec{
			Schedule:                   r.set["backup_schedule"],
			ConcurrencyPolicy:          batchv1.ForbidConcurrent,
			SuccessfulJobsHistoryLimit: &hist,
			FailedJobsHistoryLimit:     &hist,
			JobTemplate: batchv1.JobTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: r.labels("backup")},
				Spec: batchv1.JobSpec{
					BackoffLimit:          &one,
					ActiveDeadlineSeconds: &deadline,
					Template: corev1.PodTemplateSpec{
						ObjectMeta: metav1.ObjectMeta{Labels: r.labels("backup")},
						Spec: corev1.PodSpec{
							RestartPolicy:      corev1.RestartPolicyNever,
							EnableServiceLinks: new(false),
							// Root, so that whatever the image's user, it
							// can write to the backup volume (not every
							// volume type honours fsGroup).
							SecurityContext: &corev1.PodSecurityContext{RunAsUser: new(int64(0))},
							Containers: []corev1.Container{{
								Name:         "backup",
								Image:        image,
								Command:      []string{"sh", "-c", full},
								Env:          envs,
								Resources:    r.res(resource.MustParse("250m"), resource.MustParse("256Mi")),
								VolumeMounts: []corev1.VolumeMount{mount("backup", "/backup")},
							}},
							InitContainers: initContainers(init),
							Volumes: []corev1.Volume{{Name: "backup", VolumeSource: corev1.VolumeSource{
								PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: "backup"}}}},
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
func (r *rc) bootstrapJob(name, image, script string, envs ...corev1.EnvVar) {
	backoff := int32(30)
	deadline := int64(3600)
	r.add(&batchv1.Job{
		ObjectMeta: r.meta(name, "bootstrap"),
		Spec: batchv1.JobSpec{
			BackoffLimit:          &backoff,
			ActiveDeadlineSeconds: &deadline,
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: r.stableLabels("bootstrap")},
				Spec: corev1.PodSpec{
					RestartPolicy:      corev1.RestartPolicyOnFailure,
					EnableServiceLinks: new(false),
					Containers: []corev1.Container{{
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

func initContainers(c *corev1.Container) []corev1.Container {
	if c == nil {
		return nil
	}
	return []corev1.Container{*c}
}

// --- conversion ---

// kindOrder is the apply order: what others refer to comes first.
var kindOrder = map[string]int{
	"Namespace": 0, "ServiceAccount": 1, "Role": 2, "RoleBinding": 3, "Secret": 4, "ConfigMap": 5,
	"PersistentVolumeClaim": 6, "Service": 7, "StatefulSet": 8, "Deployment": 9, "Job": 10,
	"PodDisruptionBudget": 11, "CronJob": 12,
}

func gvk(o runtime.Object) (string, string) {
	switch o.(type) {
	case *corev1.Namespace:
		return "v1", "Namespace"
	case *corev1.ServiceAccount:
		return "v1", "ServiceAccount"
	case *corev1.Secret:
		return "v1", "Secret"
	case *corev1.ConfigMap:
		return "v1", "ConfigMap"
	case *corev1.PersistentVolumeClaim:
		return "v1", "PersistentVolumeClaim"
	case *corev1.Service:
		return "v1", "Service"
	case *rbacv1.Role:
		return "rbac.authorization.k8s.io/v1", "Role"
	case *rbacv1.RoleBinding:
		return "rbac.authorization.k8s.io/v1", "RoleBinding"
	case *appsv1.StatefulSet:
		return "apps/v1", "StatefulSet"
	case *appsv1.Deployment:
		return "apps/v1", "Deployment"
	case *batchv1.Job:
		return "batch/v1", "Job"
	case *batchv1.CronJob:
		return "batch/v1", "CronJob"
	case *policyv1.PodDisruptionBudget:
		return "policy/v1", "PodDisruptionBudget"
	}
	panic(fmt.Sprintf("templates: no kind for %T", o))
}

func toUnstructured(objs []runtime.Object) ([]*unstructured.Unstructured, error) {
	out := make([]*unstructured.Unstructured, 0, len(objs))
	for _, o := range objs {
		api, kind := gvk(o)
		m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(o)
		if err != nil {
			return nil, fmt.Errorf("convert %s: %w", kind, err)
		}
		delete(m, "status")
		prune(m)
		u := &unstructured.Unstructured{Object: m}
		u.SetAPIVersion(api)
		u.SetKind(kind)
		out = append(out, u)
	}
	sort.SliceStable(out, func(i, j int) bool { return kindOrder[out[i].GetKind()] < kindOrder[out[j].GetKind()] })
	return out, nil
}

// prune drops null values (creationTimestamp: null and the like) and empty
// status maps, which a server-side apply would otherwise claim.
func prune(m map[string]any) {
	for _, k := range slices.Collect(maps.Keys(m)) {
		switch v := m[k].(type) {
		case nil:
			delete(m, k)
		case map[string]any:
			prune(v)
			if k == "status" && len(v) == 0 {
				delete(m, k)
			}
		case []any:
			for _, x := range v {
				if mm, ok := x.(map[string]any); ok {
					prune(mm)
				}
			}
		}
	}
}
