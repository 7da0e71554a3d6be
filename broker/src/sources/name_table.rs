//! A map from file names to values, in name order, with every name in one
//! allocation. A drop-in directory keeps one entry per file, by the hundred
//! thousand: a boxed name would cost a heap block of its own (32 bytes at
//! the least, most of them malloc's) beside a B-tree slot; here a name
//! costs its bytes and eight bytes of position.
//!
//! Look-ups are binary searches. Values are replaced in place; names come
//! and go in sorted batches, each one pass over the table. The bytes of
//! names removed are reclaimed once they are half of the names' storage.
//! At most [`u32::MAX`] bytes of names: a directory is read up to 4 million
//! entries of at most 255 bytes each, a quarter of that even with the
//! removed names not yet reclaimed.

/// Where a name lies in [`NameTable::names`].
#[derive(Debug, Clone, Copy)]
struct Span {
    start: u32,
    len: u32,
}

/// The name `span` marks in `names`; spans are made only by
/// [`NameTable::push_name`], on the boundaries of a name pushed whole.
fn name_in(names: &str, span: Span) -> &str {
    let start = span.start as usize;
    names
        .get(start..start + span.len as usize)
        .unwrap_or_default()
}

#[derive(Debug)]
pub struct NameTable<V> {
    /// The names, one after another.
    names: String,
    /// In name order, each name once.
    slots: Vec<(Span, V)>,
    /// Bytes of `names` that no slot marks any more.
    unused: usize,
}

impl<V> Default for NameTable<V> {
    fn default() -> Self {
        NameTable {
            names: String::new(),
            slots: Vec::new(),
            unused: 0,
        }
    }
}

impl<V> NameTable<V> {
    /// The table of `sorted`, which is in name order, each name once.
    pub fn from_sorted<S: AsRef<str>>(sorted: impl IntoIterator<Item = (S, V)>) -> Self {
        let sorted = sorted.into_iter();
        let (fewest, most) = sorted.size_hint();
        let mut table = NameTable {
            names: String::new(),
            slots: Vec::with_capacity(most.unwrap_or(fewest)),
            unused: 0,
        };
        for (name, value) in sorted {
            let span = table.push_name(name.as_ref());
            table.slots.push((span, value));
        }
        // Kept as long as its directory: no room to spare.
        table.names.shrink_to_fit();
        table.slots.shrink_to_fit();
        table
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    fn push_name(&mut self, name: &str) -> Span {
        let span = Span {
            start: self.names.len() as u32,
            len: name.len() as u32,
        };
        self.names.push_str(name);
        span
    }

    fn position(&self, name: &str) -> Result<usize, usize> {
        self.slots
            .binary_search_by(|(span, _)| name_in(&self.names, *span).cmp(name))
    }

    pub fn get(&self, name: &str) -> Option<&V> {
        let at = self.position(name).ok()?;
        self.slots.get(at).map(|(_, value)| value)
    }

    pub fn get_mut(&mut self, name: &str) -> Option<&mut V> {
        let at = self.position(name).ok()?;
        self.slots.get_mut(at).map(|(_, value)| value)
    }

    pub fn contains_key(&self, name: &str) -> bool {
        self.position(name).is_ok()
    }

    /// Every name with its value, in name order.
    pub fn iter(&self) -> Iter<'_, V> {
        Iter {
            names: &self.names,
            slots: self.slots.iter(),
        }
    }

