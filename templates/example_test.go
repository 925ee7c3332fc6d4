package templates_test

import (
	"crypto/rand"
	"fmt"

	"github.com/runos/runos-agent/templates"
)

// How the agent deploys an instance: validate (pins defaults), generate
// credentials once, commit to Raft, then render and apply in order.
func ExampleRender() {
	inst := templates.Instance{OSID: "postgres-k9m3w", Service: "postgres", Tier: templates.TierLightweight,
		Set: map[string]string{"storage": "5Gi"}}
	if err := templates.Validate(&inst); err != nil {
		panic(err)
	}
	creds, err := templates.NewCredentials(rand.Reader, inst.Service)
	if err != nil {
		panic(err)
	}
	inst.Credentials = creds
	objs, err := templates.Render(inst)
	if err != nil {
		panic(err)
	}
	for _, o := range objs {
		fmt.Println(o.Kind(), o.Namespace(), o.Name())
	}
	c, _ := templates.Connect(inst)
	fmt.Println(c.Host, c.Port, c.User, c.Database, c.SecretKeys["DATABASE_URL"])
	// Output:
	// Namespace  postgres-k9m3w
	// Secret postgres-k9m3w credentials
	// ConfigMap postgres-k9m3w postgres-init
	// Service postgres-k9m3w postgres-headless
	// Service postgres-k9m3w postgres
	// StatefulSet postgres-k9m3w postgres
	// postgres.postgres-k9m3w.svc.cluster.local 5432 app app url
}

// An app using an instance: its namespace, a copy of the instance's
// connection Secret, the Deployment and its Service.
func ExampleRenderApp() {
	pg := templates.Instance{OSID: "postgres-k9m3w", Service: "postgres", Tier: templates.TierLightweight}
	_ = templates.Validate(&pg)
	pg.Credentials, _ = templates.NewCredentials(rand.Reader, "postgres")
	objs, err := templates.RenderApp(templates.App{OSID: "shop-7hx2q", Name: "shop", Image: "ghcr.io/acme/shop:1.4", Port: 8080,
		Uses: []templates.Instance{pg}})
	if err != nil {
		panic(err)
	}
	for _, o := range objs {
		fmt.Println(o.Kind(), o.Namespace(), o.Name())
	}
	// Output:
	// Namespace  shop-7hx2q
	// Secret shop-7hx2q postgres-k9m3w
	// Service shop-7hx2q shop
	// Deployment shop-7hx2q shop
}
