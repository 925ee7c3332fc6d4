package cloud

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/runos/runos-agent/api"
	"github.com/runos/runos-agent/cloudproto"
)

// The store is one bbolt file in the data dir. Buckets:
//
//	meta      CA and server certificate
//	tokens    registration tokens by ID (only the secret's hash)
//	clusters  cluster records by cloud cluster ID
//	m/<id>    the cluster's mirror: nodes, tokens, events, changes, commands
var (
	bMeta     = []byte("meta")
	bTokens   = []byte("tokens")
	bClusters = []byte("clusters")
	bNodes    = []byte("nodes")
	bMTokens  = []byte("tokens")
	bEvents   = []byte("events")
	bChanges  = []byte("changes")
	bCommands = []byte("commands")
	bServices = []byte("services") // api.Service by OSID
	bApps     = []byte("apps")     // api.App by OSID
)

// eventWindow bounds the events a mirror keeps per cluster.
const eventWindow = 5000

// changeWindow bounds the change indexes a mirror keeps (for auditing that
// each arrived once); the cursor, not this log, decides what is new.
const changeWindow = 50000

type store struct{ db *bolt.DB }

func openStore(dir string) (*store, error) {
	db, err := bolt.Open(filepath.Join(dir, "cloud.db"), 0o600, &bolt.Options{Timeout: 2 * time.Second})
	if err != nil {
		if errors.Is(err, bolt.ErrTimeout) {
			return nil, fmt.Errorf("%s is in use by another runos-cloud", filepath.Join(dir, "cloud.db"))
		}
		return nil, err
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bMeta, bTokens, bClusters} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, err
	}
	return &store{db: db}, nil
}

func (s *store) Close() error { return s.db.Close() }

func putJSON(b *bolt.Bucket, k []byte, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return b.Put(k, data)
}

func getJSON(b *bolt.Bucket, k []byte, v any) bool {
	data := b.Get(k)
	return data != nil && json.Unmarshal(data, v) == nil
}

func u64(v uint64) []byte {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], v)
	return b[:]
}

// eventKey orders a mirror's events by index, then by their order at that
// index: one command can record several (a cloud command that removed a
// node: node_removed and cloud_command).
func eventKey(seq uint64, n int) []byte {
	return binary.BigEndian.AppendUint32(u64(seq), uint32(n))
}

// regToken is a registration token as stored.
type regToken struct {
	ID         string    `json:"id"`
	SecretHash string    `json:"secret_hash"`
	ClusterID  string    `json:"cluster_id"`
	ExpiresAt  time.Time `json:"expires_at"`
	Used       bool      `json:"used"`
	CreatedAt  time.Time `json:"created_at"`
}

// clusterRec is a cluster as the cloud knows it.
type clusterRec struct {
	ID             string `json:"id"`
	Name           string `json:"name"`
	AgentClusterID string `json:"agent_cluster_id,omitempty"`
	CertSerial     string `json:"cert_serial,omitempty"`
	// CertFingerprint is the SHA-256 of the one client certificate
	// accepted (the newest: a re-issue or re-registration replaces it).
	// Empty in records from before it was kept: the serial decides.
	CertFingerprint string    `json:"cert_fingerprint,omitempty"`
	CertIssuedAt    time.Time `json:"cert_issued_at,omitzero"`
	Revoked         bool      `json:"revoked,omitempty"`
	RegisteredAt    time.Time `json:"registered_at,omitzero"`
	LastSeen        time.Time `json:"last_seen,omitzero"`
	// Cursor is the Raft index through which the mirror holds every change.
	Cursor uint64 `json:"cursor"`
	// ChangesApplied and DuplicatesIgnored count outbox entries.
	ChangesApplied    uint64 `json:"changes_applied"`
	DuplicatesIgnored uint64 `json:"duplicates_ignored"`
	Resyncs           uint64 `json:"resyncs"`
	NextCommand       uint64 `json:"next_command"`
}

// currentCert reports whether a client certificate (fingerprint and
// serial) is the cluster's newest.
func (c *clusterRec) currentCert(fp, serial string) bool {
	if c.CertFingerprint != "" {
		return c.CertFingerprint == fp
	}
	return c.CertSerial != "" && c.CertSerial == serial
}

func mirrorName(id string) []byte { return []byte("m/" + id) }

