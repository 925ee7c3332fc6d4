package raftstore

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

// The cloud link's part of the state (issue 5): the registration every
// future leader uses, the cursor the cloud acknowledged, the cloud commands
// already applied, and the change log the outbox is read from.

// Cloud ops.
const (
	OpCloudRegister   = "cloud_register"   // store the registration (connect)
	OpCloudDisconnect = "cloud_disconnect" // forget the registration
	OpCloudAck        = "cloud_ack"        // the cloud acknowledged changes up to an index
	OpCloudExec       = "cloud_exec"       // apply a command the cloud sent, once per cloud command ID
	OpCloudRotate     = "cloud_rotate"     // ask the leader to re-issue the cloud client credential
	OpCloudReissue    = "cloud_reissue"    // the re-issued credential: new certificate and sealed key
	OpCloudAllow      = "cloud_allow"      // change what the cloud may do (never from the cloud)
)

// What the cloud may do, chosen at `cloud connect` and changed only
// locally (cloud_allow is not a cloud_exec op).
const (
	CloudAllowRead   = "read"   // the mirror only: no command runs
	CloudAllowDeploy = "deploy" // workload commands (the default)
	CloudAllowAdmin  = "admin"  // also join tokens and node removal
)

// EventCloudCommand records every cloud command executed or refused, with
// its command ID and kind.
const EventCloudCommand = "cloud_command"

var cloudAllowRank = map[string]int{CloudAllowRead: 0, CloudAllowDeploy: 1, "": 1, CloudAllowAdmin: 2}

// ParseCloudAllow checks a level; "" is the default, deploy.
func ParseCloudAllow(s string) (string, error) {
	if s == "" {
		return CloudAllowDeploy, nil
	}
	if _, ok := cloudAllowRank[s]; !ok {
		return "", fmt.Errorf("unknown cloud permission %q (read, deploy or admin)", s)
	}
	return s, nil
}

// CloudAllows reports whether a cloud allowed have may do what needs
// need. An unknown level allows nothing.
func CloudAllows(have, need string) bool {
	h, ok1 := cloudAllowRank[have]
	n, ok2 := cloudAllowRank[need]
	return ok1 && ok2 && need != CloudAllowRead && h >= n
}

// CloudOpAllow is the level a cloud command's inner op needs ("" : none
// is enough, the op is never the cloud's).
func CloudOpAllow(op string) string {
	switch op {
	case OpCreateToken, OpRemoveNode:
		return CloudAllowAdmin
	case OpWorkloadServiceCreate, OpWorkloadServiceDelete, OpWorkloadAppCreate, OpWorkloadAppDelete:
		return CloudAllowDeploy
	}
	return ""
}

// changeWindow bounds the change log. A cloud that fell further behind (a
// cursor older than the oldest entry kept) gets a full resync instead. It
// is at least the 10,000 changes the catch-up benchmark queues.
const changeWindow = 16384

// cloudDoneWindow bounds how many applied cloud command IDs are remembered.
// The cloud resends a command only until it has its result, so a replay
// comes within seconds or minutes; thousands of later commands is far
// beyond any retry.
const cloudDoneWindow = 10000

// Errors of cloud ops.
var (
	ErrCloudReplay        = errors.New("cloud command was already applied")
	ErrCloudNotAllowed    = errors.New("operation is not allowed from the cloud")
	errCloudNotRegistered = errors.New("not connected to a cloud")
)

// CloudState is the cluster's cloud registration and sync cursor.
type CloudState struct {
	// Registration is nil while the cluster is not connected to a cloud.
	Registration *CloudRegistration `json:"registration,omitempty"`
	// RotateCredential is set by a data key rotation (node removal) while
	// registered: whoever held the old data key could open the client key,
	// so the cloud session must re-issue the client credential and clear
	// this flag when the new one is stored.
	RotateCredential bool `json:"rotate_credential,omitempty"`
	// AckIndex is the highest Raft index of a change the cloud confirmed
	// (persisted lazily: the cloud's own cursor is authoritative on
	// reconnect; this one feeds `cloud status` and survives leader change).
	AckIndex uint64    `json:"ack_index"`
	AckTime  time.Time `json:"ack_time,omitzero"`
	// Changes is the outbox: every state change by Raft index, oldest
	// first, bounded by changeWindow. Entries are never modified in place
	// once appended (views share the backing array, see clone).
	Changes []CloudChange `json:"changes,omitempty"`
	// Trimmed is the highest index dropped from Changes: a cursor below it
	// cannot be resumed from.
	Trimmed uint64 `json:"trimmed,omitempty"`
	// Done are the applied cloud commands with their results, oldest
	// first, bounded by cloudDoneWindow. Like Changes, entries are never
	// modified once appended, so views share them.
	Done []CloudDone `json:"done,omitempty"`
}

