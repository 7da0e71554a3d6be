//! Packing entries into the caller's buffer, in safe code.
//!
//! glibc hands every `get*_r` call a buffer that must hold all strings and
//! pointer arrays of the answer. The packers lay the entry out in a
//! `&mut [u8]` and return offsets; `ffi` turns them into the struct's
//! pointers. A buffer that is too small gives `TooSmall` (the caller answers
//! `TRYAGAIN`/`ERANGE`) and packing is deterministic, so the retry with a
//! larger buffer gives the same entry. The packers take borrowed fields
//! rather than owned records, so that a record read from a memory-mapped
//! snapshot can be packed without copying it first.

use std::ffi::c_char;
use std::mem::{align_of, size_of};

use userdb_proto::record::Passwd;

/// The buffer cannot hold the entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooSmall;

/// The `passwd` field of passwd entries and the `passwd` field of group
/// entries: the hash lives in shadow/gshadow.
pub const SHADOWED: &str = "x";
/// The hash of a shadow/gshadow entry whose record carries none: locked.
pub const NO_HASH: &str = "!*";

/// Offsets of a packed passwd entry's strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PasswdLayout {
    pub name: usize,
    pub passwd: usize,
    pub gecos: usize,
    pub dir: usize,
    pub shell: usize,
}

/// Offsets of a packed group entry: its strings and the NULL-terminated,
/// pointer-aligned member array.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupLayout {
    pub name: usize,
    pub passwd: usize,
    pub members: usize,
}

/// Offsets of a packed shadow entry's strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShadowLayout {
    pub name: usize,
    pub passwd: usize,
}

/// Offsets of a packed gshadow entry: strings and two pointer arrays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GshadowLayout {
    pub name: usize,
    pub passwd: usize,
    pub admins: usize,
    pub members: usize,
}

const POINTER_SIZE: usize = size_of::<*mut c_char>();
const POINTER_ALIGN: usize = align_of::<*mut c_char>();

/// Appends to the front of a buffer, never past its end.
struct Writer<'a> {
    buf: &'a mut [u8],
    used: usize,
}

impl<'a> Writer<'a> {
    fn new(buf: &'a mut [u8]) -> Self {
        Writer { buf, used: 0 }
    }

    fn reserve(&mut self, len: usize) -> Result<usize, TooSmall> {
        let at = self.used;
        let end = at.checked_add(len).ok_or(TooSmall)?;
        if end > self.buf.len() {
            return Err(TooSmall);
        }
        self.used = end;
        Ok(at)
    }

    /// Copies `s` and a NUL; returns the string's offset.
    fn string(&mut self, s: &str) -> Result<usize, TooSmall> {
        let at = self.reserve(s.len() + 1)?;
        self.buf[at..at + s.len()].copy_from_slice(s.as_bytes());
        self.buf[at + s.len()] = 0;
        Ok(at)
    }

    /// Reserves `count` pointers plus the NULL terminator at an address
    /// aligned for pointers; returns the array's offset.
    fn pointer_array(&mut self, count: usize) -> Result<usize, TooSmall> {
        let address = (self.buf.as_ptr() as usize).wrapping_add(self.used);
        let padding = (POINTER_ALIGN - address % POINTER_ALIGN) % POINTER_ALIGN;
        self.reserve(padding)?;
        let len = count
            .checked_add(1)
            .and_then(|n| n.checked_mul(POINTER_SIZE));
        let at = self.reserve(len.ok_or(TooSmall)?)?;
        self.set_pointer(at, count, None);
        Ok(at)
    }

    /// Stores in slot `index` of the array at `array` the address of the
    /// byte at offset `target`, or NULL.
    fn set_pointer(&mut self, array: usize, index: usize, target: Option<usize>) {
        let address = match target {
            Some(offset) => (self.buf.as_ptr() as usize).wrapping_add(offset),
            None => 0,
        };
        let slot = array + index * POINTER_SIZE;
        self.buf[slot..slot + POINTER_SIZE].copy_from_slice(&address.to_ne_bytes());
    }

    /// Packs `items` as strings behind a pointer array; returns the array's offset.
    fn string_array<S: AsRef<str>>(&mut self, items: &[S]) -> Result<usize, TooSmall> {
        let array = self.pointer_array(items.len())?;
        for (index, item) in items.iter().enumerate() {
            let at = self.string(item.as_ref())?;
            self.set_pointer(array, index, Some(at));
        }
        Ok(array)
    }
}

pub fn pack_passwd(fields: &Passwd<'_>, buf: &mut [u8]) -> Result<PasswdLayout, TooSmall> {
    let mut w = Writer::new(buf);
    Ok(PasswdLayout {
        name: w.string(fields.name)?,
        passwd: w.string(SHADOWED)?,
        gecos: w.string(fields.gecos)?,
        dir: w.string(fields.home)?,
        shell: w.string(fields.shell)?,
    })
}

pub fn pack_group<S: AsRef<str>>(
    name: &str,
    members: &[S],
    buf: &mut [u8],
) -> Result<GroupLayout, TooSmall> {
    let mut w = Writer::new(buf);
    // The array goes first so that its padding does not depend on the
    // length of the strings before it.
    let members = w.string_array(members)?;
    Ok(GroupLayout {
        name: w.string(name)?,
        passwd: w.string(SHADOWED)?,
        members,
    })
}

pub fn pack_shadow(
    name: &str,
    hash: Option<&str>,
    buf: &mut [u8],
) -> Result<ShadowLayout, TooSmall> {
    let mut w = Writer::new(buf);
    Ok(ShadowLayout {
        name: w.string(name)?,
        passwd: w.string(hash.unwrap_or(NO_HASH))?,
    })
}

