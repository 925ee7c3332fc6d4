package kapi_test

import (
	"encoding/json"
	"reflect"
	"regexp"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/runos/runos-agent/templates/kapi"
)

// apiTypes are the real Kubernetes types kapi mirrors, by name.
func apiTypes() map[string]reflect.Type {
	out := map[string]reflect.Type{}
	var add func(t reflect.Type)
	add = func(t reflect.Type) {
		for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice || t.Kind() == reflect.Map {
			t = t.Elem()
		}
		if t.Kind() != reflect.Struct || out[t.Name()] != nil {
			return
		}
		out[t.Name()] = t
		for i := range t.NumField() {
			add(t.Field(i).Type)
		}
	}
	for _, v := range []any{appsv1.StatefulSet{}, appsv1.Deployment{}, batchv1.CronJob{}, batchv1.Job{},
		corev1.Namespace{}, corev1.Secret{}, corev1.ConfigMap{}, corev1.Service{}, corev1.ServiceAccount{},
		corev1.PersistentVolumeClaim{}, policyv1.PodDisruptionBudget{}, rbacv1.Role{}, rbacv1.RoleBinding{}, metav1.ObjectMeta{}} {
		add(reflect.TypeOf(v))
	}
	return out
}

// kapiTypes are kapi's struct types (reached from the top-level kinds).
func kapiTypes() map[string]reflect.Type {
	out := map[string]reflect.Type{}
	var add func(t reflect.Type)
	add = func(t reflect.Type) {
		for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice || t.Kind() == reflect.Map {
			t = t.Elem()
		}
		if t.Kind() != reflect.Struct || out[t.Name()] != nil || t.PkgPath() != reflect.TypeOf(kapi.Object{}).PkgPath() {
			return
		}
		if t == reflect.TypeOf(kapi.Quantity{}) || t == reflect.TypeOf(kapi.IntOrString{}) {
			return // values with JSON of their own, compared by the tests below
		}
		out[t.Name()] = t
		for i := range t.NumField() {
			add(t.Field(i).Type)
		}
	}
	for _, v := range []any{kapi.StatefulSet{}, kapi.Deployment{}, kapi.CronJob{}, kapi.Job{},
		kapi.Namespace{}, kapi.Secret{}, kapi.ConfigMap{}, kapi.Service{}, kapi.ServiceAccount{},
		kapi.PersistentVolumeClaim{}, kapi.PodDisruptionBudget{}, kapi.ObjectMeta{}} {
		add(reflect.TypeOf(v))
	}
	return out
}

// TestMirrorsTheAPI checks every field of every kapi type against the
// Kubernetes type of the same name: same Go name, same JSON tag (name and
// omitempty), same shape. A field kapi has and the API does not, or a tag
// that differs, would send the API server something it reads differently.
func TestMirrorsTheAPI(t *testing.T) {
	real := apiTypes()
	for name, ours := range kapiTypes() {
		theirs, ok := real[name]
		if !ok {
			t.Errorf("kapi.%s: no Kubernetes type of that name", name)
			continue
		}
		for i := range ours.NumField() {
			f := ours.Field(i)
			g, ok := theirs.FieldByName(f.Name)
			if !ok {
				t.Errorf("kapi.%s.%s: not a field of %s", name, f.Name, theirs)
				continue
			}
			if f.Tag.Get("json") != g.Tag.Get("json") {
				t.Errorf("kapi.%s.%s: json tag %q, the API's is %q", name, f.Name, f.Tag.Get("json"), g.Tag.Get("json"))
			}
			if shape(f.Type) != shape(g.Type) {
				t.Errorf("kapi.%s.%s: %s, the API's is %s", name, f.Name, shape(f.Type), shape(g.Type))
			}
		}
	}
}

// shape is a type without its package: *[]map[string]Quantity.
func shape(t reflect.Type) string {
	switch t.Kind() {
	case reflect.Pointer:
		return "*" + shape(t.Elem())
	case reflect.Slice:
		return "[]" + shape(t.Elem())
	case reflect.Map:
		return "map[" + shape(t.Key()) + "]" + shape(t.Elem())
	}
	if t.Name() != "" {
		return t.Name()
	}
	return t.Kind().String()
}

