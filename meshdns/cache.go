package meshdns

import (
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// cacheKey is what makes two questions share an answer: the name (case
// folded), type and class, and the DNSSEC bits that change what an
// upstream returns.
type cacheKey struct {
	name         string
	qtype, class uint16
	do, cd       bool
}

func cacheKeyOf(req *dns.Msg) cacheKey {
	q := req.Question[0]
	k := cacheKey{name: strings.ToLower(q.Name), qtype: q.Qtype, class: q.Qclass, cd: req.CheckingDisabled}
	if opt := req.IsEdns0(); opt != nil {
		k.do = opt.Do()
	}
	return k
}

type cacheEntry struct {
	msg     *dns.Msg // never handed out: get copies it
	stored  time.Time
	expires time.Time
}

// cache holds forwarded answers for as long as their TTLs allow (RFC 1035,
// and RFC 2308 for negative answers), at most maxTTL, and at most size of
// them. Answers are served with their TTLs counted down.
type cache struct {
	size   int
	maxTTL time.Duration

	mu      sync.Mutex
	entries map[cacheKey]*cacheEntry // guarded by mu
}

func newCache(size int, maxTTL time.Duration) *cache {
	return &cache{size: size, maxTTL: maxTTL, entries: map[cacheKey]*cacheEntry{}}
}

func (c *cache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.entries)
}

// get returns the cached answer to req, its TTLs lowered by the time it
// has been cached, or nil.
func (c *cache) get(k cacheKey, req *dns.Msg, now time.Time) *dns.Msg {
	c.mu.Lock()
	e, ok := c.entries[k]
	if ok && !now.Before(e.expires) {
		delete(c.entries, k)
		ok = false
	}
	c.mu.Unlock()
	if !ok {
		return nil
	}
	resp := sharedAnswer(e.msg, req)
	age := uint32(now.Sub(e.stored) / time.Second)
	for _, sec := range [][]dns.RR{resp.Answer, resp.Ns, resp.Extra} {
		for _, rr := range sec {
			h := rr.Header()
			if h.Rrtype == dns.TypeOPT {
				continue
			}
			h.Ttl -= min(h.Ttl, age)
		}
	}
	return resp
}

// put caches resp if its rcode and records allow; evicted reports that a
// live entry was dropped to make room.
func (c *cache) put(k cacheKey, resp *dns.Msg, now time.Time) (evicted bool) {
	ttl, ok := cacheTTL(resp)
	if !ok {
		return false
	}
	d := min(time.Duration(ttl)*time.Second, c.maxTTL)
	e := &cacheEntry{msg: resp.Copy(), stored: now, expires: now.Add(d)}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, exists := c.entries[k]; !exists && len(c.entries) >= c.size {
		evicted = c.evictLocked(now)
	}
	c.entries[k] = e
	return evicted
}

// evictLocked drops one entry: an expired one among a few looked at, else
// whichever map iteration gives first (random enough).
func (c *cache) evictLocked(now time.Time) (live bool) {
	n := 0
	var victim cacheKey
	for k, e := range c.entries {
		if !now.Before(e.expires) {
			delete(c.entries, k)
			return false
		}
		if n == 0 {
			victim = k
		}
		if n++; n == 8 {
			break
		}
	}
	delete(c.entries, victim)
	return true
}

// cacheTTL is how long resp may be cached: the least TTL of its records
// for a positive answer, the SOA's negative TTL for NXDOMAIN and NODATA.
// Failures, truncated answers and zero TTLs are not cached.
func cacheTTL(resp *dns.Msg) (uint32, bool) {
	if resp.Truncated {
		return 0, false
	}
	switch resp.Rcode {
	case dns.RcodeSuccess, dns.RcodeNameError:
	default:
		return 0, false
	}
	if resp.Rcode == dns.RcodeSuccess && len(resp.Answer) > 0 {
		ttl, found := ^uint32(0), false
		for _, sec := range [][]dns.RR{resp.Answer, resp.Ns, resp.Extra} {
			for _, rr := range sec {
				if rr.Header().Rrtype == dns.TypeOPT {
					continue
				}
				ttl, found = min(ttl, rr.Header().Ttl), true
			}
		}
		return ttl, found && ttl > 0
	}
	for _, rr := range resp.Ns {
		if soa, ok := rr.(*dns.SOA); ok {
			ttl := min(soa.Hdr.Ttl, soa.Minttl)
			return ttl, ttl > 0
		}
	}
	return 0, false
}
