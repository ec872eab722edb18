//! A value per port, found by indexing, not hashing: the analyses' per-port state (sockets
//! on a port, when it was last released, who holds it) is read and written at every
//! assignment and release.

use std::cell::Cell;

use foldhash::HashMap;

use crate::event::Proto;

/// Ports per page.
const PAGE: usize = 256;

/// A `T` for each of the 65,536 ports, default until set, in pages of 256 ports taken on
/// first use: a range in use costs its pages only.
#[derive(Clone, Debug)]
pub struct PortMap<T> {
    pages: Vec<Option<Box<[T; PAGE]>>>,
    /// Ports whose value is not the default (see [`PortMap::set`]).
    len: usize,
}

impl<T: Copy + Default + PartialEq> Default for PortMap<T> {
    fn default() -> Self {
        PortMap {
            pages: Vec::new(),
            len: 0,
        }
    }
}

impl<T: Copy + Default + PartialEq> PortMap<T> {
    pub fn get(&self, port: u16) -> T {
        let (page, at) = (usize::from(port) / PAGE, usize::from(port) % PAGE);
        match self.pages.get(page) {
            Some(Some(p)) => p[at],
            _ => T::default(),
        }
    }

    /// Sets `port`'s value; the old one.
    pub fn set(&mut self, port: u16, value: T) -> T {
        let (page, at) = (usize::from(port) / PAGE, usize::from(port) % PAGE);
        if self.pages.len() <= page {
            if value == T::default() {
                return T::default();
            }
            self.pages.resize_with(page + 1, || None);
        }
        let p = self.pages[page].get_or_insert_with(|| Box::new([T::default(); PAGE]));
        let old = std::mem::replace(&mut p[at], value);
        match (old == T::default(), value == T::default()) {
            (true, false) => self.len += 1,
            (false, true) => self.len -= 1,
            _ => {}
        }
        old
    }

    /// Updates `port`'s value with `f`; the new one.
    pub fn update(&mut self, port: u16, f: impl FnOnce(T) -> T) -> T {
        let new = f(self.get(port));
        self.set(port, new);
        new
    }

    /// Ports whose value is not the default.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The ports whose value is not the default, in order, with it.
    pub fn iter(&self) -> impl Iterator<Item = (u16, T)> + '_ {
        self.pages.iter().enumerate().flat_map(|(page, p)| {
            p.iter().flat_map(move |p| {
                p.iter()
                    .enumerate()
                    .filter(|(_, v)| **v != T::default())
                    .map(move |(at, v)| ((page * PAGE + at) as u16, *v))
            })
        })
    }
}

/// A [`PortMap`] per namespace and protocol.
#[derive(Clone, Debug)]
pub struct PortTables<T> {
    tables: Vec<PortMap<T>>,
    index: HashMap<(u32, Proto), u32>,
    /// The last one looked up: storms repeat it.
    last: Cell<Option<((u32, Proto), u32)>>,
}

impl<T> Default for PortTables<T> {
    fn default() -> Self {
        PortTables {
            tables: Vec::new(),
            index: HashMap::default(),
            last: Cell::new(None),
        }
    }
}

impl<T: Copy + Default + PartialEq> PortTables<T> {
    fn find(&self, netns: u32, proto: Proto) -> Option<u32> {
        let key = (netns, proto);
        if let Some((k, t)) = self.last.get() {
            if k == key {
                return Some(t);
            }
        }
        let t = *self.index.get(&key)?;
        self.last.set(Some((key, t)));
        Some(t)
    }

    /// The ports of `netns` and `proto`, if any was set.
    pub fn get(&self, netns: u32, proto: Proto) -> Option<&PortMap<T>> {
        self.find(netns, proto).map(|t| &self.tables[t as usize])
    }

    /// The ports of `netns` and `proto`, made if new.
    pub fn get_mut(&mut self, netns: u32, proto: Proto) -> &mut PortMap<T> {
        let t = match self.find(netns, proto) {
            Some(t) => t,
            None => {
                let t = self.tables.len() as u32;
                self.tables.push(PortMap::default());
                self.index.insert((netns, proto), t);
                self.last.set(Some(((netns, proto), t)));
                t
            }
        };
        &mut self.tables[t as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_hold_values_and_count_those_set() {
        let mut m = PortMap::<u32>::default();
        assert_eq!(m.get(80), 0);
        assert_eq!(m.set(80, 2), 0);
        assert_eq!(m.update(65535, |n| n + 1), 1);
        assert_eq!(m.update(80, |n| n - 1), 1);
        assert_eq!(m.len(), 2);
        assert_eq!(m.iter().collect::<Vec<_>>(), [(80, 1), (65535, 1)]);
        assert_eq!(m.set(80, 0), 1);
        assert_eq!(m.len(), 1);
        // Setting the default where no page is does not take one.
        assert_eq!(m.set(1, 0), 0);
        assert_eq!(m.pages.iter().filter(|p| p.is_some()).count(), 2);
    }
}