func (s *store) cluster(tx *bolt.Tx, id string) (*clusterRec, bool) {
	var c clusterRec
	ok := getJSON(tx.Bucket(bClusters), []byte(id), &c)
	return &c, ok
}

func (s *store) putCluster(tx *bolt.Tx, c *clusterRec) error {
	return putJSON(tx.Bucket(bClusters), []byte(c.ID), c)
}

// findCluster resolves a cluster by cloud ID or name.
func (s *store) findCluster(ref string) (*clusterRec, error) {
	var out *clusterRec
	err := s.db.View(func(tx *bolt.Tx) error {
		if c, ok := s.cluster(tx, ref); ok {
			out = c
			return nil
		}
		return tx.Bucket(bClusters).ForEach(func(k, v []byte) error {
			var c clusterRec
			if json.Unmarshal(v, &c) == nil && c.Name == ref {
				out = &c
			}
			return nil
		})
	})
	if err == nil && out == nil {
		err = fmt.Errorf("%w: %q", errNoCluster, ref)
	}
	return out, err
}

func (s *store) clusters() ([]clusterRec, error) {
	var out []clusterRec
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bClusters).ForEach(func(k, v []byte) error {
			var c clusterRec
			if err := json.Unmarshal(v, &c); err != nil {
				return err
			}
			out = append(out, c)
			return nil
		})
	})
	slices.SortFunc(out, func(a, b clusterRec) int {
		if a.Name < b.Name {
			return -1
		}
		if a.Name > b.Name {
			return 1
		}
		return 0
	})
	return out, err
}

func (s *store) mirror(tx *bolt.Tx, id string) (*bolt.Bucket, error) {
	m, err := tx.CreateBucketIfNotExists(mirrorName(id))
	if err != nil {
		return nil, err
	}
	for _, b := range [][]byte{bNodes, bMTokens, bEvents, bChanges, bCommands, bServices, bApps} {
		if _, err := m.CreateBucketIfNotExists(b); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// resetMirror empties a cluster's mirror (a new registration), keeping its
// commands.
func (s *store) resetMirror(tx *bolt.Tx, id string) error {
	m, err := s.mirror(tx, id)
	if err != nil {
		return err
	}
	for _, b := range [][]byte{bNodes, bMTokens, bEvents, bChanges, bServices, bApps} {
		if err := m.DeleteBucket(b); err != nil {
			return err
		}
		if _, err := m.CreateBucket(b); err != nil {
			return err
		}
	}
	return nil
}

// applySnapshot replaces the mirror with a full resync.
func (s *store) applySnapshot(id string, snap *cloudproto.Snapshot) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		c, ok := s.cluster(tx, id)
		if !ok {
			return errNoCluster
		}
		if err := s.resetMirror(tx, id); err != nil {
			return err
		}
		m, _ := s.mirror(tx, id)
		for _, n := range snap.Nodes {
			if err := putJSON(m.Bucket(bNodes), []byte(n.ID), n); err != nil {
				return err
			}
		}
		for _, t := range snap.Tokens {
			if err := putJSON(m.Bucket(bMTokens), []byte(t.ID), t); err != nil {
				return err
			}
		}
		var prev uint64
		n := 0
		for _, e := range snap.Events {
			if e.Seq != prev {
				prev, n = e.Seq, 0
			}
			if err := putJSON(m.Bucket(bEvents), eventKey(e.Seq, n), e); err != nil {
				return err
			}
			n++
		}
		for _, w := range snap.Services {
			if err := putJSON(m.Bucket(bServices), []byte(w.OSID), w); err != nil {
				return err
			}
		}
		for _, w := range snap.Apps {
			if err := putJSON(m.Bucket(bApps), []byte(w.OSID), w); err != nil {
				return err
			}
		}
		c.Cursor = snap.Index
		c.Resyncs++
		return s.putCluster(tx, c)
	})
}

