package kube_test

import (
	"bytes"
	"testing"
	"time"

	"github.com/runos/runos-agent/kube"
	"github.com/runos/runos-agent/kube/kubetest"
	"github.com/runos/runos-agent/templates"
)

// Every service of the catalog at every tier renders into objects a real
// API server accepts (server-side dry-run apply: validation, defaulting and
// admission, nothing persisted).
func TestCatalogDryRunApply(t *testing.T) {
	srv := kubetest.Start(t, kubetest.Options{NoControllerManager: true})
	e, err := kube.New(kube.Config{Kubeconfig: srv.Kubeconfig}, logger())
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	ctx := kubetest.Context(t, 5*time.Minute)
	cat := templates.Catalog()
	if len(cat) == 0 {
		t.Fatal("empty catalog")
	}
	rnd := bytes.NewReader(bytes.Repeat([]byte("runos-dry-run-seed"), 10000))
	for _, svc := range cat {
		for _, tier := range svc.Tiers {
			t.Run(svc.Name+"/"+tier.Name, func(t *testing.T) {
				osid, err := templates.NewOSID(rnd, svc.Name)
				if err != nil {
					t.Fatal(err)
				}
				creds, err := templates.NewCredentials(rnd, svc.Name)
				if err != nil {
					t.Fatal(err)
				}
				inst := templates.Instance{OSID: osid, Service: svc.Name, Tier: tier.Name, Credentials: creds}
				if err := templates.Validate(&inst); err != nil {
					t.Fatal(err)
				}
				objs, err := templates.Render(inst)
				if err != nil {
					t.Fatal(err)
				}
				if len(objs) == 0 || objs[0].Kind() != "Namespace" || objs[0].Name() != osid {
					t.Fatalf("render does not start with the namespace %s", osid)
				}
				// Namespaced objects need their namespace to exist to be
				// admitted, so it alone is created for real.
				if _, err := e.Apply(ctx, objs[:1], kube.ApplyOptions{}); err != nil {
					t.Fatal(err)
				}
				applied, err := e.Apply(ctx, objs[1:], kube.ApplyOptions{DryRun: true})
				if err != nil {
					t.Fatal(err)
				}
				if len(applied) != len(objs)-1 {
					t.Fatalf("%d of %d objects applied", len(applied), len(objs)-1)
				}
				for _, o := range objs[1:] {
					if got, err := e.Get(ctx, o); err != nil || got != nil {
						t.Fatalf("dry run persisted %s %s (err %v)", o.Kind(), o.Name(), err)
					}
				}
			})
		}
	}
}