// CloudDone is one applied cloud command.
type CloudDone struct {
	ID     string         `json:"id"`
	Result CloudCmdResult `json:"result"`
}

// Result returns the recorded outcome of cloud command id, or nil if it
// was never applied (or so long ago that it was forgotten). Commands are
// rare, so a scan from the newest end is cheap enough.
func (c CloudState) Result(id string) *CloudCmdResult {
	for i := len(c.Done) - 1; i >= 0; i-- {
		if c.Done[i].ID == id {
			r := c.Done[i].Result
			return &r
		}
	}
	return nil
}

// CloudRegistration is what `cloud connect` obtained from the cloud.
type CloudRegistration struct {
	URL            string `json:"url"`
	CloudClusterID string `json:"cloud_cluster_id"`
	CAFingerprint  string `json:"ca_fingerprint"`
	CACertPEM      []byte `json:"ca_cert_pem"`
	ClientCertPEM  []byte `json:"client_cert_pem"`
	// ClientKeySealed is the client key sealed with the cluster data key
	// (seal purpose CloudKeyPurpose) by the proposer: never plaintext in
	// the log or snapshots.
	ClientKeySealed string    `json:"client_key_sealed"`
	RegisteredAt    time.Time `json:"registered_at"`
	// Index is the Raft index the registration was applied at; changes
	// before it predate the link and travel in the first full resync.
	Index uint64 `json:"index"`
	// Allow is what the cloud may do: read, deploy (""), admin.
	Allow string `json:"allow,omitempty"`
}

// CloudKeyPurpose is the seal purpose of the cloud client key.
const CloudKeyPurpose = "cloud/client-key"

// CloudChange is one entry of the outbox. It names what changed; the link
// reads the current record from the state when it sends it.
type CloudChange struct {
	Index   uint64 `json:"i"`
	Op      string `json:"op"`
	Subject string `json:"s,omitempty"` // node ID, token ID, ... (op-specific)
}

// CloudCmdResult is a cloud command's outcome, kept for replays.
type CloudCmdResult struct {
	Index uint64          `json:"index"`
	Err   string          `json:"error,omitempty"`
	Data  json.RawMessage `json:"data,omitempty"`
}

// clone deep-copies everything but Changes and Done, whose entries are
// immutable once appended: a view shares their backing arrays, clipped so
// nothing appends into them. That keeps View cheap with a full outbox.
func (c CloudState) clone() CloudState {
	out := c
	if c.Registration != nil {
		r := *c.Registration
		r.CACertPEM = slices.Clone(r.CACertPEM)
		r.ClientCertPEM = slices.Clone(r.ClientCertPEM)
		out.Registration = &r
	}
	out.Changes = slices.Clip(c.Changes)
	out.Done = slices.Clip(c.Done)
	return out
}

// ChangesAfter returns the outbox entries with index > after, and false if
// the log no longer reaches back that far (the caller must resync fully).
func (c CloudState) ChangesAfter(after uint64) ([]CloudChange, bool) {
	i, _ := slices.BinarySearchFunc(c.Changes, after+1, func(e CloudChange, idx uint64) int {
		switch {
		case e.Index < idx:
			return -1
		case e.Index > idx:
			return 1
		}
		return 0
	})
	return c.Changes[i:], after >= c.Trimmed
}

// Pending counts outbox entries not yet acknowledged at cursor after.
func (c CloudState) Pending(after uint64) int {
	ch, _ := c.ChangesAfter(after)
	return len(ch)
}

// CloudCmd is the payload of cloud_* ops.
type CloudCmd struct {
	Register *CloudRegistration `json:"register,omitempty"`
	// AckIndex for cloud_ack.
	AckIndex uint64 `json:"ack_index,omitempty"`
	// CommandID and Inner for cloud_exec: Inner is an ordinary command
	// (create_token, remove_node, ...), applied at most once per CommandID.
	CommandID string   `json:"command_id,omitempty"`
	Inner     *Command `json:"inner,omitempty"`
	// Kind is the cloud command's kind (create_token, ...), for its event.
	Kind string `json:"kind,omitempty"`
	// Refused, for cloud_exec without Inner: the leader refused the
	// command (permission, policy, bad arguments); the reason is its
	// result, remembered like any other.
	Refused string `json:"refused,omitempty"`
	// Allow for cloud_allow.
	Allow string `json:"allow,omitempty"`
}