pub fn pack_gshadow<S: AsRef<str>>(
    name: &str,
    hash: Option<&str>,
    admins: &[S],
    members: &[S],
    buf: &mut [u8],
) -> Result<GshadowLayout, TooSmall> {
    let mut w = Writer::new(buf);
    let admins = w.string_array(admins)?;
    let members = w.string_array(members)?;
    Ok(GshadowLayout {
        name: w.string(name)?,
        passwd: w.string(hash.unwrap_or(NO_HASH))?,
        admins,
        members,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The NUL-terminated string at `offset`.
    fn string_at(buf: &[u8], offset: usize) -> String {
        let end = buf[offset..].iter().position(|&b| b == 0).unwrap();
        String::from_utf8(buf[offset..offset + end].to_vec()).unwrap()
    }

    /// Follows the pointer array at `offset` back to offsets in `buf`.
    fn strings_at(buf: &[u8], offset: usize) -> Vec<String> {
        assert_eq!(
            (buf.as_ptr() as usize + offset) % POINTER_ALIGN,
            0,
            "misaligned array"
        );
        let base = buf.as_ptr() as usize;
        let mut out = Vec::new();
        for slot in buf[offset..].chunks_exact(POINTER_SIZE) {
            let address = usize::from_ne_bytes(slot.try_into().unwrap());
            if address == 0 {
                return out;
            }
            assert!(
                address >= base && address < base + buf.len(),
                "pointer outside buffer"
            );
            out.push(string_at(buf, address - base));
        }
        panic!("array not NULL-terminated");
    }

    /// Packs into the smallest buffer that fits, starting `start` bytes into
    /// its storage (to try every alignment), after checking that every
    /// smaller size fails with `TooSmall`. Returns the storage, the buffer's
    /// range in it and the layout.
    fn pack_exactly<T>(
        start: usize,
        pack: impl Fn(&mut [u8]) -> Result<T, TooSmall>,
    ) -> (Vec<u8>, std::ops::Range<usize>, T) {
        let mut storage = vec![0xffu8; start + (1 << 20)];
        for size in 0.. {
            if let Ok(layout) = pack(&mut storage[start..start + size]) {
                return (storage, start..start + size, layout);
            }
        }
        unreachable!()
    }

    const ALICE: Passwd<'static> = Passwd {
        name: "alice",
        uid: 1000,
        gid: 1000,
        gecos: "Alice Liddell,,,",
        home: "/home/alice",
        shell: "/bin/bash",
    };

    #[test]
    fn passwd_needs_exactly_its_strings() {
        let (storage, range, layout) = pack_exactly(0, |b| pack_passwd(&ALICE, b));
        let strings = ["alice", "x", "Alice Liddell,,,", "/home/alice", "/bin/bash"];
        assert_eq!(
            range.len(),
            strings.iter().map(|s| s.len() + 1).sum::<usize>()
        );
        let buf = &storage[range];
        let got = [
            layout.name,
            layout.passwd,
            layout.gecos,
            layout.dir,
            layout.shell,
        ]
        .map(|offset| string_at(buf, offset));
        assert_eq!(got, strings);
    }

    #[test]
    fn group_array_is_aligned_at_every_buffer_start() {
        let members = ["alice", "bob", "carol"];
        for start in 0..POINTER_ALIGN {
            let (storage, range, layout) =
                pack_exactly(start, |b| pack_group("wheel", &members, b));
            let buf = &storage[range];
            assert_eq!(string_at(buf, layout.name), "wheel");
            assert_eq!(string_at(buf, layout.passwd), "x");
            assert_eq!(strings_at(buf, layout.members), members);
        }
    }

    #[test]
    fn empty_group_has_a_null_terminated_array() {
        let none: [&str; 0] = [];
        let (storage, range, layout) = pack_exactly(0, |b| pack_group("empty", &none, b));
        assert!(strings_at(&storage[range], layout.members).is_empty());
    }

    #[test]
    fn group_of_3000_members_round_trips_and_a_retry_gives_the_same_entry() {
        let members: Vec<String> = (0..3000).map(|i| format!("member{i:04}")).collect();
        let (storage, range, layout) = pack_exactly(3, |b| pack_group("big", &members, b));
        assert!(range.len() >= 3001 * POINTER_SIZE + 3000 * 11);
        let first = &storage[range.clone()];
        assert_eq!(strings_at(first, layout.members), members);
        let mut larger = vec![0u8; range.len() + 4096];
        let again = pack_group("big", &members, &mut larger).unwrap();
        assert_eq!(strings_at(&larger, again.members), members);
        assert_eq!(
            string_at(&larger, again.name),
            string_at(first, layout.name)
        );
    }

    #[test]
    fn shadow_without_hash_is_locked() {
        let (storage, range, layout) = pack_exactly(0, |b| pack_shadow("svc", None, b));
        let buf = &storage[range];
        assert_eq!(string_at(buf, layout.name), "svc");
        assert_eq!(string_at(buf, layout.passwd), NO_HASH);
        let (storage, range, layout) = pack_exactly(0, |b| pack_shadow("bob", Some("$6$s$h"), b));
        assert_eq!(string_at(&storage[range], layout.passwd), "$6$s$h");
    }

    #[test]
    fn gshadow_packs_admins_and_members() {
        let admins = ["alice"];
        let members = ["bob", "carol"];
        for start in 0..POINTER_ALIGN {
            let (storage, range, layout) = pack_exactly(start, |b| {
                pack_gshadow("wheel", Some("!"), &admins, &members, b)
            });
            let buf = &storage[range];
            assert_eq!(strings_at(buf, layout.admins), admins);
            assert_eq!(strings_at(buf, layout.members), members);
            assert_eq!(string_at(buf, layout.name), "wheel");
            assert_eq!(string_at(buf, layout.passwd), "!");
        }
    }
}
