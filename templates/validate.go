package templates

import (
	"fmt"
	"github.com/runos/runos-agent/templates/kapi"
	"maps"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// labelValueRE is Kubernetes' label value grammar (at most 63 characters,
// checked apart).
var labelValueRE = regexp.MustCompile(`^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$`)

// tagRE is Docker's tag grammar.
var tagRE = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`)

// Validate checks an instance and fills every default into inst.Set, so
// the instance committed to Raft pins its version and sizes: a newer agent
// with newer defaults does not silently upgrade or resize it.
func Validate(inst *Instance) error {
	r, err := resolve(*inst)
	if err != nil {
		return err
	}
	inst.Set = r.set
	return nil
}

// resolve validates inst and returns the render context (without
// credentials checks; Render adds those).
func resolve(inst Instance) (*rc, error) {
	d, err := lookupDef(inst.Service)
	if err != nil {
		return nil, err
	}
	if err := ValidOSID(inst.OSID); err != nil {
		return nil, err
	}
	if !strings.HasPrefix(inst.OSID, inst.Service+"-") || len(inst.OSID) != len(inst.Service)+1+osidSuffixLen {
		return nil, fmt.Errorf("osid %q does not belong to service %q", inst.OSID, inst.Service)
	}
	switch inst.Tier {
	case TierLightweight, TierHA, TierEnterprise:
	case "":
		return nil, fmt.Errorf("tier missing (one of %s, %s, %s)", TierLightweight, TierHA, TierEnterprise)
	default:
		return nil, fmt.Errorf("unknown tier %q (one of %s, %s, %s)", inst.Tier, TierLightweight, TierHA, TierEnterprise)
	}
	defaults := map[string]string{}
	for _, s := range d.svc.Settings {
		defaults[s.Key] = s.Default
	}
	set := map[string]string{}
	for _, k := range slices.Sorted(maps.Keys(inst.Set)) {
		if _, ok := defaults[k]; !ok {
			return nil, fmt.Errorf("%s: unknown setting %q (known: %s)", d.svc.Name, k, strings.Join(settingKeys(d), ", "))
		}
		set[k] = strings.TrimSpace(inst.Set[k])
	}
	for k, v := range defaults {
		if _, ok := set[k]; !ok {
			if (k == "cpu" || k == "memory") && inst.Tier != TierLightweight {
				v = doubled(v)
			}
			set[k] = v
		}
	}
	r := &rc{d: d, inst: inst, tier: inst.Tier, set: set, ns: inst.OSID}
	r.inst.Set = set

	v := set["version"]
	if !tagRE.MatchString(v) {
		return nil, fmt.Errorf("%s: version %q is not an image tag", d.svc.Name, v)
	}
	if len(v) > 63 || !labelValueRE.MatchString(v) {
		// It is also the app.kubernetes.io/version label.
		return nil, fmt.Errorf("%s: version %q: at most 63 characters, starting and ending with a letter or digit", d.svc.Name, v)
	}
	r.version = v
	tag := v
	if d.tagFormat != "" {
		tag = fmt.Sprintf(d.tagFormat, v)
	}
	r.image = d.image + ":" + tag

	// Replicas: lightweight is one; ha/enterprise within the service's range.
	n, err := strconv.Atoi(set["replicas"])
	if err != nil {
		return nil, fmt.Errorf("%s: replicas %q is not a number", d.svc.Name, set["replicas"])
	}
	if inst.Tier == TierLightweight {
		if _, given := inst.Set["replicas"]; given && n != 1 {
			return nil, fmt.Errorf("%s: the lightweight tier runs 1 replica (got %d); use --tier ha for more", d.svc.Name, n)
		}
		n = 1
		set["replicas"] = "1"
	} else {
		if d.maxHA == 1 && n != 1 {
			return nil, fmt.Errorf("%s runs a single replica at every tier (%s)", d.svc.Name, d.haNote)
		}
		if n < d.minHA || n > d.maxHA {
			return nil, fmt.Errorf("%s: replicas %d out of range %d..%d at tier %s", d.svc.Name, n, d.minHA, d.maxHA, inst.Tier)
		}
		if d.odd && n%2 == 0 {
			return nil, fmt.Errorf("%s: replicas must be odd (quorum of a %d-member cluster tolerates no more failures than %d members)", d.svc.Name, n, n-1)
		}
	}
	r.replicas = n

	if r.cpu, err = quantity(d, set, "cpu", "10m", "64"); err != nil {
		return nil, err
	}
	if r.memory, err = quantity(d, set, "memory", "16Mi", "512Gi"); err != nil {
		return nil, err
	}
	if !d.stateless {
		if r.storage, err = quantity(d, set, "storage", "64Mi", "64Ti"); err != nil {
			return nil, err
		}
	}
	if d.backup {
		if r.backupStorage, err = quantity(d, set, "backup_storage", "64Mi", "64Ti"); err != nil {
			return nil, err
		}
		if err := checkCron(set["backup_schedule"]); err != nil {
			return nil, fmt.Errorf("%s: backup_schedule: %w", d.svc.Name, err)
		}
		if err := intRange(1, 3650)(set["backup_keep_days"]); err != nil {
			return nil, fmt.Errorf("%s: backup_keep_days: %w", d.svc.Name, err)
		}
	}
	for _, e := range d.extra { // in catalog order: the same bad input gives the same error
		if e.check == nil {
			continue
		}
		if err := e.check(set[e.Key]); err != nil {
			return nil, fmt.Errorf("%s: %s: %w", d.svc.Name, e.Key, err)
		}
	}
	return r, nil
}

func settingKeys(d *def) []string {
	var keys []string
	for _, s := range d.svc.Settings {
		keys = append(keys, s.Key)
	}
	return keys
}

// quantityRE is the part of Kubernetes' quantity grammar settings need:
// no sign, at most 18 digits, an exponent of at most two digits. It runs
// before resource.ParseQuantity, which takes minutes (or forever) on
// inputs like "9e999999999" (found by FuzzValidate): a deploy request must
// not stall the leader.
var quantityRE = regexp.MustCompile(`^[0-9]{1,18}(\.[0-9]{1,9})?([eE][+-]?[0-9]{1,2}|Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?$`)

func parseQuantity(v string) (kapi.Quantity, error) {
	if !quantityRE.MatchString(v) {
		return kapi.Quantity{}, fmt.Errorf("bad quantity %q", v)
	}
	return kapi.ParseQuantity(v)
}

func quantity(d *def, set map[string]string, key, lo, hi string) (kapi.Quantity, error) {
	q, err := parseQuantity(set[key])
	if err != nil {
		return q, fmt.Errorf("%s: %s %q is not a Kubernetes quantity (e.g. 500m, 1Gi)", d.svc.Name, key, set[key])
	}
	if q.Cmp(kapi.MustParseQuantity(lo)) < 0 || q.Cmp(kapi.MustParseQuantity(hi)) > 0 {
		return q, fmt.Errorf("%s: %s %s out of range %s..%s", d.svc.Name, key, set[key], lo, hi)
	}
	return q, nil
}

// intRange returns a validator for integers in [lo, hi].
func intRange(lo, hi int) func(string) error {
	return func(v string) error {
		n, err := strconv.Atoi(v)
		if err != nil {
			return fmt.Errorf("%q is not a whole number", v)
		}
		if n < lo || n > hi {
			return fmt.Errorf("%d out of range %d..%d", n, lo, hi)
		}
		return nil
	}
}

// oneOf returns a validator for an enumeration.
func oneOf(vals ...string) func(string) error {
	return func(v string) error {
		if slices.Contains(vals, v) {
			return nil
		}
		return fmt.Errorf("%q is not one of %s", v, strings.Join(vals, ", "))
	}
}

// cronField is one field of a five-field cron schedule: numbers, ranges,
// steps, lists, "*".
var cronField = regexp.MustCompile(`^(\*|[0-9]+(-[0-9]+)?)(/[0-9]+)?(,(\*|[0-9]+(-[0-9]+)?)(/[0-9]+)?)*$`)

var cronNum = regexp.MustCompile(`[0-9]+`)

func checkCron(s string) error {
	f := strings.Fields(s)
	if len(f) != 5 {
		return fmt.Errorf("%q: want 5 fields (minute hour day month weekday)", s)
	}
	bounds := [5][2]int{{0, 59}, {0, 23}, {1, 31}, {1, 12}, {0, 7}}
	for i, x := range f {
		if !cronField.MatchString(x) {
			return fmt.Errorf("%q: bad field %q", s, x)
		}
		for _, num := range cronNum.FindAllStringIndex(x, -1) {
			n, _ := strconv.Atoi(x[num[0]:num[1]])
			step := num[0] > 0 && x[num[0]-1] == '/'
			if step && n == 0 || !step && (n < bounds[i][0] || n > bounds[i][1]) {
				return fmt.Errorf("%q: %d out of range in field %q", s, n, x)
			}
		}
	}
	return nil
}