// cloudExecOps are the ops a cloud command may carry: the console's writes.
// Status writes, purges and the kube target stay local (the kubeconfig
// is a credential the cloud never sees).
var cloudExecOps = map[string]bool{OpCreateToken: true, OpRemoveNode: true,
	OpWorkloadServiceCreate: true, OpWorkloadServiceDelete: true, OpWorkloadAppCreate: true, OpWorkloadAppDelete: true}

func (s *State) applyCloud(cmd *Command, res *Result) error {
	c := cmd.Cloud
	if c == nil {
		return ErrMalformedCmd
	}
	cs := &s.Cloud
	switch cmd.Op {
	case OpCloudRegister:
		r := c.Register
		if r == nil || r.URL == "" || r.CloudClusterID == "" || len(r.ClientCertPEM) == 0 || r.ClientKeySealed == "" || r.CAFingerprint == "" {
			return ErrMalformedCmd
		}
		allow, err := ParseCloudAllow(r.Allow)
		if err != nil {
			return err
		}
		reg := *r
		reg.RegisteredAt = cmd.Time
		reg.Index = res.Index
		reg.Allow = allow
		cs.Registration = &reg
		// A new registration starts a new mirror: nothing acked there;
		// its certificate is new.
		cs.AckIndex, cs.AckTime = 0, time.Time{}
		cs.RotateCredential = false
		return nil
	case OpCloudDisconnect:
		cs.Registration = nil
		cs.AckIndex, cs.AckTime = 0, time.Time{}
		cs.RotateCredential = false
		return nil
	case OpCloudAllow:
		if cs.Registration == nil {
			return errCloudNotRegistered
		}
		allow, err := ParseCloudAllow(c.Allow)
		if err != nil {
			return err
		}
		reg := *cs.Registration // views share the old one until clone
		reg.Allow = allow
		cs.Registration = &reg
		return nil
	case OpCloudRotate:
		if cs.Registration == nil {
			return errCloudNotRegistered
		}
		cs.RotateCredential = true
		return nil
	case OpCloudReissue:
		r, cur := c.Register, cs.Registration
		switch {
		case cur == nil:
			return errCloudNotRegistered
		case r == nil || len(r.ClientCertPEM) == 0 || r.ClientKeySealed == "":
			return ErrMalformedCmd
		case r.CloudClusterID != cur.CloudClusterID || r.Index != cur.Index:
			// Disconnected or registered anew meanwhile: the credential
			// belongs to a registration that is gone.
			return errors.New("cloud registration changed while its credential was re-issued")
		}
		reg := *cur
		reg.ClientCertPEM, reg.ClientKeySealed = slices.Clone(r.ClientCertPEM), r.ClientKeySealed
		cs.Registration = &reg
		cs.RotateCredential = false
		return nil
	case OpCloudAck:
		if c.AckIndex > cs.AckIndex {
			cs.AckIndex, cs.AckTime = c.AckIndex, cmd.Time
		}
		return nil
	case OpCloudExec:
		return s.applyCloudExec(cmd, res)
	}
	return ErrUnknownOp
}

func (s *State) applyCloudExec(cmd *Command, res *Result) error {
	c := cmd.Cloud
	cs := &s.Cloud
	if c.Refused == "" && (c.CommandID == "" || c.Inner == nil) {
		return ErrMalformedCmd
	}
	if prev := cs.Result(c.CommandID); c.CommandID != "" && prev != nil {
		res.Data = prev.Data
		return fmt.Errorf("command %s at index %d: %w", c.CommandID, prev.Index, ErrCloudReplay)
	}
	kind := c.Kind
	if kind == "" && c.Inner != nil {
		kind = c.Inner.Op
	}
	var err error
	switch inner := c.Inner; {
	case c.Refused != "":
		err = errors.New(c.Refused)
	case !cloudExecOps[inner.Op]:
		err = fmt.Errorf("%q: %w", inner.Op, ErrCloudNotAllowed)
	case !CloudAllows(s.cloudAllow(), CloudOpAllow(inner.Op)):
		// The leader checks this before proposing; the FSM holds the
		// line for a leader that did not (or a level changed between).
		err = CloudLevelError(kind, s.cloudAllow(), CloudOpAllow(inner.Op))
	default:
		inner.Time = cmd.Time
		err = s.applyOp(inner, res)
		if err == nil && inner.Op == OpRemoveNode {
			// The event apply() records for the op when it comes directly.
			s.record(res.Index, cmd.Time, Event{Kind: EventNodeRemoved, Node: res.Node.Name, Detail: "by cloud command"})
		}
	}
	outcome := fmt.Sprintf("executed at index %d", res.Index)
	if err != nil {
		// Bounded: an error may quote what the cloud sent.
		text := err.Error()
		if len(text) > 512 {
			text = strings.ToValidUTF8(text[:512], "") + "…"
		}
		outcome = "refused: " + text
		if c.Inner != nil && c.Refused == "" && !errors.Is(err, ErrCloudNotAllowed) {
			outcome = "failed: " + text
		}
		// apply() sends no change for a failed command; this one carries
		// its event to the cloud's mirror.
		s.appendChange(res.Index, OpCloudExec, c.CommandID)
	}
	if len(kind) > 64 {
		kind = kind[:64]
	}
	s.record(res.Index, cmd.Time, Event{Kind: EventCloudCommand, Detail: fmt.Sprintf("cloud command %s (%s) %s", orNone(c.CommandID), orNone(strings.ToValidUTF8(kind, "")), outcome)})
	if c.CommandID != "" {
		// A failed or refused command is remembered too: its failure is
		// its result.
		r := &CloudCmdResult{Index: res.Index, Data: res.Data}
		if err != nil {
			r.Err = err.Error()
		}
		cs.Done = append(cs.Done, CloudDone{ID: c.CommandID, Result: *r})
		if over := len(cs.Done) - cloudDoneWindow; over > 0 {
			cs.Done = cs.Done[over:] // reslice: views may share the front
		}
	}
	return err
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}

