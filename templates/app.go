package templates

import (
	"fmt"
	"github.com/runos/runos-agent/templates/kapi"
	"maps"
	"net"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// LabelUses marks the copy of an instance's connection Secret in an app's
// namespace with the instance's OSID.
const LabelUses = "runos.io/uses"

// AppService is the LabelService value of an app's objects.
const AppService = "app"

var envNameRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// RenderApp renders an app: its Namespace (the app's OSID), one Secret per
// used instance, a Deployment, and a Service when Port is set.
//
// A Pod can only reference Secrets in its own namespace, so each used
// instance's connection Secret is copied into the app's namespace, named by
// the instance's OSID and labelled runos.io/uses=<osid>; the reconciler
// applies it with the rest (and re-applies it if the instance's credentials
// ever change). Secret values reach the container only through
// secretKeyRef, never as plain env values.
func RenderApp(app App) ([]kapi.Object, error) {
	if err := ValidOSID(app.OSID); err != nil {
		return nil, fmt.Errorf("app: %w", err)
	}
	if err := validName(app.Name); err != nil {
		return nil, fmt.Errorf("app name: %w", err)
	}
	if !strings.HasPrefix(app.OSID, app.Name+"-") || len(app.OSID) != len(app.Name)+1+osidSuffixLen {
		return nil, fmt.Errorf("app osid %q does not belong to app %q", app.OSID, app.Name)
	}
	if app.Image == "" || strings.ContainsAny(app.Image, " \t\n") {
		return nil, fmt.Errorf("app %s: image %q is not an image reference", app.Name, app.Image)
	}
	if app.Port < 0 || app.Port > 65535 {
		return nil, fmt.Errorf("app %s: port %d out of range 1..65535", app.Name, app.Port)
	}
	labels := map[string]string{
		LabelManagedBy:           ManagedBy,
		LabelOSID:                app.OSID,
		LabelService:             AppService,
		"app.kubernetes.io/name": app.Name,
	}
	sel := map[string]string{LabelOSID: app.OSID}
	var objs []any
	objs = append(objs, &kapi.Namespace{ObjectMeta: kapi.ObjectMeta{Name: app.OSID, Labels: labels}})

	// Injected variables, in order of Uses; the owner of each name is kept
	// for error messages.
	var envs []kapi.EnvVar
	owner := map[string]string{}
	seen := map[string]bool{}
	for _, inst := range app.Uses {
		if seen[inst.OSID] {
			return nil, fmt.Errorf("app %s: instance %s used twice", app.Name, inst.OSID)
		}
		seen[inst.OSID] = true
		r, err := resolve(inst)
		if err != nil {
			return nil, fmt.Errorf("app %s: use %s: %w", app.Name, inst.OSID, err)
		}
		if len(r.d.env) == 0 {
			return nil, fmt.Errorf("app %s: %s (%s) provides nothing an app can use", app.Name, inst.OSID, r.d.svc.Title)
		}
		if err := r.checkCreds(); err != nil {
			return nil, fmt.Errorf("app %s: use %s: %w", app.Name, inst.OSID, err)
		}
		l := maps.Clone(labels)
		l[LabelUses] = inst.OSID
		sec, err := r.secret(inst.OSID, l)
		if err != nil {
			return nil, err
		}
		sec.Namespace = app.OSID
		objs = append(objs, sec)
		c := r.d.connect(r)
		for _, e := range r.d.env {
			if o, dup := owner[e.name]; dup {
				return nil, fmt.Errorf("app %s: %s and %s both provide %s; an app takes each variable from one instance only", app.Name, o, inst.OSID, e.name)
			}
			owner[e.name] = inst.OSID
			if key, secret := secretKey(e.field); secret {
				envs = append(envs, kapi.EnvVar{Name: e.name, ValueFrom: &kapi.EnvVarSource{SecretKeyRef: &kapi.SecretKeySelector{
					LocalObjectReference: kapi.LocalObjectReference{Name: inst.OSID}, Key: key}}})
				continue
			}
			v := connField(c, e.field)
			if k, ok := strings.CutPrefix(e.field, "value:"); ok && r.d.values != nil {
				v = r.d.values(r)[k]
			}
			envs = append(envs, env(e.name, v))
		}
	}
	for _, k := range slices.Sorted(maps.Keys(app.Env)) {
		if !envNameRE.MatchString(k) {
			return nil, fmt.Errorf("app %s: env name %q: letters, digits and _ only, not starting with a digit", app.Name, k)
		}
		if o, dup := owner[k]; dup {
			return nil, fmt.Errorf("app %s: env %s is already set by --use %s", app.Name, k, o)
		}
		envs = append(envs, env(k, app.Env[k]))
	}

	c := kapi.Container{
		Name:  "app",
		Image: app.Image,
		Env:   envs,
		Resources: kapi.ResourceRequirements{Requests: kapi.ResourceList{
			kapi.ResourceCPU: kapi.MustParseQuantity("100m"), kapi.ResourceMemory: kapi.MustParseQuantity("128Mi")}},
	}
	if app.Port > 0 {
		c.Ports = []kapi.ContainerPort{port("http", app.Port)}
		c.ReadinessProbe = tcpProbe("http", 2, 5, 3)
	}
	one := int32(1)
	objs = append(objs, &kapi.Deployment{
		ObjectMeta: kapi.ObjectMeta{Name: app.Name, Namespace: app.OSID, Labels: labels},
		Spec: kapi.DeploymentSpec{
			Replicas: &one,
			Selector: &kapi.LabelSelector{MatchLabels: sel},
			Template: kapi.PodTemplateSpec{
				ObjectMeta: kapi.ObjectMeta{Labels: labels},
				Spec:       kapi.PodSpec{Containers: []kapi.Container{c}, EnableServiceLinks: new(false)},
			},
		},
	})
	if app.Port > 0 {
		objs = append(objs, &kapi.Service{
			ObjectMeta: kapi.ObjectMeta{Name: app.Name, Namespace: app.OSID, Labels: labels},
			Spec: kapi.ServiceSpec{Selector: sel, Ports: []kapi.ServicePort{{
				Name: "http", Port: int32(app.Port), TargetPort: kapi.FromString("http"), Protocol: kapi.ProtocolTCP}}},
		})
	}
	return toObjects(objs)
}

func connField(c Connection, field string) string {
	if v, ok := strings.CutPrefix(field, "const:"); ok {
		return v
	}
	switch field {
	case "host":
		return c.Host
	case "port":
		return strconv.Itoa(c.Port)
	case "user":
		return c.User
	case "database":
		return c.Database
	case "hostport":
		return net.JoinHostPort(c.Host, strconv.Itoa(c.Port))
	}
	return ""
}
