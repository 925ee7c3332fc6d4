package ui

import (
	"sync"
	"time"
)

// limiter is a set of token buckets keyed by client (or one key for the
// global bucket): burst attempts at once, then one per every.
type limiter struct {
	burst   float64
	every   time.Duration
	maxKeys int

	mu      sync.Mutex
	buckets map[string]*bucket // guarded by mu
}

type bucket struct {
	tokens float64
	at     time.Time
}

func newLimiter(burst int, every time.Duration, maxKeys int) *limiter {
	return &limiter{burst: float64(burst), every: every, maxKeys: maxKeys, buckets: map[string]*bucket{}}
}

// allow takes a token for key, or says how long until one is available.
func (l *limiter) allow(key string, now time.Time) (bool, time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	b, ok := l.buckets[key]
	if !ok {
		if len(l.buckets) >= l.maxKeys {
			l.evict(now)
		}
		b = &bucket{tokens: l.burst, at: now}
		l.buckets[key] = b
	}
	b.tokens = min(l.burst, b.tokens+float64(now.Sub(b.at))/float64(l.every))
	b.at = now
	if b.tokens >= 1 {
		b.tokens--
		return true, 0
	}
	wait := time.Duration((1 - b.tokens) * float64(l.every))
	return false, wait
}

// evict forgets buckets that have refilled (they hold no memory of abuse);
// if none has, the map is full of active attackers and the oldest goes.
func (l *limiter) evict(now time.Time) {
	var oldest string
	var oldestAt time.Time
	for k, b := range l.buckets {
		if b.tokens+float64(now.Sub(b.at))/float64(l.every) >= l.burst {
			delete(l.buckets, k)
			continue
		}
		if oldest == "" || b.at.Before(oldestAt) {
			oldest, oldestAt = k, b.at
		}
	}
	if len(l.buckets) >= l.maxKeys {
		delete(l.buckets, oldest)
	}
}

// penalty is the per-user sign-in limit: failures per user name, forgiven
// one per forgive; past free of them, each attempt for that user is held
// for a delay that doubles from base up to maxDelay before its password is
// checked. It never refuses: everyone reaches the server as 127.0.0.1, so
// a refusal keyed by anything an attacker shares with the admin is a
// lockout. A delay held per attempt slows a guesser and costs the admin at
// most maxDelay.
type penalty struct {
	free     float64
	base     time.Duration
	maxDelay time.Duration
	forgive  time.Duration

	mu    sync.Mutex
	users map[string]*bucket // guarded by mu; tokens = failures
}

func newPenalty(free int, base, maxDelay, forgive time.Duration) *penalty {
	return &penalty{free: float64(free), base: base, maxDelay: maxDelay, forgive: forgive, users: map[string]*bucket{}}
}

// userKey bounds the map: the UI has one user; every other name is one key.
func userKey(name string) string {
	if name == AdminUser {
		return AdminUser
	}
	return "(other)"
}

// failuresLocked returns user's bucket with its forgiveness applied.
func (p *penalty) failuresLocked(user string, now time.Time) *bucket {
	b := p.users[user]
	if b == nil {
		b = &bucket{at: now}
		p.users[user] = b
	}
	if now.After(b.at) {
		b.tokens = max(0, b.tokens-float64(now.Sub(b.at))/float64(p.forgive))
		b.at = now
	}
	return b
}

// delay is how long an attempt for user waits before it is checked.
func (p *penalty) delay(user string, now time.Time) time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	over := p.failuresLocked(userKey(user), now).tokens - p.free
	if over < 0 {
		return 0
	}
	d := p.base
	for i := 0; i < int(over) && d < p.maxDelay; i++ {
		d *= 2
	}
	return min(d, p.maxDelay)
}

func (p *penalty) fail(user string, now time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.failuresLocked(userKey(user), now).tokens++
}

func (p *penalty) succeed(user string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.users, userKey(user))
}
