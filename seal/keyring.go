package seal

import (
	"bufio"
	"cmp"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
)

// Sealer seals with the current data key and opens with any key it holds.
// A Key is a Sealer of one key; a *Keyring follows rotations, so a
// component given one needs no restart when the data key changes.
type Sealer interface {
	// Current is the key new values are sealed with (and HMACs keyed).
	Current() Key
	Seal(purpose string, plaintext []byte) (string, error)
	Open(purpose, sealed string) ([]byte, error)
}

var (
	_ Sealer = Key{}
	_ Sealer = (*Keyring)(nil)
)

// Current implements Sealer.
func (k Key) Current() Key { return k }

// Seal implements Sealer.
func (k Key) Seal(purpose string, plaintext []byte) (string, error) {
	return Seal(k, purpose, plaintext)
}

// Open implements Sealer.
func (k Key) Open(purpose, sealed string) ([]byte, error) { return Open(k, purpose, sealed) }

// EpochKey is a data key with its epoch: the cluster's first key is epoch
// 1, and every rotation (node removal) adds one.
type EpochKey struct {
	Epoch uint64
	Key   Key
}

// KeepEpochs is how many epochs a keyring keeps: the current one seals,
// the previous one still opens values a lagging member sealed just before
// it learnt of the rotation.
const KeepEpochs = 2

// Keyring is a node's data keys by epoch. It is safe for concurrent use.
type Keyring struct {
	mu   sync.RWMutex
	keys []EpochKey // guarded by mu; newest first, at most KeepEpochs
}

// NewKeyring returns a keyring holding keys (any order; duplicates of an
// epoch keep the first).
func NewKeyring(keys ...EpochKey) (*Keyring, error) {
	r := &Keyring{}
	for _, k := range keys {
		if err := r.Add(k); err != nil {
			return nil, err
		}
	}
	if len(r.keys) == 0 {
		return nil, errors.New("seal: a keyring needs at least one key")
	}
	return r, nil
}

// Add puts a key in the ring and drops epochs beyond KeepEpochs. Adding an
// epoch already held with another key is refused: two keys for one epoch
// means someone lies about the rotation.
func (r *Keyring) Add(k EpochKey) error {
	if k.Key.IsZero() || k.Epoch == 0 {
		return errors.New("seal: invalid keyring entry")
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, h := range r.keys {
		if h.Epoch == k.Epoch {
			if h.Key != k.Key {
				return fmt.Errorf("seal: epoch %d is already held with another key", k.Epoch)
			}
			return nil
		}
	}
	r.keys = append(r.keys, k)
	slices.SortFunc(r.keys, func(a, b EpochKey) int { return cmp.Compare(b.Epoch, a.Epoch) })
	if len(r.keys) > KeepEpochs {
		r.keys = r.keys[:KeepEpochs]
	}
	return nil
}

// Epoch is the current epoch.
func (r *Keyring) Epoch() uint64 {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.keys[0].Epoch
}

// Current implements Sealer: the newest key.
func (r *Keyring) Current() Key {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.keys[0].Key
}

// Keys returns the keys, newest first.
func (r *Keyring) Keys() []Key {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := make([]Key, len(r.keys))
	for i, k := range r.keys {
		out[i] = k.Key
	}
	return out
}

// Entries returns the keys with their epochs, newest first.
func (r *Keyring) Entries() []EpochKey {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return slices.Clone(r.keys)
}

// Seal implements Sealer with the current key.
func (r *Keyring) Seal(purpose string, plaintext []byte) (string, error) {
	return Seal(r.Current(), purpose, plaintext)
}

// Open implements Sealer, trying every key held.
func (r *Keyring) Open(purpose, sealed string) ([]byte, error) {
	var err error = ErrOpen
	for _, k := range r.Keys() {
		var pt []byte
		if pt, err = Open(k, purpose, sealed); err == nil {
			return pt, nil
		}
	}
	return nil, err
}

// Marshal is the keyring in its file form, one "epoch key" per line,
// newest first.
func (r *Keyring) Marshal() []byte {
	var b strings.Builder
	for _, k := range r.Entries() {
		fmt.Fprintf(&b, "%d %s\n", k.Epoch, k.Key)
	}
	return []byte(b.String())
}

// ParseKeyring reads what Marshal wrote, or the older single-key form (one
// base64 key, which is epoch 1).
func ParseKeyring(text string) (*Keyring, error) {
	var keys []EpochKey
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		switch len(f) {
		case 1: // the single-key form, before epochs
			k, err := ParseKey(f[0])
			if err != nil {
				return nil, err
			}
			keys = append(keys, EpochKey{Epoch: 1, Key: k})
		case 2:
			e, err := strconv.ParseUint(f[0], 10, 64)
			if err != nil || e == 0 {
				return nil, fmt.Errorf("seal: invalid key epoch %q", f[0])
			}
			k, err := ParseKey(f[1])
			if err != nil {
				return nil, err
			}
			keys = append(keys, EpochKey{Epoch: e, Key: k})
		default:
			return nil, errors.New("seal: invalid keyring line")
		}
	}
	return NewKeyring(keys...)
}
