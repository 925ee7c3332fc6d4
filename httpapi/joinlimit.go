package httpapi

import (
	"net/netip"
	"sync"
	"time"
)

// JoinLimits bound join attempts: every attempt takes a token from its
// source address's bucket and from the global one, and a successful join
// gives them back, so only refused attempts count. Zero fields take the
// defaults.
type JoinLimits struct {
	// PerSourceBurst attempts from one address, refilled at one per
	// PerSourceEvery. Default 10, one per 6 s.
	PerSourceBurst int
	PerSourceEvery time.Duration
	// GlobalBurst attempts from everyone, refilled at one per GlobalEvery.
	// Default 100, one per 100 ms.
	GlobalBurst int
	GlobalEvery time.Duration
	// MaxSources bounds the per-source table (memory); sources beyond it
	// share one bucket. Default 4096.
	MaxSources int
	// Now is the clock; default time.Now.
	Now func() time.Time
}

func (l JoinLimits) withDefaults() JoinLimits {
	if l.PerSourceBurst <= 0 {
		l.PerSourceBurst = 10
	}
	if l.PerSourceEvery <= 0 {
		l.PerSourceEvery = 6 * time.Second
	}
	if l.GlobalBurst <= 0 {
		l.GlobalBurst = 100
	}
	if l.GlobalEvery <= 0 {
		l.GlobalEvery = 100 * time.Millisecond
	}
	if l.MaxSources <= 0 {
		l.MaxSources = 4096
	}
	if l.Now == nil {
		l.Now = time.Now
	}
	return l
}

// bucket is a token bucket holding up to burst tokens, one added per every.
type bucket struct {
	tokens float64
	at     time.Time
}

func (b *bucket) refill(now time.Time, burst int, every time.Duration) {
	if now.After(b.at) {
		b.tokens = min(float64(burst), b.tokens+float64(now.Sub(b.at))/float64(every))
		b.at = now
	}
}

// wait is how long until b has one token.
func (b *bucket) wait(every time.Duration) time.Duration {
	return time.Duration((1 - b.tokens) * float64(every))
}

// joinLimiter is JoinLimits in force.
type joinLimiter struct {
	cfg JoinLimits

	mu       sync.Mutex
	global   bucket
	sources  map[netip.Addr]*bucket // at most cfg.MaxSources
	overflow bucket                 // every source the table has no room for
}

func newJoinLimiter(cfg JoinLimits) *joinLimiter {
	cfg = cfg.withDefaults()
	now := cfg.Now()
	return &joinLimiter{
		cfg:      cfg,
		global:   bucket{tokens: float64(cfg.GlobalBurst), at: now},
		sources:  map[netip.Addr]*bucket{},
		overflow: bucket{tokens: float64(cfg.PerSourceBurst), at: now},
	}
}

// take spends one attempt for src. It reports false and how long to wait
// when the source or everyone is out of attempts.
func (l *joinLimiter) take(src netip.Addr) (ok bool, retry time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.cfg.Now()
	b := l.sourceLocked(src, now)
	b.refill(now, l.cfg.PerSourceBurst, l.cfg.PerSourceEvery)
	if b.tokens < 1 {
		return false, b.wait(l.cfg.PerSourceEvery)
	}
	l.global.refill(now, l.cfg.GlobalBurst, l.cfg.GlobalEvery)
	if l.global.tokens < 1 {
		return false, l.global.wait(l.cfg.GlobalEvery)
	}
	b.tokens--
	l.global.tokens--
	return true, 0
}

// refund gives back the attempt of a join that succeeded.
func (l *joinLimiter) refund(src netip.Addr) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if b := l.sources[src]; b != nil {
		b.tokens = min(float64(l.cfg.PerSourceBurst), b.tokens+1)
	} else {
		l.overflow.tokens = min(float64(l.cfg.PerSourceBurst), l.overflow.tokens+1)
	}
	l.global.tokens = min(float64(l.cfg.GlobalBurst), l.global.tokens+1)
}

// sourceLocked finds src's bucket, making room in a full table by
// forgetting sources whose buckets have refilled (they hold no history).
func (l *joinLimiter) sourceLocked(src netip.Addr, now time.Time) *bucket {
	if b := l.sources[src]; b != nil {
		return b
	}
	if len(l.sources) >= l.cfg.MaxSources {
		for a, b := range l.sources {
			b.refill(now, l.cfg.PerSourceBurst, l.cfg.PerSourceEvery)
			if b.tokens >= float64(l.cfg.PerSourceBurst) {
				delete(l.sources, a)
			}
		}
		if len(l.sources) >= l.cfg.MaxSources {
			return &l.overflow
		}
	}
	b := &bucket{tokens: float64(l.cfg.PerSourceBurst), at: now}
	l.sources[src] = b
	return b
}
