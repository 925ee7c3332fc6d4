package httpapi

import (
	"context"
	"net/http"

	"github.com/runos/runos-agent/api"
)

// LocalDNS is the node resolver's part of the local API.
type LocalDNS interface {
	DNSStatus() *api.DNSStatus
	SetDNSZone(ctx context.Context, req api.DNSZoneRequest) (*api.DNSStatus, error)
}

func dnsRoutes(mux *http.ServeMux, d LocalDNS) {
	mux.HandleFunc("GET /v1/dns", func(w http.ResponseWriter, r *http.Request) {
		WriteJSON(w, http.StatusOK, d.DNSStatus())
	})
	mux.HandleFunc("POST /v1/dns/zone", withBody(1<<12, d.SetDNSZone))
}