// quantityInputs are the settings' grammar at its edges: every suffix,
// fractions, exponents, values that canonicalise to another suffix.
var quantityInputs = []string{
	"0", "1", "100m", "250m", "1500m", "2000m", "0.5", "1.5", ".5", "1.", "0.1", "0.001", "0.0005", "1n", "1.5n", "7u", "1k", "1000", "1000k",
	"1M", "2G", "3T", "4P", "5E", "64Mi", "128Mi", "256Mi", "512Mi", "1024Mi", "1536Mi", "1Gi", "1.5Gi", "10Gi", "1Ti", "2Pi", "1Ei",
	"1Ki", "1023", "1024", "2048", "100Ki", "0.5Ki", "1e3", "1E3", "1e-3", "1.5e3", "12e6", "123456789", "999999999999999999",
	"5e2", "1e0", "1e18", "1e-9",
}

// TestQuantityMatchesTheAPI compares kapi.Quantity with resource.Quantity
// on the same input: the canonical string (what the API server stores),
// Value, Cmp, and the sum of a quantity with itself (the ha defaults).
func TestQuantityMatchesTheAPI(t *testing.T) {
	for _, s := range quantityInputs {
		checkQuantity(t, s)
	}
}

func checkQuantity(t *testing.T, s string) {
	t.Helper()
	want, werr := resource.ParseQuantity(s)
	got, gerr := kapi.ParseQuantity(s)
	if (werr == nil) != (gerr == nil) {
		t.Errorf("%q: parse err %v, the API's %v", s, gerr, werr)
		return
	}
	if werr != nil {
		return
	}
	if got.String() != want.String() {
		t.Errorf("%q: String %q, the API's %q", s, got.String(), want.String())
	}
	if f := want.AsApproximateFloat64(); f < 9e18 && f > -9e18 && got.Value() != want.Value() {
		t.Errorf("%q: Value %d, the API's %d", s, got.Value(), want.Value())
	}
	b, _ := json.Marshal(got)
	wb, _ := json.Marshal(want)
	if string(b) != string(wb) {
		t.Errorf("%q: JSON %s, the API's %s", s, b, wb)
	}
	g2, w2 := got, want.DeepCopy()
	g2.Add(got)
	w2.Add(want)
	if g2.String() != w2.String() {
		t.Errorf("%q doubled: %q, the API's %q", s, g2.String(), w2.String())
	}
	for _, o := range []string{"1", "500m", "1Gi", "1e3"} {
		if c, wc := got.Cmp(kapi.MustParseQuantity(o)), want.Cmp(resource.MustParse(o)); c != wc {
			t.Errorf("%q cmp %q: %d, the API's %d", s, o, c, wc)
		}
	}
}

var settingQuantity = regexp.MustCompile(`^[0-9]{1,18}(\.[0-9]{1,9})?([eE][+-]?[0-9]{1,2}|Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?$`)

func FuzzQuantity(f *testing.F) {
	for _, s := range quantityInputs {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		// Within the grammar the catalog lets through (its settings check,
		// templates' quantityRE): outside it, inputs never reach a
		// Quantity, and resource.Quantity accepts oddities like ".".
		if !settingQuantity.MatchString(s) {
			return
		}
		// Past int64 the API server saturates; every catalog range
		// (storage, memory, cpu) ends far below.
		if q, err := resource.ParseQuantity(s); err == nil && q.AsApproximateFloat64() >= 4e18 {
			return
		}
		checkQuantity(t, s)
	})
}

func TestIntOrString(t *testing.T) {
	for _, tc := range []struct {
		ours   kapi.IntOrString
		theirs intstr.IntOrString
	}{{kapi.FromString("http"), intstr.FromString("http")}, {kapi.FromInt32(1), intstr.FromInt32(1)}} {
		a, _ := json.Marshal(tc.ours)
		b, _ := json.Marshal(tc.theirs)
		if string(a) != string(b) {
			t.Errorf("%s, the API's %s", a, b)
		}
		var back kapi.IntOrString
		if err := json.Unmarshal(b, &back); err != nil || back != tc.ours {
			t.Errorf("%s read back as %+v (%v)", b, back, err)
		}
	}
}
