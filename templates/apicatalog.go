package templates

import "github.com/runos/runos-agent/api"

// APICatalog is the catalog in the local API's shape (GET /v1/catalog), the
// one conversion the agent and the cloud console both serve. api stays free
// of this package's Kubernetes imports, so the conversion lives here.
func APICatalog() []api.CatalogService {
	var out []api.CatalogService
	for _, s := range Catalog() {
		c := api.CatalogService{Name: s.Name, Title: s.Title, Kind: s.Kind, Version: s.Version, Description: s.Description,
			Provides: s.Provides, Env: s.Env, Tiers: []api.CatalogTier{}, Settings: []api.CatalogSetting{}}
		// Same fields as the templates types: a conversion keeps them in step.
		for _, t := range s.Tiers {
			c.Tiers = append(c.Tiers, api.CatalogTier(t))
		}
		for _, x := range s.Settings {
			c.Settings = append(c.Settings, api.CatalogSetting(x))
		}
		out = append(out, c)
	}
	return out
}
