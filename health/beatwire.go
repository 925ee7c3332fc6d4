package health

import (
	"encoding/binary"
	"errors"
	"math"

	"github.com/runos/runos-agent/hostinfo"
)

// Heartbeats on the wire.
//
// Sealed and bound to the sender (frame.go, receive.go); this is the
// plaintext inside.
//
// Every node sends every other node a heartbeat every 5 s, so on a 5-node
// cluster a node sends and receives 96 heartbeats a minute. WireGuard and
// the inner IP/UDP headers already cost ~90 bytes a packet, so the payload
// is kept to a few bytes: a binary record whose optional parts (host
// metrics, mesh counters, version, candidates, node ID) are included only
// when they changed enough to matter, and all of them every fullBeatEvery
// beats so a node that missed one (or just started) catches up.
//
//	magic 'H', version 1
//	flags   uvarint  (beatLeader, beatBye, beatHost, ...)
//	name    string   (uvarint length + bytes)
//	seq     uvarint  (the send stamp, see sendStamp)
//	term    uvarint  (the sender's Raft term)
//	[id]      string                 if beatID
//	[host]    9 uvarints, see below  if beatHost
//	[mesh]    rx, tx uvarint         if beatMesh
//	[version] string                 if beatVersion
//	[cands]   uvarint count, strings if beatCands
const (
	beatMagic   = 'H'
	beatVersion = 1

	maxBeatLen   = 2048
	maxBeatCands = 16
	maxBeatStr   = 255
)

// Beat flags.
const (
	beatLeader uint64 = 1 << iota
	beatBye
	beatHost
	beatMesh
	beatVersionF
	beatCands
	beatID
	// beatNoLeader: the sender follows no leader in its term (it just
	// started, or lost its leader); the leader then stops answering its
	// idle Raft traffic locally, so it hears the leader over the wire.
	beatNoLeader
)

var errBeat = errors.New("malformed heartbeat")

// encodeBeat appends hb's wire form to dst. Only the parts hb.has names are
// written.
func encodeBeat(dst []byte, hb *heartbeat) []byte {
	flags := hb.has
	if hb.Leader {
		flags |= beatLeader
	}
	if hb.Bye {
		flags |= beatBye
	}
	if hb.NoLeader {
		flags |= beatNoLeader
	}
	dst = append(dst, beatMagic, beatVersion)
	dst = binary.AppendUvarint(dst, flags)
	dst = appendStr(dst, hb.Name)
	dst = binary.AppendUvarint(dst, hb.Seq)
	dst = binary.AppendUvarint(dst, hb.Term)
	if flags&beatID != 0 {
		dst = appendStr(dst, hb.ID)
	}
	if flags&beatHost != 0 {
		h := hb.Host
		for _, v := range []uint64{
			fixed(h.CPUPercent, 10), fixed(h.Load1, 100), fixed(h.Load5, 100), fixed(h.Load15, 100),
			h.MemUsedBytes >> 20, h.MemTotalBytes >> 20, h.DiskUsedBytes >> 20, h.DiskTotalBytes >> 20,
			fixed(h.UptimeSeconds, 1),
		} {
			dst = binary.AppendUvarint(dst, v)
		}
	}
	if flags&beatMesh != 0 {
		dst = binary.AppendUvarint(dst, hb.MeshRx)
		dst = binary.AppendUvarint(dst, hb.MeshTx)
	}
	if flags&beatVersionF != 0 {
		dst = appendStr(dst, hb.Version)
	}
	if flags&beatCands != 0 {
		cands := hb.Cands[:min(len(hb.Cands), maxBeatCands)]
		dst = binary.AppendUvarint(dst, uint64(len(cands)))
		for _, c := range cands {
			dst = appendStr(dst, c)
		}
	}
	return dst
}

// decodeBeat parses a heartbeat. It never panics and refuses anything
// malformed, oversized or of another version.
func decodeBeat(b []byte) (heartbeat, error) {
	var hb heartbeat
	if len(b) < 2 || len(b) > maxBeatLen || b[0] != beatMagic || b[1] != beatVersion {
		return hb, errBeat
	}
	r := beatReader{b: b[2:]}
	flags := r.uvarint()
	hb.has = flags &^ (beatLeader | beatBye | beatNoLeader)
	hb.Leader, hb.Bye, hb.NoLeader = flags&beatLeader != 0, flags&beatBye != 0, flags&beatNoLeader != 0
	hb.Name = r.str()
	hb.Seq = r.uvarint()
	hb.Term = r.uvarint()
	if flags&beatID != 0 {
		hb.ID = r.str()
	}
	if flags&beatHost != 0 {
		var v [9]uint64
		for i := range v {
			v[i] = r.uvarint()
		}
		hb.Host = hostinfo.Snapshot{
			CPUPercent: float64(v[0]) / 10, Load1: float64(v[1]) / 100, Load5: float64(v[2]) / 100, Load15: float64(v[3]) / 100,
			MemUsedBytes: v[4] << 20, MemTotalBytes: v[5] << 20, DiskUsedBytes: v[6] << 20, DiskTotalBytes: v[7] << 20,
			UptimeSeconds: float64(v[8]),
		}
	}
	if flags&beatMesh != 0 {
		hb.MeshRx, hb.MeshTx = r.uvarint(), r.uvarint()
	}
	if flags&beatVersionF != 0 {
		hb.Version = r.str()
	}
	if flags&beatCands != 0 {
		n := r.uvarint()
		if n > maxBeatCands {
			return heartbeat{}, errBeat
		}
		for range n {
			hb.Cands = append(hb.Cands, r.str())
		}
	}
	if r.err || len(r.b) != 0 || hb.Name == "" {
		return heartbeat{}, errBeat
	}
	return hb, nil
}

func appendStr(dst []byte, s string) []byte {
	s = s[:min(len(s), maxBeatStr)]
	dst = binary.AppendUvarint(dst, uint64(len(s)))
	return append(dst, s...)
}

// fixed is v in units of 1/scale, clamped to what a uvarint holds sanely.
func fixed(v, scale float64) uint64 {
	x := math.Round(v * scale)
	if !(x > 0) { // also NaN
		return 0
	}
	return uint64(min(x, 1<<52))
}

type beatReader struct {
	b   []byte
	err bool
}

func (r *beatReader) uvarint() uint64 {
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.err, r.b = true, nil
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *beatReader) str() string {
	n := r.uvarint()
	if n > maxBeatStr || n > uint64(len(r.b)) {
		r.err, r.b = true, nil
		return ""
	}
	s := string(r.b[:n])
	r.b = r.b[n:]
	return s
}
