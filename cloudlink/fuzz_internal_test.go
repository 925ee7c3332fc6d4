package cloudlink

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/runos/runos-agent/api"
	"github.com/runos/runos-agent/cloudproto"
	"github.com/runos/runos-agent/raftstore"
	"github.com/runos/runos-agent/raftstore/raftstoretest"
	"github.com/runos/runos-agent/seal"
)

type fuzzHost struct{ *raftstoretest.Store }

func (fuzzHost) Nodes() []api.Node { return nil }

var fuzzKinds = []string{"create_token", "remove_node", "deploy_service", "delete_service", "deploy_app", "delete_app", "format_disk", ""}

// FuzzCommand runs arbitrary downlink commands (kind, ID, argument bytes,
// level) through the link's intake and the real FSM: no panic; every
// command with an ID is recorded with its outcome and event; nothing runs
// beyond the cloud's level; no token beyond the policy.
func FuzzCommand(f *testing.F) {
	f.Add(uint8(0), "cmd-1", []byte(`{"ttl":"1h","uses":1}`), uint8(2))
	f.Add(uint8(0), "cmd-2", []byte(`{"ttl":"876000h","uses":1000}`), uint8(2))
	f.Add(uint8(0), "cmd-3", []byte(`{"ttl":"-1s"}`), uint8(1))
	f.Add(uint8(1), "cmd-4", []byte(`{"name":"n1"}`), uint8(1))
	f.Add(uint8(2), "cmd-5", []byte(`{"service":"redis","set":{"storage":"2Gi"}}`), uint8(1))
	f.Add(uint8(3), "cmd-6", []byte(`{"osid":"redis-aaaaa"}`), uint8(0))
	f.Add(uint8(4), "cmd-7", []byte(`{"name":"web","image":"nginx"}`), uint8(1))
	f.Add(uint8(6), "", []byte(`null`), uint8(2))
	f.Add(uint8(0), "cmd-8", []byte(`{"ttl":"`+strings.Repeat("9", 5000)+`"}`), uint8(2))
	key, _ := seal.NewKey()
	levels := []string{raftstore.CloudAllowRead, raftstore.CloudAllowDeploy, raftstore.CloudAllowAdmin}
	f.Fuzz(func(t *testing.T, k uint8, id string, args []byte, level uint8) {
		store, err := raftstoretest.NewBootstrapped("c1")
		if err != nil {
			t.Fatal(err)
		}
		h := fuzzHost{store}
		allow := levels[int(level)%len(levels)]
		reg := &raftstore.CloudRegistration{URL: "https://127.0.0.1:1", CloudClusterID: "cl-1", CAFingerprint: strings.Repeat("a", 64),
			ClientCertPEM: []byte("cert"), ClientKeySealed: "sealed1:x", Allow: allow}
		if res, err := h.Apply(context.Background(), &raftstore.Command{Op: raftstore.OpCloudRegister, Cloud: &raftstore.CloudCmd{Register: reg}}); err != nil || res.Error() != nil {
			t.Fatal(err, res.Error())
		}
		l, err := New(Config{Host: h, DataKey: key, NodeName: "n1", JoinToken: func(a, b string) (string, string) { return a + "." + b, "" }},
			slog.New(slog.NewTextHandler(io.Discard, nil)))
		if err != nil {
			t.Fatal(err)
		}
		kind := fuzzKinds[int(k)%len(fuzzKinds)]
		now := time.Date(2026, 12, 3, 20, 0, 0, 0, time.UTC)
		c := cloudproto.Command{ID: id, Kind: kind, Args: json.RawMessage(args), CreatedAt: now}
		st0, _ := h.State()
		out := l.apply(context.Background(), c)
		st, _ := h.State()

		if validCommandID(id) {
			if out.ID != id || st.Cloud.Result(id) == nil {
				t.Fatalf("command %q (%s) not recorded: %+v", id, kind, out)
			}
			found := false
			for _, e := range st.Events {
				found = found || (e.Kind == raftstore.EventCloudCommand && strings.Contains(e.Detail, id))
			}
			if !found {
				t.Fatalf("no event for command %q", id)
			}
		} else if id != "" && out.Error == "" {
			t.Fatalf("malformed command ID %q accepted", id)
		}
		for _, e := range st.Events {
			if len(e.Detail) > 1024 {
				t.Fatalf("event of %d bytes recorded", len(e.Detail))
			}
		}
		need := map[string]string{"create_token": "admin", "remove_node": "admin"}[kind]
		if need == "" {
			need = "deploy"
		}
		changed := len(st.Tokens) != len(st0.Tokens) || len(st.Nodes) != len(st0.Nodes) ||
			len(st.Workloads.Services) != len(st0.Workloads.Services) || len(st.Workloads.Apps) != len(st0.Workloads.Apps)
		if changed && (out.Error != "" || !raftstore.CloudAllows(allow, need)) {
			t.Fatalf("%s at level %s changed the cluster (error %q)", kind, allow, out.Error)
		}
		for _, tk := range st.Tokens {
			if tk.UsesLeft > raftstore.DefaultTokenMaxUses || tk.ExpiresAt.After(now.Add(raftstore.DefaultTokenMaxTTL)) {
				t.Fatalf("token beyond the policy: %+v", tk)
			}
		}
	})
}