// applyChanges applies outbox entries in one transaction. Entries at or
// below the cursor were applied before (an ack that got lost) and are
// skipped and counted, so each change lands once.
func (s *store) applyChanges(id string, changes []cloudproto.Change) (uint64, error) {
	var cursor uint64
	err := s.db.Update(func(tx *bolt.Tx) error {
		c, ok := s.cluster(tx, id)
		if !ok {
			return errNoCluster
		}
		m, err := s.mirror(tx, id)
		if err != nil {
			return err
		}
		nodes, tokens, events, log := m.Bucket(bNodes), m.Bucket(bMTokens), m.Bucket(bEvents), m.Bucket(bChanges)
		for _, ch := range changes {
			if ch.Index <= c.Cursor {
				c.DuplicatesIgnored++
				continue
			}
			if ch.NodeID != "" {
				if ch.Node != nil {
					if err := putJSON(nodes, []byte(ch.NodeID), ch.Node); err != nil {
						return err
					}
				} else if err := nodes.Delete([]byte(ch.NodeID)); err != nil {
					return err
				}
			}
			if ch.TokensChanged {
				if err := m.DeleteBucket(bMTokens); err != nil {
					return err
				}
				if tokens, err = m.CreateBucket(bMTokens); err != nil {
					return err
				}
				for _, t := range ch.Tokens {
					if err := putJSON(tokens, []byte(t.ID), t); err != nil {
						return err
					}
				}
			}
			if err := applyWorkload(m, ch); err != nil {
				return err
			}
			for i, e := range ch.Events {
				if err := putJSON(events, eventKey(e.Seq, i), e); err != nil {
					return err
				}
			}
			if err := log.Put(u64(ch.Index), []byte(ch.Op)); err != nil {
				return err
			}
			c.Cursor = ch.Index
			c.ChangesApplied++
		}
		trim(events, eventWindow)
		trim(log, changeWindow)
		cursor = c.Cursor
		return s.putCluster(tx, c)
	})
	return cursor, err
}

// applyWorkload puts (or removes) the service or app a change names.
func applyWorkload(m *bolt.Bucket, ch cloudproto.Change) error {
	if ch.WorkloadID == "" {
		return nil
	}
	svcs, apps := m.Bucket(bServices), m.Bucket(bApps)
	key := []byte(ch.WorkloadID)
	switch {
	case ch.Service != nil:
		return putJSON(svcs, key, ch.Service)
	case ch.App != nil:
		return putJSON(apps, key, ch.App)
	}
	if err := svcs.Delete(key); err != nil {
		return err
	}
	return apps.Delete(key)
}

// trim drops the oldest keys beyond n.
func trim(b *bolt.Bucket, n int) {
	over := b.Stats().KeyN - n
	if over <= 0 {
		return
	}
	cur := b.Cursor()
	for k, _ := cur.First(); k != nil && over > 0; k, _ = cur.Next() {
		cur.Delete()
		over--
	}
}

// mirrorView is a cluster's mirror read in one transaction.
type mirrorView struct {
	Services []api.Service // by OSID
	Apps     []api.App     // by OSID
	Nodes    []api.Node
	Tokens   []cloudproto.Token
	Events   []api.Event
	Changes  []uint64
}

func (s *store) readMirror(id string, withChanges bool) (*mirrorView, error) {
	out := &mirrorView{Nodes: []api.Node{}, Tokens: []cloudproto.Token{}, Events: []api.Event{}, Services: []api.Service{}, Apps: []api.App{}}
	err := s.db.View(func(tx *bolt.Tx) error {
		m := tx.Bucket(mirrorName(id))
		if m == nil {
			return nil
		}
		m.Bucket(bNodes).ForEach(func(k, v []byte) error {
			var n api.Node
			if json.Unmarshal(v, &n) == nil {
				out.Nodes = append(out.Nodes, n)
			}
			return nil
		})
		m.Bucket(bMTokens).ForEach(func(k, v []byte) error {
			var t cloudproto.Token
			if json.Unmarshal(v, &t) == nil {
				out.Tokens = append(out.Tokens, t)
			}
			return nil
		})
		m.Bucket(bEvents).ForEach(func(k, v []byte) error {
			var e api.Event
			if json.Unmarshal(v, &e) == nil {
				out.Events = append(out.Events, e)
			}
			return nil
		})
		readWorkloads(m, out)
		if withChanges {
			m.Bucket(bChanges).ForEach(func(k, v []byte) error {
				out.Changes = append(out.Changes, binary.BigEndian.Uint64(k))
				return nil
			})
		}
		return nil
	})
	slices.SortFunc(out.Nodes, func(a, b api.Node) int {
		if a.Name < b.Name {
			return -1
		}
		if a.Name > b.Name {
			return 1
		}
		return 0
	})
	return out, err
}

