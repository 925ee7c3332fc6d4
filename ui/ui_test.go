package ui

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestHandlerServesPageAndReadOnlyAPI(t *testing.T) {
	var apiCalls []string
	api := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		apiCalls = append(apiCalls, r.Method+" "+r.URL.Path)
		w.Write([]byte(`{}`))
	})
	srv := httptest.NewServer(Handler(api))
	defer srv.Close()

	resp, err := http.Get(srv.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(resp.Header.Get("Content-Type"), "text/html") {
		t.Fatalf("index: %s %s", resp.Status, resp.Header.Get("Content-Type"))
	}
	if resp, err = http.Get(srv.URL + "/v1/nodes"); err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET /v1/nodes: %v %v", err, resp.Status)
	}
	resp.Body.Close()
	for _, method := range []string{http.MethodPost, http.MethodDelete} {
		req, _ := http.NewRequest(method, srv.URL+"/v1/tokens", nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusMethodNotAllowed {
			t.Errorf("%s through the UI listener: %s, want 405", method, resp.Status)
		}
	}
	if len(apiCalls) != 1 || apiCalls[0] != "GET /v1/nodes" {
		t.Fatalf("api saw %v, want only the GET", apiCalls)
	}
}
