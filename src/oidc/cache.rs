//! The per-core cache of verified tokens: keyed by a digest of (plugin instance, token), never
//! the token itself; bounded; entries die at the token's `exp`. Every operation is O(1).

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

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

/// A bounded map with FIFO eviction: when full, the oldest insertion goes first.
pub struct TokenCache<V = Verified> {
    /// Entries with the sequence number of their latest insertion.
    map: HashMap<TokenKey, (u64, V)>,
    /// Insertion order; an entry whose number no longer matches the map's is stale and skipped,
    /// so re-inserting a key never leaves a second live copy behind.
    order: VecDeque<(TokenKey, u64)>,
    next_seq: u64,
    capacity: usize,
}

/// A cached verdict that dies at a point in time.
pub trait Expiring {
    /// Unix time (seconds) after which the entry is dead.
    fn expires_at(&self) -> f64;
}

impl Expiring for Verified {
    fn expires_at(&self) -> f64 {
        self.expires_at
    }
}

impl<V: Expiring> TokenCache<V> {
    /// A cache holding at most `capacity` tokens (0 disables it).
    pub fn new(capacity: usize) -> Self {
        TokenCache {
            map: HashMap::new(),
            order: VecDeque::new(),
            next_seq: 0,
            capacity,
        }
    }

    /// Whether the cache holds anything at all (capacity 0 disables it).
    pub fn enabled(&self) -> bool {
        self.capacity > 0
    }

    fn is_current(&self, key: &TokenKey, seq: u64) -> bool {
        self.map.get(key).is_some_and(|(s, _)| *s == seq)
    }

    /// The entry for `key` if it is still alive at `now`; a dead one is dropped.
    pub fn get(&mut self, key: &TokenKey, now: f64) -> Option<&V> {
        match self.map.get(key) {
            Some((_, v)) if v.expires_at() > now => self.map.get(key).map(|(_, v)| v),
            Some(_) => {
                self.map.remove(key);
                None
            }
            None => None,
        }
    }

    /// Remember a verdict; one already dead at `now` is not kept.
    pub fn insert(&mut self, key: TokenKey, v: V, now: f64) {
        if self.capacity == 0 || v.expires_at() <= now {
            return;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.map.insert(key, (seq, v));
        self.order.push_back((key, seq));
        while self.map.len() > self.capacity {
            match self.order.pop_front() {
                Some((old, s)) if self.is_current(&old, s) => {
                    self.map.remove(&old);
                }
                Some(_) => {}
                None => break,
            }
        }
        // Stale queue entries (expired or re-inserted keys) are dropped now and then; after
        // that the queue is no longer than the map, so this is amortised O(1).
        if self.order.len() > 2 * self.capacity.max(16) {
            let map = &self.map;
            self.order
                .retain(|(k, s)| map.get(k).is_some_and(|(ms, _)| ms == s));
        }
    }

    /// Drop up to `budget` expired entries from the oldest end (housekeeping, bounded work).
    pub fn sweep(&mut self, now: f64, budget: usize) {
        for _ in 0..budget {
            let Some((k, s)) = self.order.pop_front() else {
                break;
            };
            match self.map.get(&k) {
                Some((ms, v)) if *ms == s && v.expires_at() > now => {
                    // Live and oldest: rotate it back so later entries get looked at next time.
                    self.order.push_back((k, s));
                }
                Some((ms, _)) if *ms == s => {
                    self.map.remove(&k);
                }
                _ => {}
            }
        }
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(exp: f64) -> Verified {
        Verified {
            expires_at: exp,
            userinfo: Rc::from("e30="),
        }
    }

    #[test]
    fn entries_die_at_exp_and_capacity_holds() {
        let mut c = TokenCache::new(3);
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
        let mut c = TokenCache::new(100);
        for i in 0..50u8 {
            c.insert(
                token_key(1, &[i]),
                v(if i % 2 == 0 { 10.0 } else { 1000.0 }),
                0.0,
            );
        }
        c.sweep(20.0, 200);
        assert_eq!(c.len(), 25);
        assert!(c.order.len() <= 50);
    }

    #[test]
    fn reinserting_keys_never_grows_the_queue_past_its_bound() {
        let mut c = TokenCache::new(4);
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
}
