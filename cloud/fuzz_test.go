package cloud

import (
	"bytes"
	"encoding/binary"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/runos/runos-agent/api"
	"github.com/runos/runos-agent/cloudproto"
)

// sinkConn is a session's connection whose frames go nowhere: the fuzz
// target drives the handler directly.
type sinkConn struct{ net.Conn }

func (sinkConn) Write(p []byte) (int, error)      { return len(p), nil }
func (sinkConn) SetWriteDeadline(time.Time) error { return nil }
func (sinkConn) Close() error                     { return nil }

// FuzzSessionHandle feeds arbitrary frames to a session's message handler
// (the cloud side of the link): whatever a cluster sends, the cloud answers
// with an error or applies it, never panics, and the mirror's cursor only
// moves to an index the frame named.
func FuzzSessionHandle(f *testing.F) {
	frame := func(m *cloudproto.Msg) []byte {
		var b bytes.Buffer
		cloudproto.WriteFrame(&b, m)
		return b.Bytes()
	}
	f.Add(frame(&cloudproto.Msg{Type: cloudproto.MsgSnapshot, Snapshot: &cloudproto.Snapshot{Index: 7, Nodes: []api.Node{apiNode}}}))
	f.Add(frame(&cloudproto.Msg{Type: cloudproto.MsgChanges, Changes: []cloudproto.Change{{Index: 11, Op: "join", NodeID: "n1", Node: &apiNode}, {Index: 12, Op: "workload_service_create", WorkloadID: "redis-aaaaa"}}}))
	f.Add(frame(&cloudproto.Msg{Type: cloudproto.MsgChanges, Changes: []cloudproto.Change{{Index: 3, TokensChanged: true, Tokens: []cloudproto.Token{{ID: "t"}}}}}))
	f.Add(frame(&cloudproto.Msg{Type: cloudproto.MsgResult, Result: &cloudproto.CmdResult{ID: "cmd-1", Error: "x"}}))
	f.Add(frame(&cloudproto.Msg{Type: cloudproto.MsgHealth, Health: &cloudproto.Health{Leader: "n1"}}))
	f.Add(frame(&cloudproto.Msg{Type: cloudproto.MsgReissue, Reissue: &cloudproto.Reissue{CSR: "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"}}))
	f.Add(frame(&cloudproto.Msg{Type: cloudproto.MsgHello}))
	f.Add(binary.BigEndian.AppendUint32(nil, 4))

	s, err := New(Config{DataDir: f.TempDir(), Listen: "127.0.0.1:0"}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { s.store.Close() })
	s.store.db.NoSync = true // the fuzz target's store is thrown away
	c := &clusterRec{ID: "cl-fz", Name: "fz", CertSerial: "1", CertFingerprint: "fp"}
	if err := s.store.db.Update(func(tx *bolt.Tx) error { return s.store.putCluster(tx, c) }); err != nil {
		f.Fatal(err)
	}
	ss := &session{s: s, clusterID: c.ID, conn: sinkConn{}, serial: "1", certFP: "fp"}
	s.sessions[ss.clusterID] = ss
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := cloudproto.ReadFrame(bytes.NewReader(b))
		if err != nil {
			return
		}
		before, _ := s.store.findCluster(ss.clusterID)
		herr := ss.handle(m)
		after, _ := s.store.findCluster(ss.clusterID)
		if after.Cursor == before.Cursor {
			return
		}
		if herr != nil {
			t.Fatalf("cursor moved %d -> %d by a refused %s frame: %v", before.Cursor, after.Cursor, m.Type, herr)
		}
		named := m.Snapshot != nil && m.Type == cloudproto.MsgSnapshot && m.Snapshot.Index == after.Cursor
		for _, ch := range m.Changes {
			named = named || (m.Type == cloudproto.MsgChanges && ch.Index == after.Cursor)
		}
		if !named {
			t.Fatalf("cursor moved %d -> %d, an index the %s frame did not name", before.Cursor, after.Cursor, m.Type)
		}
	})
}
