//! Connection budgets, so that floods of stalled or anonymous connections
//! neither exhaust the process' files nor lock admins out.
//!
//! A connection is *anonymous* from its accept until its TLS handshake
//! shows a client certificate of the cluster CA or one of its requests a
//! valid bearer token, and for its whole life if it shows neither (it may then only read /version and /healthz). The
//! anonymous budget is per client address and in total, and a newcomer
//! over it closes the *oldest* anonymous connection (of its address when
//! that budget is the full one): stalled connections age out in favour of
//! the admin whose handshake takes milliseconds. Authenticated connections
//! have their own budget, and a newcomer over it is closed instead.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// Anonymous connections per client address, and in all.
pub const ANONYMOUS_PER_ADDRESS: usize = 64;
pub const ANONYMOUS_TOTAL: usize = 256;
/// Authenticated connections per client address, and in all.
pub const AUTHENTICATED_PER_ADDRESS: usize = 256;
pub const AUTHENTICATED_TOTAL: usize = 1024;

#[derive(Default)]
pub struct Budgets {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    next: u64,
    /// Oldest first.
    anonymous: BTreeMap<u64, (IpAddr, Arc<Notify>)>,
    authenticated: HashMap<IpAddr, usize>,
    authenticated_total: usize,
}

/// One connection's place in a budget, released on drop.
pub struct Ticket {
    budgets: Arc<Budgets>,
    id: u64,
    ip: IpAddr,
    authenticated: bool,
    /// Notified when the connection is closed to make room.
    pub evicted: Arc<Notify>,
}

impl Budgets {
    /// Counts a new connection from `ip` as anonymous, closing the oldest
    /// anonymous one when a budget is full.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Ticket {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let id = inner.next;
        inner.next += 1;
        let mut same = inner.anonymous.iter().filter(|(_, (a, _))| *a == ip).map(|(id, _)| *id);
        let oldest_here = same.next();
        let victim = if oldest_here.is_some() && same.count() + 1 >= ANONYMOUS_PER_ADDRESS {
            oldest_here
        } else if inner.anonymous.len() >= ANONYMOUS_TOTAL {
            inner.anonymous.keys().next().copied()
        } else {
            None
        };
        if let Some((_, notify)) = victim.and_then(|v| inner.anonymous.remove(&v)) {
            notify.notify_one();
        }
        let evicted = Arc::new(Notify::new());
        inner.anonymous.insert(id, (ip, evicted.clone()));
        Ticket { budgets: self.clone(), id, ip, authenticated: false, evicted }
    }

    #[cfg(test)]
    fn counts(&self) -> (usize, usize) {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        (inner.anonymous.len(), inner.authenticated_total)
    }
}

impl Ticket {
    pub fn is_authenticated(&self) -> bool {
        self.authenticated
    }

    /// Moves the connection to the authenticated budget; false when that
    /// is full or the connection was already closed to make room.
    pub fn authenticate(&mut self) -> bool {
        let mut inner = self.budgets.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.anonymous.remove(&self.id).is_none() {
            return false;
        }
        let here = inner.authenticated.get(&self.ip).copied().unwrap_or(0);
        if here >= AUTHENTICATED_PER_ADDRESS || inner.authenticated_total >= AUTHENTICATED_TOTAL {
            return false;
        }
        inner.authenticated.insert(self.ip, here + 1);
        inner.authenticated_total += 1;
        self.authenticated = true;
        true
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut inner = self.budgets.inner.lock().unwrap_or_else(|e| e.into_inner());
        if !self.authenticated {
            inner.anonymous.remove(&self.id);
            return;
        }
        inner.authenticated_total -= 1;
        if let Some(n) = inner.authenticated.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                inner.authenticated.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[tokio::test]
    async fn a_flood_from_one_address_closes_its_own_oldest() {
        let b = Arc::new(Budgets::default());
        let other = b.admit(ip(2));
        let flood: Vec<Ticket> = (0..ANONYMOUS_PER_ADDRESS + 10).map(|_| b.admit(ip(1))).collect();
        for t in &flood[..10] {
            t.evicted.notified().await;
        }
        assert_eq!(b.counts(), (ANONYMOUS_PER_ADDRESS + 1, 0));
        let mut admin = b.admit(ip(1));
        assert!(admin.authenticate(), "the newest connection gets its handshake done");
        assert_eq!(b.counts(), (ANONYMOUS_PER_ADDRESS, 1));
        drop(flood);
        drop(admin);
        assert_eq!(b.counts(), (1, 0));
        drop(other);
    }

    #[tokio::test]
    async fn many_addresses_share_the_total_and_the_oldest_goes() {
        let b = Arc::new(Budgets::default());
        let first = b.admit(ip(0));
        let rest: Vec<Ticket> = (1..=ANONYMOUS_TOTAL).map(|i| b.admit(ip((i % 250) as u8 + 1))).collect();
        first.evicted.notified().await;
        let mut late = first;
        assert!(!late.authenticate(), "an evicted connection does not come back");
        assert_eq!(b.counts().0, ANONYMOUS_TOTAL);
        drop(rest);
    }

    #[test]
    fn the_authenticated_budget_refuses_newcomers() {
        let b = Arc::new(Budgets::default());
        let mut kept = Vec::new();
        for _ in 0..AUTHENTICATED_PER_ADDRESS {
            let mut t = b.admit(ip(1));
            assert!(t.authenticate());
            kept.push(t);
        }
        let mut over = b.admit(ip(1));
        assert!(!over.authenticate());
        let mut elsewhere = b.admit(ip(2));
        assert!(elsewhere.authenticate());
    }
}