// readWorkloadsOnly reads a mirror's services and apps alone: the console
// polls them every few seconds, and the whole mirror holds thousands of
// events.
func (s *store) readWorkloadsOnly(id string) (*mirrorView, error) {
	out := &mirrorView{Services: []api.Service{}, Apps: []api.App{}}
	err := s.db.View(func(tx *bolt.Tx) error {
		if m := tx.Bucket(mirrorName(id)); m != nil {
			readWorkloads(m, out)
		}
		return nil
	})
	return out, err
}

func readWorkloads(m *bolt.Bucket, out *mirrorView) {
	// Mirrors stored before services existed have no such buckets.
	if b := m.Bucket(bServices); b != nil {
		b.ForEach(func(k, v []byte) error {
			var w api.Service
			if json.Unmarshal(v, &w) == nil {
				out.Services = append(out.Services, w)
			}
			return nil
		})
	}
	if b := m.Bucket(bApps); b != nil {
		b.ForEach(func(k, v []byte) error {
			var w api.App
			if json.Unmarshal(v, &w) == nil {
				out.Apps = append(out.Apps, w)
			}
			return nil
		})
	}
}

// Command states.
const (
	CmdPending = "pending" // not yet answered by the cluster
	CmdDone    = "done"
	CmdFailed  = "failed"
)

// CommandRecord is a command the cloud sent (or will send) to a cluster.
type CommandRecord struct {
	cloudproto.Command
	Cluster  string                `json:"cluster"`
	State    string                `json:"state"`
	Result   *cloudproto.CmdResult `json:"result,omitempty"`
	Attempts int                   `json:"attempts"`
	DoneAt   time.Time             `json:"done_at,omitzero"`
	// Replays counts answers that said the command had already been
	// applied (a resend after a lost result, or a replay).
	Replays int `json:"replays,omitempty"`
}

func (s *store) putCommand(id string, rec *CommandRecord) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		m, err := s.mirror(tx, id)
		if err != nil {
			return err
		}
		if m.Bucket(bCommands).Get([]byte(rec.ID)) != nil {
			return fmt.Errorf("command %s already exists", rec.ID)
		}
		return putJSON(m.Bucket(bCommands), []byte(rec.ID), rec)
	})
}

func (s *store) commands(id string) ([]CommandRecord, error) {
	var out []CommandRecord
	err := s.db.View(func(tx *bolt.Tx) error {
		m := tx.Bucket(mirrorName(id))
		if m == nil {
			return nil
		}
		return m.Bucket(bCommands).ForEach(func(k, v []byte) error {
			var r CommandRecord
			if json.Unmarshal(v, &r) == nil {
				out = append(out, r)
			}
			return nil
		})
	})
	slices.SortFunc(out, func(a, b CommandRecord) int { return a.CreatedAt.Compare(b.CreatedAt) })
	return out, err
}

func (s *store) command(id, cmdID string) (*CommandRecord, error) {
	var r CommandRecord
	found := false
	err := s.db.View(func(tx *bolt.Tx) error {
		if m := tx.Bucket(mirrorName(id)); m != nil {
			found = getJSON(m.Bucket(bCommands), []byte(cmdID), &r)
		}
		return nil
	})
	if err == nil && !found {
		err = fmt.Errorf("%w: %s", errNoCommand, cmdID)
	}
	return &r, err
}

// recordResult stores a command's result. The first answer wins; a later
// one (a replay answer) only counts.
func (s *store) recordResult(id string, r *cloudproto.CmdResult) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		m, err := s.mirror(tx, id)
		if err != nil {
			return err
		}
		var rec CommandRecord
		if !getJSON(m.Bucket(bCommands), []byte(r.ID), &rec) {
			return fmt.Errorf("%w: %s", errNoCommand, r.ID)
		}
		if r.Replayed {
			rec.Replays++
		}
		if rec.State == CmdPending {
			rec.Result = r
			rec.State = CmdDone
			if r.Error != "" {
				rec.State = CmdFailed
			}
			rec.DoneAt = time.Now().UTC()
		}
		return putJSON(m.Bucket(bCommands), []byte(r.ID), &rec)
	})
}

func (s *store) markSent(id, cmdID string) {
	s.db.Update(func(tx *bolt.Tx) error {
		m, err := s.mirror(tx, id)
		if err != nil {
			return err
		}
		var rec CommandRecord
		if getJSON(m.Bucket(bCommands), []byte(cmdID), &rec) {
			rec.Attempts++
			return putJSON(m.Bucket(bCommands), []byte(cmdID), &rec)
		}
		return nil
	})
}