    /// Every name after `name` with its value, in name order.
    pub fn iter_after(&self, name: &str) -> Iter<'_, V> {
        let start = self.position(name).map_or_else(|at| at, |at| at + 1);
        Iter {
            names: &self.names,
            slots: self.slots[start..].iter(),
        }
    }

    /// Keeps the names for which `keep` holds.
    pub fn retain(&mut self, mut keep: impl FnMut(&str, &mut V) -> bool) {
        let names = &self.names;
        let mut unused = 0;
        self.slots.retain_mut(|(span, value)| {
            let kept = keep(name_in(names, *span), value);
            if !kept {
                unused += span.len as usize;
            }
            kept
        });
        self.unused += unused;
        if self.unused > self.names.len() / 2 {
            self.compact();
        }
    }

    /// Removes `gone`, which is in name order.
    pub fn remove_sorted<S: AsRef<str>>(&mut self, gone: &[S]) {
        if gone.is_empty() {
            return;
        }
        let mut gone = gone.iter().map(AsRef::as_ref).peekable();
        self.retain(|name, _| {
            while gone.next_if(|g| *g < name).is_some() {}
            gone.peek() != Some(&name)
        });
    }

    /// Adds `added`, which is in name order and holds no name the table
    /// has.
    pub fn insert_sorted(&mut self, added: Vec<(String, V)>) {
        if added.is_empty() {
            return;
        }
        self.names
            .reserve_exact(added.iter().map(|(name, _)| name.len()).sum());
        let mut slots = Vec::with_capacity(self.slots.len() + added.len());
        let mut old = std::mem::take(&mut self.slots).into_iter().peekable();
        for (name, value) in added {
            while let Some(slot) = old.next_if(|(span, _)| name_in(&self.names, *span) < &*name) {
                slots.push(slot);
            }
            let span = self.push_name(&name);
            slots.push((span, value));
        }
        slots.extend(old);
        self.slots = slots;
    }

    /// Writes the names again without the bytes of those removed.
    fn compact(&mut self) {
        let mut names = String::with_capacity(self.names.len() - self.unused);
        for (span, _) in &mut self.slots {
            let name = name_in(&self.names, *span);
            let start = names.len() as u32;
            names.push_str(name);
            span.start = start;
        }
        self.names = names;
        self.unused = 0;
    }
}

/// [`NameTable::iter`].
#[derive(Debug, Clone)]
pub struct Iter<'a, V> {
    names: &'a str,
    slots: std::slice::Iter<'a, (Span, V)>,
}

impl<'a, V> Iterator for Iter<'a, V> {
    type Item = (&'a str, &'a V);

    fn next(&mut self) -> Option<Self::Item> {
        let (span, value) = self.slots.next()?;
        Some((name_in(self.names, *span), value))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.slots.size_hint()
    }
}

/// For tests: the value of a name the table must have.
#[cfg(test)]
impl<V> std::ops::Index<&str> for NameTable<V> {
    type Output = V;

    fn index(&self, name: &str) -> &V {
        match self.get(name) {
            Some(value) => value,
            None => panic!("{name} is not in the table"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contents(table: &NameTable<u32>) -> Vec<(&str, u32)> {
        table.iter().map(|(name, value)| (name, *value)).collect()
    }

    #[test]
    fn names_are_found_in_order_through_insertions_and_removals() {
        let mut table = NameTable::from_sorted(vec![("b", 2), ("d", 4), ("f", 6)]);
        assert_eq!(table.get("d"), Some(&4));
        assert_eq!(table.get("c"), None);
        table.insert_sorted(vec![("a".into(), 1), ("c".into(), 3), ("g".into(), 7)]);
        assert_eq!(
            contents(&table),
            [("a", 1), ("b", 2), ("c", 3), ("d", 4), ("f", 6), ("g", 7)]
        );
        table.remove_sorted(&["a", "d", "e", "g"]);
        assert_eq!(contents(&table), [("b", 2), ("c", 3), ("f", 6)]);
        if let Some(value) = table.get_mut("c") {
            *value = 30;
        }
        assert!(table.contains_key("c") && !table.contains_key("d"));
        assert_eq!(contents(&table), [("b", 2), ("c", 30), ("f", 6)]);
    }

    #[test]
    fn the_bytes_of_removed_names_are_reclaimed_and_the_rest_kept() {
        let names: Vec<String> = (0..1000).map(|i| format!("name{i:04}.user")).collect();
        let mut table = NameTable::from_sorted(names.iter().zip(0u32..));
        let full = table.names.len();
        table.retain(|name, _| name.ends_with("0.user"));
        assert_eq!(table.len(), 100);
        assert!(
            table.names.len() < full / 2 && table.unused == 0,
            "{} bytes of names for 100 of 1000 names",
            table.names.len()
        );
        for (at, (name, value)) in table.iter().enumerate() {
            assert_eq!((name, *value), (names[at * 10].as_str(), at as u32 * 10));
        }
    }
}
