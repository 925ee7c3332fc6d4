package templates

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var updateGolden = flag.Bool("update", false, "rewrite testdata/golden from the current renderer")

// seededReader is a deterministic stream for OSIDs and credentials, so a
// render is the same bytes on every run.
type seededReader struct {
	block [sha256.Size]byte
	buf   []byte
}

func (r *seededReader) Read(p []byte) (int, error) {
	for i := range p {
		if len(r.buf) == 0 {
			r.block = sha256.Sum256(r.block[:])
			r.buf = r.block[:]
		}
		p[i], r.buf = r.buf[0], r.buf[1:]
	}
	return len(p), nil
}

// seededInstance is newInstance with OSID and credentials from a stream
// seeded by service and tier; bcrypt hashes, which salt themselves from
// crypto/rand, are replaced by a constant.
func seededInstance(t *testing.T, service, tier string, set map[string]string) Instance {
	t.Helper()
	inst := newInstanceFrom(t, &seededReader{block: sha256.Sum256([]byte(service + "/" + tier))}, service, tier, set)
	for k, v := range inst.Credentials {
		if strings.HasPrefix(v, "$2a$") {
			inst.Credentials[k] = "$2a$10$golden"
		}
	}
	return inst
}

// TestRenderGolden pins the exact objects every service renders at every
// tier, and an app using each service, byte for byte: a change to the
// renderer (or to the types it builds objects from) that alters what is
// applied to a cluster shows up here as a diff. go test -update rewrites
// the files after an intended change.
func TestRenderGolden(t *testing.T) {
	for _, s := range Catalog() {
		out := map[string]any{}
		for _, tier := range tiers {
			inst := seededInstance(t, s.Name, tier, nil)
			objs, err := Render(inst)
			if err != nil {
				t.Fatalf("%s/%s: %v", s.Name, tier, err)
			}
			out[tier] = objs
			if tier == TierHA && s.Provides != "" {
				app, err := RenderApp(App{OSID: "web-22222", Name: "web", Image: "nginx:1.29", Port: 80, Env: map[string]string{"MODE": "prod"}, Uses: []Instance{inst}})
				if err != nil {
					t.Fatalf("%s app: %v", s.Name, err)
				}
				out["app"] = app
			}
		}
		got, err := json.MarshalIndent(out, "", " ")
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, '\n')
		path := filepath.Join("testdata", "golden", s.Name+".json")
		if *updateGolden {
			if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, got, 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		want, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("%v (go test -run TestRenderGolden -update writes it)", err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s renders differently from %s; diff them (go test -update accepts the change)", s.Name, path)
			if d := os.Getenv("RUNOS_GOLDEN_DIFF_DIR"); d != "" {
				os.WriteFile(filepath.Join(d, s.Name+".json"), got, 0o644)
			}
		}
	}
}
