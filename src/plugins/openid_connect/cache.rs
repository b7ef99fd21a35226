//! The per-core cache of verified tokens: keyed by a digest of (plugin instance, token), never
//! the token itself; bounded in entries and in bytes; entries die at the token's `exp`. Every
//! operation is O(1) (amortised).

use std::collections::{HashMap, VecDeque};
use std::mem::size_of;
use std::rc::Rc;
use std::sync::Arc;

use crate::metrics::CacheStats;

/// What a cached token allows: the headers it produces, and until when.
#[derive(Debug, Clone)]
pub struct Verified {
    /// Unix time (seconds) after which the entry is dead.
    pub expires_at: f64,
    /// `X-Userinfo` value: base64 of the claims JSON.
    pub userinfo: Rc<str>,
}

/// A digest identifying (plugin instance, token).
pub type TokenKey = [u8; 16];

/// Digest of a token for one plugin instance. SHA-256, truncated: a collision would hand one
/// token's identity to another, so the key must not be forgeable.
pub fn token_key(instance: u64, token: &[u8]) -> TokenKey {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(&instance.to_le_bytes());
    ctx.update(token);
    let d = ctx.finish();
    let mut k = [0u8; 16];
    k.copy_from_slice(&d.as_ref()[..16]);
    k
}

/// A cached verdict: when it dies, and what it holds on the heap.
pub trait CacheEntry {
    /// Unix time (seconds) after which the entry is dead.
    fn expires_at(&self) -> f64;
    /// Heap bytes the value owns (strings, shared buffers), beyond its own inline size.
    fn heap_bytes(&self) -> usize;
}

impl CacheEntry for Verified {
    fn expires_at(&self) -> f64 {
        self.expires_at
    }
    fn heap_bytes(&self) -> usize {
        rc_str_bytes(&self.userinfo)
    }
}

/// Heap bytes of an `Rc<str>`: the text and the two reference counts before it.
pub fn rc_str_bytes(s: &Rc<str>) -> usize {
    s.len() + 2 * size_of::<usize>()
}

/// One cached value with its bookkeeping.
struct Slot<V> {
    /// Sequence number of the latest insertion of this key.
    seq: u64,
    /// Bytes charged against the budget for this entry.
    cost: usize,
    value: V,
}

/// Bytes an entry costs besides its value's heap: its map slot (key and [`Slot`]) with the
/// map's control byte, and its place in the eviction queue.
fn entry_overhead<V>() -> usize {
    size_of::<(TokenKey, Slot<V>)>() + 1 + size_of::<(TokenKey, u64)>()
}

/// A map bounded in entries and bytes, with FIFO eviction: when over either bound, the oldest
/// insertion goes first.
pub struct TokenCache<V = Verified> {
    /// foldhash rather than SipHash: the keys are already SHA-256 digests, which no client can
    /// steer into one bucket, so a keyed PRF on top only costs time on every request.
    map: HashMap<TokenKey, Slot<V>, foldhash::fast::RandomState>,
    /// Insertion order; an entry whose number no longer matches the map's is stale and skipped,
    /// so re-inserting a key never leaves a second live copy behind.
    order: VecDeque<(TokenKey, u64)>,
    next_seq: u64,
    capacity: usize,
    max_bytes: usize,
    /// What the live entries cost, per [`entry_overhead`] and [`CacheEntry::heap_bytes`].
    bytes: usize,
    /// Where hits, misses, evictions and the entry count are reported, when metrics are on.
    stats: Option<Arc<CacheStats>>,
}

impl<V: CacheEntry> TokenCache<V> {
    /// A cache holding at most `capacity` tokens and `max_bytes` bytes (either 0 disables it).
    pub fn new(capacity: usize, max_bytes: usize) -> Self {
        TokenCache {
            map: HashMap::default(),
            order: VecDeque::new(),
            next_seq: 0,
            capacity,
            max_bytes,
            bytes: 0,
            stats: None,
        }
    }

    /// Report hits, misses, evictions and entries to `stats` (this core's block).
    pub fn count_into(&mut self, stats: Arc<CacheStats>) {
        self.stats = Some(stats);
    }

    fn count(&self, f: impl FnOnce(&CacheStats)) {
        if let Some(s) = &self.stats {
            f(s);
        }
    }

    fn count_entries(&self) {
        self.count(|s| s.entries.set(self.map.len() as u64));
    }

