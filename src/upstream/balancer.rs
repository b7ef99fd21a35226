//! Smooth weighted round robin (the nginx algorithm), one instance per route per core.

/// Balancer state for one upstream on one core.
#[derive(Debug, Clone)]
pub struct Wrr {
    current: Vec<i64>,
}

impl Wrr {
    /// State for `n` nodes.
    pub fn new(n: usize) -> Self {
        Wrr {
            current: vec![0; n],
        }
    }

    /// The next node index given the nodes' weights, spreading heavy nodes evenly over a cycle.
    pub fn next(&mut self, weights: impl Iterator<Item = u32> + Clone) -> usize {
        let total: i64 = weights.clone().map(i64::from).sum();
        let mut best = 0;
        let mut best_val = i64::MIN;
        for (i, (w, cur)) in weights.zip(self.current.iter_mut()).enumerate() {
            if w == 0 {
                continue;
            }
            *cur += i64::from(w);
            if *cur > best_val {
                best_val = *cur;
                best = i;
            }
        }
        if let Some(c) = self.current.get_mut(best) {
            *c -= total;
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_are_honoured_exactly_per_cycle() {
        let weights = [5u32, 1, 1, 0];
        let mut w = Wrr::new(weights.len());
        let mut counts = [0; 4];
        let seq: Vec<usize> = (0..7).map(|_| w.next(weights.iter().copied())).collect();
        for &i in &seq {
            counts[i] += 1;
        }
        assert_eq!(counts, [5, 1, 1, 0]);
        // Smooth: the heavy node is not picked five times in a row.
        assert_ne!(&seq[..5], &[0, 0, 0, 0, 0]);
    }
}