// cloudAllow is the registered cloud's level ("" : not registered, or
// registered before levels existed: deploy).
func (s *State) cloudAllow() string {
	if r := s.Cloud.Registration; r != nil {
		return r.Allow
	}
	return ""
}

// CloudLevelError is the refusal of a command beyond the cloud's level.
func CloudLevelError(kind, have, need string) error {
	if have == "" {
		have = CloudAllowDeploy
	}
	if need == "" {
		return fmt.Errorf("%s: %w", kind, ErrCloudNotAllowed)
	}
	return fmt.Errorf("%s needs the cloud connected with --allow %s (it has %s; change it locally with `runos-agent cloud allow %s`): %w",
		kind, need, have, need, ErrCloudNotAllowed)
}

// recordChange is called after every command that changed the state, with
// its Raft index; the cloud outbox is built from it. It runs for every
// write, so it only appends a small record; the cloud's own bookkeeping
// (register, ack, disconnect) is not a change, or acks would feed the
// outbox forever.
func (s *State) recordChange(index uint64, cmd *Command, res *Result) {
	op, subject, viaCloud := cmd.Op, "", cmd.Op == OpCloudExec
	if strings.HasPrefix(op, "cloud_") {
		if op != OpCloudExec || cmd.Cloud == nil || cmd.Cloud.Inner == nil {
			return
		}
		op = cmd.Cloud.Inner.Op
		cmd = cmd.Cloud.Inner
	}
	switch op {
	case OpBootstrap, OpJoin, OpRemoveNode, OpUpdateNode:
		if res.Node != nil {
			subject = res.Node.ID
		}
	case OpCreateToken:
		if cmd.CreateToken != nil {
			subject = cmd.CreateToken.Token.ID
		}
	case OpWorkloadServiceCreate, OpWorkloadAppCreate, OpWorkloadServiceDelete, OpWorkloadAppDelete,
		OpWorkloadServicePurge, OpWorkloadAppPurge, OpWorkloadStatus:
		// The OSID: the link sends the record as it is then (or its
		// removal). A status write (or purge, or repeated delete) that changed
		// nothing is no change.
		if w := cmd.Workload; w != nil {
			switch {
			case w.Service != nil:
				subject = w.Service.OSID
			case w.App != nil:
				subject = w.App.OSID
			default:
				subject = w.OSID
			}
		}
		if !workloadChanged(res) {
			if viaCloud {
				// A cloud command that changed nothing still has its
				// event for the mirror.
				s.appendChange(index, OpCloudExec, "")
			}
			return
		}
	}
	s.appendChange(index, op, subject)
}

// appendChange adds one outbox entry.
func (s *State) appendChange(index uint64, op, subject string) {
	cs := &s.Cloud
	// Appending never touches entries a view can see; dropping the oldest
	// reslices (the array is reclaimed when append next reallocates).
	cs.Changes = append(cs.Changes, CloudChange{Index: index, Op: op, Subject: subject})
	if over := len(cs.Changes) - changeWindow; over > 0 {
		cs.Trimmed = cs.Changes[over-1].Index
		cs.Changes = cs.Changes[over:]
	}
}

// workloadChanged reads WorkloadResult.Changed without a full decode (it
// runs on every status write).
func workloadChanged(res *Result) bool {
	return !strings.Contains(string(res.Data), `"changed":false`)
}