    /// Whether the cache holds anything at all (a zero bound disables it).
    pub fn enabled(&self) -> bool {
        self.capacity > 0 && self.max_bytes > 0
    }

    fn is_current(&self, key: &TokenKey, seq: u64) -> bool {
        self.map.get(key).is_some_and(|s| s.seq == seq)
    }

    fn remove(&mut self, key: &TokenKey) {
        if let Some(old) = self.map.remove(key) {
            self.bytes -= old.cost;
        }
    }

    /// The entry for `key` if it is still alive at `now`; a dead one is dropped.
    pub fn get(&mut self, key: &TokenKey, now: f64) -> Option<&V> {
        match self.map.get(key) {
            Some(s) if s.value.expires_at() > now => {
                self.count(|s| s.hits.inc());
                self.map.get(key).map(|s| &s.value)
            }
            Some(_) => {
                self.remove(key);
                self.count(|s| s.misses.inc());
                self.count_entries();
                None
            }
            None => {
                self.count(|s| s.misses.inc());
                None
            }
        }
    }

    /// Remember a verdict; one already dead at `now`, or larger than the whole byte budget, is
    /// not kept.
    pub fn insert(&mut self, key: TokenKey, v: V, now: f64) {
        if !self.enabled() || v.expires_at() <= now {
            return;
        }
        let cost = entry_overhead::<V>() + v.heap_bytes();
        if cost > self.max_bytes {
            // Evicting everything else could not make room; and an older verdict for the same
            // key must not outlive this newer one.
            self.remove(&key);
            return;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        if let Some(old) = self.map.insert(
            key,
            Slot {
                seq,
                cost,
                value: v,
            },
        ) {
            self.bytes -= old.cost;
        }
        self.bytes += cost;
        self.order.push_back((key, seq));
        // The new entry is the youngest and fits the budget alone, so this stops before it.
        while self.map.len() > self.capacity || self.bytes > self.max_bytes {
            match self.order.pop_front() {
                Some((old, s)) if self.is_current(&old, s) => {
                    self.remove(&old);
                    self.count(|s| s.evictions.inc());
                }
                Some(_) => {}
                None => break,
            }
        }
        // Stale queue entries (expired or re-inserted keys) are dropped once they are the
        // majority; each is pushed once, so this is amortised O(1), and the queue stays within
        // twice the live entries even when the byte bound keeps the map far below `capacity`.
        if self.order.len() > 2 * self.map.len().max(16) {
            let map = &self.map;
            self.order
                .retain(|(k, s)| map.get(k).is_some_and(|m| m.seq == *s));
        }
        self.count_entries();
    }

    /// Drop up to `budget` expired entries from the oldest end (housekeeping, bounded work).
    pub fn sweep(&mut self, now: f64, budget: usize) {
        for _ in 0..budget {
            let Some((k, s)) = self.order.pop_front() else {
                break;
            };
            match self.map.get(&k) {
                Some(m) if m.seq == s && m.value.expires_at() > now => {
                    // Live and oldest: rotate it back so later entries get looked at next time.
                    self.order.push_back((k, s));
                }
                Some(m) if m.seq == s => self.remove(&k),
                _ => {}
            }
        }
        self.count_entries();
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Bytes the held entries are charged (their heap and bookkeeping).
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UNBOUNDED: usize = usize::MAX;

    fn v(exp: f64) -> Verified {
        Verified {
            expires_at: exp,
            userinfo: Rc::from("e30="),
        }
    }

    fn big(exp: f64, len: usize) -> Verified {
        Verified {
            expires_at: exp,
            userinfo: Rc::from("x".repeat(len)),
        }
    }

    #[test]
    fn entries_die_at_exp_and_capacity_holds() {
        let mut c = TokenCache::new(3, UNBOUNDED);
        for i in 0..10u8 {
            c.insert(token_key(1, &[i]), v(100.0), 0.0);
        }
        assert_eq!(c.len(), 3);
        assert!(c.get(&token_key(1, &[9]), 50.0).is_some());
        assert!(c.get(&token_key(1, &[0]), 50.0).is_none());
        assert!(c.get(&token_key(1, &[9]), 100.0).is_none());
        assert_eq!(c.len(), 2);
        assert_ne!(token_key(1, b"t"), token_key(2, b"t"));
    }

    #[test]
    fn sweep_removes_expired() {
        let mut c = TokenCache::new(100, UNBOUNDED);
        for i in 0..50u8 {
            c.insert(
                token_key(1, &[i]),
                v(if i % 2 == 0 { 10.0 } else { 1000.0 }),
                0.0,
            );
        }
        let before = c.bytes();
        c.sweep(20.0, 200);
        assert_eq!(c.len(), 25);
        assert_eq!(c.bytes(), before / 2);
        assert!(c.order.len() <= 50);
    }

    #[test]
    fn reinserting_keys_never_grows_the_queue_past_its_bound() {
        let mut c = TokenCache::new(4, UNBOUNDED);
        for round in 0..10_000u32 {
            let now = round as f64;
            // The same key expires and is verified again, over and over.
            if c.get(&token_key(1, b"t"), now).is_none() {
                c.insert(token_key(1, b"t"), v(now + 0.5), now);
            }
            c.insert(token_key(1, b"dead"), v(now - 1.0), now);
        }
        assert!(c.order.len() <= 2 * 16 + 1, "{}", c.order.len());
        assert!(c.get(&token_key(1, b"dead"), 0.0).is_none());
    }

    #[test]
    fn the_byte_budget_evicts_the_oldest_and_counts_what_it_holds() {
        // 27 KB of claims, base64: what a token with a large groups claim leaves behind.
        let len = 36_000;
        let cost = entry_overhead::<Verified>() + len + 2 * size_of::<usize>();
        let budget = 10 * cost + cost / 2;
        let mut c = TokenCache::new(100_000, budget);
        for i in 0..1000u32 {
            c.insert(token_key(1, &i.to_le_bytes()), big(100.0, len), 0.0);
            assert!(c.bytes() <= budget, "{} > {budget}", c.bytes());
        }
        assert_eq!(c.len(), 10, "as many as fit in the budget");
        assert_eq!(c.bytes(), 10 * cost);
        // The youngest stay, the oldest went.
        assert!(c.get(&token_key(1, &999u32.to_le_bytes()), 1.0).is_some());
        assert!(c.get(&token_key(1, &990u32.to_le_bytes()), 1.0).is_some());
        assert!(c.get(&token_key(1, &989u32.to_le_bytes()), 1.0).is_none());
        // Small entries push out the oldest big ones as they need room.
        for i in 0..100u32 {
            c.insert(token_key(2, &i.to_le_bytes()), v(100.0), 0.0);
        }
        assert!(c.bytes() <= budget);
        assert!(c.get(&token_key(2, &99u32.to_le_bytes()), 1.0).is_some());
        // The queue stays near the live entries even though the entry bound is far away.
        assert!(
            c.order.len() <= 2 * c.len().max(16) + 1,
            "{}",
            c.order.len()
        );
    }

    #[test]
    fn an_entry_larger_than_the_budget_is_not_cached_and_replaces_nothing() {
        let mut c = TokenCache::new(10, 4096);
        c.insert(token_key(1, b"t"), v(100.0), 0.0);
        c.insert(token_key(1, b"u"), v(100.0), 0.0);
        assert_eq!(c.len(), 2);
        let held = c.bytes();
        c.insert(token_key(1, b"big"), big(100.0, 5000), 0.0);
        assert_eq!((c.len(), c.bytes()), (2, held), "the others stay");
        // A too-large newer verdict for a cached key also drops the older one.
        c.insert(token_key(1, b"t"), big(100.0, 5000), 0.0);
        assert!(c.get(&token_key(1, b"t"), 1.0).is_none());
        assert_eq!(c.len(), 1);
        assert!(c.bytes() < held);
    }

    #[test]
    fn replacing_and_expiring_entries_gives_their_bytes_back() {
        let mut c = TokenCache::new(10, UNBOUNDED);
        c.insert(token_key(1, b"t"), big(10.0, 1000), 0.0);
        let one = c.bytes();
        c.insert(token_key(1, b"t"), big(10.0, 1000), 0.0);
        assert_eq!(c.bytes(), one, "a re-inserted key is charged once");
        assert!(c.get(&token_key(1, b"t"), 20.0).is_none());
        assert_eq!((c.len(), c.bytes()), (0, 0));
        assert!(!TokenCache::<Verified>::new(10, 0).enabled());
    }
}
