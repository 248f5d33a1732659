//! A bounded in-memory journal with live followers: service logs and node
//! events both use it. Taking the tail and subscribing happen under one lock,
//! so a follower sees every entry exactly once.

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::broadcast;

#[derive(Debug)]
pub struct Journal<T: Clone> {
    ring: Mutex<VecDeque<T>>,
    capacity: usize,
    tx: broadcast::Sender<T>,
}

impl<T: Clone> Journal<T> {
    pub fn new(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(1024);
        Journal { ring: Mutex::new(VecDeque::with_capacity(capacity.min(1024))), capacity, tx }
    }

    pub fn push(&self, entry: T) {
        let mut ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        if ring.len() == self.capacity {
            ring.pop_front();
        }
        ring.push_back(entry.clone());
        // No followers is not an error.
        let _ = self.tx.send(entry);
    }

    /// The last `tail` entries (all kept when `tail` is 0), and a receiver
    /// for everything pushed after them.
    pub fn tail_and_follow(&self, tail: usize) -> (Vec<T>, broadcast::Receiver<T>) {
        let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        let skip = if tail == 0 { 0 } else { ring.len().saturating_sub(tail) };
        (ring.iter().skip(skip).cloned().collect(), self.tx.subscribe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_and_follows_without_gaps() {
        let j = Journal::new(3);
        for i in 0..5 {
            j.push(i);
        }
        let (tail, mut rx) = j.tail_and_follow(2);
        assert_eq!(tail, vec![3, 4]);
        assert_eq!(j.tail_and_follow(0).0, vec![2, 3, 4]);
        j.push(5);
        assert_eq!(rx.try_recv().unwrap(), 5);
    }
}
