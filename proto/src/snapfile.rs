//! The snapshot file: the broker's local view of users and groups (files,
//! drop-ins, PID 1's dynamic users; never a password hash or any other
//! privileged field), published for the module to read with no socket.
//!
//! This module is the format, written once: the broker's writer
//! ([`Builder`]) and the module's reader ([`Snapfile`]), both free of I/O.
//! The broker writes a new file and renames it over the old one, then sets
//! [`SUPERSEDED`] in the old one's control block; nothing else is ever
//! written to a published file.
//!
//! # Layout, version 1 (all numbers little-endian `u32` unless said)
//!
//! ```text
//! control block, CONTROL_SIZE bytes (a page of its own: the only bytes
//! ever written after publication, read with atomic loads):
//!   0   magic "UDBSNAP\0" (8 bytes)
//!   8   version
//!   12  flags: bit 0 SUPERSEDED
//!   16  zero
//! content (offsets below are from its start):
//!   0   generation (u64)
//!   8   content length (u64): the file's length less CONTROL_SIZE
//!   16  coverage: bit 0 no Varlink service is asked for a plain call,
//!       bit 1 none for a call with the dynamic bypass, bit 2 no service
//!       ranks above files or drop-ins
//!   20  users, groups, member names: counts
//!   32  ten sections, each (offset, length) in bytes, 4-aligned, in order:
//!       strings   u32 length, then that many bytes of UTF-8
//!       users     32 bytes each: name, uid, gid, gecos, home, shell
//!                 (strings), flags, zero
//!       groups    16 bytes each: name, gid, flags, members (a list)
//!       lists     u32 count, then that many items
//!       members   8 bytes each: name, groups (a list of group indexes)
//!       user_by_name, user_by_uid, group_by_name, group_by_gid,
//!       member_by_name: hash tables, u32 bucket count (a power of two),
//!                 then that many slots, each a record index + 1 (0: empty),
//!                 linear probing from the key's hash
//!   112 end of the header
//! record flags: bit 0 listed, bit 1 from /etc, bit 2 PID 1's
//! list items: bit 31 set when /etc/group states the membership; bits 0-30
//! a string (members of a group) or a group index (groups of a member)
//! ```
//!
//! The reader trusts nothing: every offset, length, count and index is
//! checked against the bytes it has before use, probing is bounded by the
//! table size, and every record is validated again by the record model's
//! rules. A file that fails a check is not used.

use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use crate::api::LookupOptions;
use crate::names::{valid_gecos, valid_id, valid_name, valid_path, ValidName};
use crate::record::Passwd;
use crate::visibility::Origin;

/// The file's name, in the directory of the broker's socket.
pub const FILE_NAME: &str = "snapshot";

/// Where the broker on the default socket publishes it
/// (`path_for(DEFAULT_SOCKET_PATH)`, spelt out so that finding it costs nothing).
pub const DEFAULT_SNAPSHOT_PATH: &str = "/run/userdb-broker/snapshot";

/// Where the broker listening on `socket` publishes its snapshot file.
/// Replaces what follows the last `/` (cheaper than `Path::with_file_name`,
/// which the module would pay on every call with a socket of its own).
pub fn path_for(socket: &Path) -> PathBuf {
    let bytes = socket.as_os_str().as_bytes();
    let dir = bytes
        .iter()
        .rposition(|&b| b == b'/')
        .map_or(&[][..], |slash| &bytes[..=slash]);
    let mut path = Vec::with_capacity(dir.len() + FILE_NAME.len());
    path.extend_from_slice(dir);
    path.extend_from_slice(FILE_NAME.as_bytes());
    PathBuf::from(std::ffi::OsString::from_vec(path))
}

pub const MAGIC: [u8; 8] = *b"UDBSNAP\0";
pub const VERSION: u32 = 1;
/// Size of the control block; the content starts after it.
pub const CONTROL_SIZE: usize = 4096;
/// Offset of the flags word in the control block.
pub const FLAGS_OFFSET: usize = 12;
/// Set in the flags word of a file that a newer one has replaced.
pub const SUPERSEDED: u32 = 1;
/// Largest file the reader maps.
pub const MAX_FILE_SIZE: usize = 1 << 31;

const HEADER_SIZE: usize = 112;
const USER_SIZE: usize = 32;
const GROUP_SIZE: usize = 16;
/// Fields (u32 words) of a user and a group record that look-ups compare
/// before decoding the record.
const USER_UID: usize = 1;
const USER_FLAGS: usize = 6;
const GROUP_GID: usize = 1;
const GROUP_FLAGS: usize = 2;
const MEMBER_SIZE: usize = 8;
const SECTIONS: usize = 10;

const LISTED: u32 = 1;
const FROM_FILES: u32 = 2;
const PID1: u32 = 4;
const BY_FILES: u32 = 1 << 31;

/// What the file covers: which calls it answers whole.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Coverage(pub u32);

impl Coverage {
    const NO_SERVICES: u32 = 1;
    const NO_SERVICES_BYPASS: u32 = 2;
    const LOCAL_USERS_WIN: u32 = 4;

    /// `services` / `services_bypass`: whether the broker asks any Varlink
    /// service for a plain call / one with the dynamic bypass;
    /// `local_users_win`: no service ranks above files and drop-ins.
    pub fn new(services: bool, services_bypass: bool, local_users_win: bool) -> Coverage {
        let mut bits = 0;
        if !services {
            bits |= Self::NO_SERVICES;
        }
        if !services_bypass {
            bits |= Self::NO_SERVICES_BYPASS;
        }
        if local_users_win {
            bits |= Self::LOCAL_USERS_WIN;
        }
        Coverage(bits)
    }

    /// Every source the broker would consult for this call is in the
    /// file: a miss is a miss, a listing is whole, a group's members are all.
    pub fn complete(self, options: LookupOptions) -> bool {
        let bit = if options.dynamic_bypass {
            Self::NO_SERVICES_BYPASS
        } else {
            Self::NO_SERVICES
        };
        self.0 & bit != 0
    }

    /// A user found in the file is the broker's answer: no service that
    /// would be asked can outrank it.
    pub fn exact_user(self, origin: Origin, options: LookupOptions) -> bool {
        self.complete(options) || (self.0 & Self::LOCAL_USERS_WIN != 0 && !origin.pid1)
    }
}

/// Why a file is not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Invalid(pub &'static str);

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid snapshot file: {}", self.0)
    }
}

/// Checks the unchanging part of the control block (magic and version).
pub fn check_control(start: &[u8; 12]) -> Result<(), Invalid> {
    if start[..8] != MAGIC {
        return Err(Invalid("wrong magic"));
    }
    if start[8..12] != VERSION.to_le_bytes() {
        return Err(Invalid("unknown version"));
    }
    Ok(())
}

const FNV_OFFSET: u32 = 0x811c_9dc5;

fn fnv1a(bytes: &[u8]) -> u32 {
    fnv1a_on(FNV_OFFSET, bytes)
}

/// FNV-1a of `bytes`, continuing from the hash `h`.
fn fnv1a_on(mut h: u32, bytes: &[u8]) -> u32 {
    for &b in bytes {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

fn mix(id: u32) -> u32 {
    ((u64::from(id).wrapping_mul(0x9E37_79B9_7F4A_7C15)) >> 32) as u32
}

fn origin_of(flags: u32) -> Origin {
    Origin {
        files: flags & FROM_FILES != 0,
        pid1: flags & PID1 != 0,
    }
}

// ---------------------------------------------------------------- reading

/// A byte range of the content.
#[derive(Debug, Clone, Copy)]
struct Section<'a>(&'a [u8]);

impl<'a> Section<'a> {
    fn u32_at(self, offset: usize) -> Result<u32, Invalid> {
        let end = offset.checked_add(4).ok_or(Invalid("offset overflow"))?;
        let bytes = self
            .0
            .get(offset..end)
            .ok_or(Invalid("read past a section"))?;
        Ok(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }
}

/// A hash table: its slot count, a power of two.
#[derive(Debug, Clone, Copy)]
struct Table<'a> {
    slots: Section<'a>,
    mask: usize,
}

impl<'a> Table<'a> {
    fn parse(section: Section<'a>, records: usize) -> Result<Table<'a>, Invalid> {
        let buckets = section.u32_at(0)? as usize;
        if buckets == 0 || !buckets.is_power_of_two() {
            return Err(Invalid("bucket count is not a power of two"));
        }
        if section.0.len() != 4 + buckets * 4 {
            return Err(Invalid("hash table size does not match its bucket count"));
        }
        if buckets < records {
            return Err(Invalid("hash table smaller than its records"));
        }
        Ok(Table {
            slots: Section(&section.0[4..]),
            mask: buckets - 1,
        })
    }

    /// The record indexes along `hash`'s probe sequence, at most one round.
    fn probe(self, hash: u32) -> impl Iterator<Item = Result<usize, Invalid>> + 'a {
        let start = hash as usize & self.mask;
        let slots = self.slots;
        let mask = self.mask;
        (0..=mask)
            .map(move |i| slots.u32_at(((start + i) & mask) * 4))
            .take_while(|slot| !matches!(slot, Ok(0)))
            .map(|slot| slot.map(|s| s as usize - 1))
    }
}

/// A user as the file holds it, fields already validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserView<'a> {
    pub passwd: Passwd<'a>,
    pub listed: bool,
    pub origin: Origin,
}

/// A group as the file holds it; its members are read on demand.
#[derive(Debug, Clone, Copy)]
pub struct GroupView<'a> {
    pub name: &'a str,
    pub gid: u32,
    pub listed: bool,
    pub origin: Origin,
    members: usize,
    file: &'a Snapfile<'a>,
}

impl<'a> GroupView<'a> {
    /// The members this caller is answered, in order.
    pub fn members(
        &self,
        options: LookupOptions,
    ) -> impl Iterator<Item = Result<&'a str, Invalid>> + 'a {
        let file = self.file;
        file.list(self.members).filter_map(move |item| {
            let item = match item {
                Ok(item) => item,
                Err(e) => return Some(Err(e)),
            };
            if !crate::visibility::member_answered(item & BY_FILES != 0, options) {
                return None;
            }
            Some(file.name(item & !BY_FILES))
        })
    }
}

/// A parsed snapshot file's content.
#[derive(Debug, Clone, Copy)]
pub struct Snapfile<'a> {
    generation: u64,
    coverage: Coverage,
    strings: Section<'a>,
    users: Section<'a>,
    groups: Section<'a>,
    lists: Section<'a>,
    members: Section<'a>,
    user_by_name: Table<'a>,
    user_by_uid: Table<'a>,
    group_by_name: Table<'a>,
    group_by_gid: Table<'a>,
    member_by_name: Table<'a>,
}

fn le_u64(bytes: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(b)
}

impl<'a> Snapfile<'a> {
    /// Checks the header and the shape of every section of `content` (the
    /// file after its control block).
    pub fn parse(content: &'a [u8]) -> Result<Snapfile<'a>, Invalid> {
        if content.len() < HEADER_SIZE {
            return Err(Invalid("shorter than its header"));
        }
        if le_u64(&content[8..16]) != content.len() as u64 {
            return Err(Invalid("length does not match the file"));
        }
        let head = Section(&content[..HEADER_SIZE]);
        let count = |at: usize| head.u32_at(at).map(|n| n as usize);
        let (n_users, n_groups, n_members) = (count(20)?, count(24)?, count(28)?);
        let mut sections = [Section(&[]); SECTIONS];
        for (i, section) in sections.iter_mut().enumerate() {
            let offset = count(32 + i * 8)?;
            let len = count(36 + i * 8)?;
            if !offset.is_multiple_of(4) || !len.is_multiple_of(4) || offset < HEADER_SIZE {
                return Err(Invalid("section not aligned or inside the header"));
            }
            let end = offset.checked_add(len).ok_or(Invalid("section overflow"))?;
            *section = Section(
                content
                    .get(offset..end)
                    .ok_or(Invalid("section past the end"))?,
            );
        }
        let [strings, users, groups, lists, members, ubn, ubu, gbn, gbg, mbn] = sections;
        let sized = |s: Section, n: usize, size: usize| {
            n.checked_mul(size)
                .filter(|&len| len == s.0.len())
                .ok_or(Invalid("record count does not match its section"))
        };
        sized(users, n_users, USER_SIZE)?;
        sized(groups, n_groups, GROUP_SIZE)?;
        sized(members, n_members, MEMBER_SIZE)?;
        Ok(Snapfile {
            generation: le_u64(&content[0..8]),
            coverage: Coverage(head.u32_at(16)?),
            strings,
            users,
            groups,
            lists,
            members,
            user_by_name: Table::parse(ubn, n_users)?,
            user_by_uid: Table::parse(ubu, n_users)?,
            group_by_name: Table::parse(gbn, n_groups)?,
            group_by_gid: Table::parse(gbg, n_groups)?,
            member_by_name: Table::parse(mbn, n_members)?,
        })
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn coverage(&self) -> Coverage {
        self.coverage
    }

    pub fn user_count(&self) -> usize {
        self.users.0.len() / USER_SIZE
    }

    pub fn group_count(&self) -> usize {
        self.groups.0.len() / GROUP_SIZE
    }

    fn name(&self, offset: u32) -> Result<&'a str, Invalid> {
        let s = self.string(offset)?;
        if valid_name(s) {
            Ok(s)
        } else {
            Err(Invalid("invalid name"))
        }
    }

    /// The bytes of the string at `offset`, within the string table.
    fn string_bytes(&self, offset: u32) -> Result<&'a [u8], Invalid> {
        let offset = offset as usize;
        let len = self.strings.u32_at(offset)? as usize;
        let start = offset + 4;
        let end = start.checked_add(len).ok_or(Invalid("string overflow"))?;
        self.strings
            .0
            .get(start..end)
            .ok_or(Invalid("string past its section"))
    }

    fn string(&self, offset: u32) -> Result<&'a str, Invalid> {
        std::str::from_utf8(self.string_bytes(offset)?).map_err(|_| Invalid("string is not UTF-8"))
    }

    /// The items of the list at `offset`.
    fn list(&self, offset: usize) -> impl Iterator<Item = Result<u32, Invalid>> + 'a {
        let lists = self.lists;
        let count = match lists.u32_at(offset) {
            Ok(n) if (n as usize) <= lists.0.len() / 4 => Ok(n as usize),
            Ok(_) => Err(Invalid("list longer than its section")),
            Err(e) => Err(e),
        };
        let (count, first) = match count {
            Ok(n) => (n, None),
            Err(e) => (0, Some(Err(e))),
        };
        first
            .into_iter()
            .chain((0..count).map(move |i| lists.u32_at(offset + 4 + i * 4)))
    }

    /// Checks every user record, so that a listing either hands out all of
    /// them or is not taken from this file at all: a record found corrupt
    /// half-way would end it early. The same order of work as the listing.
    pub fn check_users(&self) -> Result<(), Invalid> {
        (0..self.user_count()).try_for_each(|i| self.user_at(i).map(drop))
    }

    /// As [`Snapfile::check_users`], for groups and every member they list.
    pub fn check_groups(&'a self) -> Result<(), Invalid> {
        (0..self.group_count()).try_for_each(|i| {
            let group = self.group_at(i)?;
            self.list(group.members).try_for_each(|item| {
                self.name(item? & !BY_FILES)?;
                Ok(())
            })
        })
    }

    /// The user at `index` in listing order.
    pub fn user_at(&self, index: usize) -> Result<UserView<'a>, Invalid> {
        let name = self.name(Self::field(self.users, USER_SIZE, index, 0)?)?;
        self.user_named(index, name)
    }

    /// The user at `index`, whose name is `name`, already checked: the
    /// rest of the record is decoded and checked.
    fn user_named<'q>(&self, index: usize, name: &'q str) -> Result<UserView<'q>, Invalid>
    where
        'a: 'q,
    {
        let base = index
            .checked_mul(USER_SIZE)
            .ok_or(Invalid("index overflow"))?;
        let field = |i: usize| self.users.u32_at(base + i * 4);
        let (uid, gid) = (field(USER_UID)?, field(2)?);
        let gecos = self.string(field(3)?)?;
        let home = self.string(field(4)?)?;
        let shell = self.string(field(5)?)?;
        let flags = field(USER_FLAGS)?;
        if !(valid_id(uid)
            && valid_id(gid)
            && valid_gecos(gecos)
            && valid_path(home)
            && valid_path(shell))
        {
            return Err(Invalid("invalid user record"));
        }
        Ok(UserView {
            passwd: Passwd {
                name,
                uid,
                gid,
                gecos,
                home,
                shell,
            },
            listed: flags & LISTED != 0,
            origin: origin_of(flags),
        })
    }

    /// The group at `index` in listing order.
    pub fn group_at(&'a self, index: usize) -> Result<GroupView<'a>, Invalid> {
        let name = self.name(Self::field(self.groups, GROUP_SIZE, index, 0)?)?;
        self.group_named(index, name)
    }

    /// As [`Snapfile::user_named`], for groups.
    fn group_named<'q>(&'a self, index: usize, name: &'q str) -> Result<GroupView<'q>, Invalid>
    where
        'a: 'q,
    {
        let field = |i: usize| Self::field(self.groups, GROUP_SIZE, index, i);
        let gid = field(GROUP_GID)?;
        if !valid_id(gid) {
            return Err(Invalid("invalid gid"));
        }
        let flags = field(GROUP_FLAGS)?;
        Ok(GroupView {
            name,
            gid,
            listed: flags & LISTED != 0,
            origin: origin_of(flags),
            members: field(3)? as usize,
            file: self,
        })
    }

    /// The first index of `table`'s probe sequence for `hash` whose record
    /// `is` the one looked for. `is` compares the raw key only: the record
    /// found is decoded and checked whole once, not every candidate.
    fn find(
        &self,
        table: Table<'a>,
        hash: u32,
        is: impl Fn(usize) -> Result<bool, Invalid>,
    ) -> Result<Option<usize>, Invalid> {
        for index in table.probe(hash) {
            let index = index?;
            if is(index)? {
                return Ok(Some(index));
            }
        }
        Ok(None)
    }

    /// Field `field` of record `index` in `section` of `size`-byte records.
    fn field(
        section: Section<'a>,
        size: usize,
        index: usize,
        field: usize,
    ) -> Result<u32, Invalid> {
        let base = index.checked_mul(size).ok_or(Invalid("index overflow"))?;
        section.u32_at(base + field * 4)
    }

    /// Whether the string at `offset` is `wanted`, byte for byte.
    fn string_is(&self, offset: u32, wanted: &str) -> Result<bool, Invalid> {
        Ok(self.string_bytes(offset)? == wanted.as_bytes())
    }

    /// Whether record `index` of `section` is listed and named `name`.
    fn listed_and_named(
        &self,
        section: Section<'a>,
        size: usize,
        flags: usize,
        index: usize,
        name: &str,
    ) -> Result<bool, Invalid> {
        Ok(Self::field(section, size, index, flags)? & LISTED != 0
            && self.string_is(Self::field(section, size, index, 0)?, name)?)
    }

    /// The listed user named `name`. Its name is the checked `name`
    /// itself: only the rest of the record is checked.
    pub fn user_by_name<'q>(&self, name: ValidName<'q>) -> Result<Option<UserView<'q>>, Invalid>
    where
        'a: 'q,
    {
        let name = name.as_str();
        let found = self.find(self.user_by_name, fnv1a(name.as_bytes()), |i| {
            self.listed_and_named(self.users, USER_SIZE, USER_FLAGS, i, name)
        })?;
        found.map(|i| self.user_named(i, name)).transpose()
    }

    pub fn user_by_uid(&self, uid: u32) -> Result<Option<UserView<'a>>, Invalid> {
        let found = self.find(self.user_by_uid, mix(uid), |i| {
            Ok(Self::field(self.users, USER_SIZE, i, USER_UID)? == uid)
        })?;
        found.map(|i| self.user_at(i)).transpose()
    }

    /// As [`Snapfile::user_by_name`], for groups.
    pub fn group_by_name<'q>(
        &'a self,
        name: ValidName<'q>,
    ) -> Result<Option<GroupView<'q>>, Invalid>
    where
        'a: 'q,
    {
        let name = name.as_str();
        let found = self.find(self.group_by_name, fnv1a(name.as_bytes()), |i| {
            self.listed_and_named(self.groups, GROUP_SIZE, GROUP_FLAGS, i, name)
        })?;
        found.map(|i| self.group_named(i, name)).transpose()
    }

    pub fn group_by_gid(&'a self, gid: u32) -> Result<Option<GroupView<'a>>, Invalid> {
        let found = self.find(self.group_by_gid, mix(gid), |i| {
            Ok(Self::field(self.groups, GROUP_SIZE, i, GROUP_GID)? == gid)
        })?;
        found.map(|i| self.group_at(i)).transpose()
    }

    /// The gids of the groups that list `user`, as this caller is answered
    /// them (`initgroups`), in order.
    pub fn gids_of(&'a self, user: &str, options: LookupOptions) -> Result<Vec<u32>, Invalid> {
        let member = self.find(self.member_by_name, fnv1a(user.as_bytes()), |i| {
            self.string_is(Self::field(self.members, MEMBER_SIZE, i, 0)?, user)
        })?;
        let Some(member) = member else {
            return Ok(Vec::new());
        };
        let list = Self::field(self.members, MEMBER_SIZE, member, 1)?;
        let mut gids = Vec::new();
        for item in self.list(list as usize) {
            let item = item?;
            let group = self.group_at((item & !BY_FILES) as usize)?;
            if crate::visibility::visible(group.origin, options)
                && crate::visibility::member_answered(item & BY_FILES != 0, options)
            {
                gids.push(group.gid);
            }
        }
        Ok(gids)
    }
}

// ---------------------------------------------------------------- writing

/// A user as the writer takes it.
#[derive(Debug, Clone, Copy)]
pub struct UserIn<'a> {
    pub passwd: Passwd<'a>,
    pub listed: bool,
    pub origin: Origin,
    /// This record answers look-ups by its name / by its uid.
    pub holds_name: bool,
    pub holds_id: bool,
}

/// A group as the writer takes it.
#[derive(Debug, Clone)]
pub struct GroupIn<'a> {
    pub name: &'a str,
    pub gid: u32,
    pub listed: bool,
    pub origin: Origin,
    pub holds_name: bool,
    pub holds_id: bool,
    /// Members in order, and whether `/etc/group` states each.
    pub members: Vec<(&'a str, bool)>,
}

/// Where in the string table each string written lies: open addressing over
/// (FNV-1a hash, offset + 1) slots, at most half full. Eight bytes a slot
/// and a hash compared before any string, because publishing looks up
/// every string of every record (hundreds of thousands) and a general map
/// of `&str` spends most of that time on cache misses. The strings come
/// from root's files only (the file never holds a Varlink service's
/// records), so nobody can choose colliding ones.
#[derive(Debug, Default)]
struct StringIndex {
    slots: Vec<(u32, u32)>,
    len: usize,
}

impl StringIndex {
    fn with_capacity(strings: usize) -> StringIndex {
        StringIndex {
            slots: vec![(0, 0); (strings * 2).next_power_of_two().max(16)],
            len: 0,
        }
    }

    /// The offset of the string hashing to `hash` for which `is` holds, or
    /// where `next` is recorded as its offset.
    fn find_or_insert(&mut self, hash: u32, next: u32, is: impl Fn(u32) -> bool) -> u32 {
        if (self.len + 1) * 2 > self.slots.len() {
            self.grow();
        }
        let mask = self.slots.len() - 1;
        let mut at = mix(hash) as usize & mask;
        loop {
            match self.slots[at] {
                (_, 0) => {
                    self.slots[at] = (hash, next + 1);
                    self.len += 1;
                    return next;
                }
                (h, offset) if h == hash && is(offset - 1) => return offset - 1,
                _ => at = (at + 1) & mask,
            }
        }
    }

    fn grow(&mut self) {
        let old = std::mem::take(&mut self.slots);
        self.slots = vec![(0, 0); (old.len() * 2).max(16)];
        let mask = self.slots.len() - 1;
        for (hash, offset) in old.into_iter().filter(|&(_, offset)| offset != 0) {
            let mut at = mix(hash) as usize & mask;
            while self.slots[at].1 != 0 {
                at = (at + 1) & mask;
            }
            self.slots[at] = (hash, offset);
        }
    }
}

/// Builds a file: users and groups in listing order, then which groups
/// each member name is in.
#[derive(Debug, Default)]
pub struct Builder {
    strings: Vec<u8>,
    /// Strings already written, for each to be written once.
    string_at: StringIndex,
    users: Vec<u8>,
    groups: Vec<u8>,
    lists: Vec<u8>,
    members: Vec<u8>,
    user_names: Vec<(u32, u32)>,
    user_ids: Vec<(u32, u32)>,
    group_names: Vec<(u32, u32)>,
    group_ids: Vec<(u32, u32)>,
    member_names: Vec<(u32, u32)>,
}

fn put(out: &mut Vec<u8>, values: &[u32]) {
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
}

fn flags_of(listed: bool, origin: Origin) -> u32 {
    let mut flags = 0;
    if listed {
        flags |= LISTED;
    }
    if origin.files {
        flags |= FROM_FILES;
    }
    if origin.pid1 {
        flags |= PID1;
    }
    flags
}

impl Builder {
    pub fn new() -> Self {
        Builder::default()
    }

    /// A builder with room for this many users, groups and member names
    /// (and a guess at their strings): at hundreds of thousands of records,
    /// growing step by step costs more than writing.
    pub fn with_capacity(users: usize, groups: usize, members: usize) -> Self {
        let strings = 4 * users + groups;
        Builder {
            strings: Vec::with_capacity(strings * 16),
            // Names and shells are looked up; homes and real names are not.
            string_at: StringIndex::with_capacity(2 * users + groups),
            users: Vec::with_capacity(users * USER_SIZE),
            groups: Vec::with_capacity(groups * GROUP_SIZE),
            lists: Vec::with_capacity((groups + members) * 8),
            members: Vec::with_capacity(members * MEMBER_SIZE),
            user_names: Vec::with_capacity(users),
            user_ids: Vec::with_capacity(users),
            group_names: Vec::with_capacity(groups),
            group_ids: Vec::with_capacity(groups),
            member_names: Vec::with_capacity(members),
        }
    }

    fn string(&mut self, s: &str) -> u32 {
        self.string_hashed(s, fnv1a(s.as_bytes()))
    }

    /// [`Self::string`] for a string whose FNV-1a hash is known.
    fn string_hashed(&mut self, s: &str, hash: u32) -> u32 {
        let next = self.strings.len() as u32;
        let strings = &self.strings;
        let at = self.string_at.find_or_insert(hash, next, |at| {
            let start = at as usize + 4;
            strings.get(start..start + s.len()) == Some(s.as_bytes())
                && strings.get(start - 4..start) == Some(&(s.len() as u32).to_le_bytes()[..])
        });
        if at == next {
            self.append_string(s);
        }
        at
    }

    /// A string written without looking for an earlier copy: for the
    /// fields that seldom repeat (home, real name), where the look-up
    /// costs more than the bytes it would save.
    fn string_unshared(&mut self, s: &str) -> u32 {
        let at = self.strings.len() as u32;
        self.append_string(s);
        at
    }

    fn append_string(&mut self, s: &str) {
        put(&mut self.strings, &[s.len() as u32]);
        self.strings.extend_from_slice(s.as_bytes());
        let padded = self.strings.len().next_multiple_of(4);
        self.strings.resize(padded, 0);
    }

    fn list(&mut self, items: impl ExactSizeIterator<Item = u32>) -> u32 {
        let at = self.lists.len() as u32;
        put(&mut self.lists, &[items.len() as u32]);
        for item in items {
            put(&mut self.lists, &[item]);
        }
        at
    }

    pub fn user(&mut self, u: UserIn<'_>) {
        let index = (self.users.len() / USER_SIZE) as u32;
        let p = u.passwd;
        let name_hash = fnv1a(p.name.as_bytes());
        let fields = [
            self.string_hashed(p.name, name_hash),
            p.uid,
            p.gid,
            self.string_unshared(p.gecos),
            self.string_unshared(p.home),
            self.string(p.shell),
            flags_of(u.listed, u.origin),
            0,
        ];
        put(&mut self.users, &fields);
        if u.holds_name && u.listed {
            self.user_names.push((name_hash, index));
        }
        if u.holds_id {
            self.user_ids.push((mix(p.uid), index));
        }
    }

    pub fn group(&mut self, g: GroupIn<'_>) {
        let index = (self.groups.len() / GROUP_SIZE) as u32;
        let list = self.lists.len() as u32;
        put(&mut self.lists, &[g.members.len() as u32]);
        for &(name, by_files) in &g.members {
            let item = self.string(name) | if by_files { BY_FILES } else { 0 };
            put(&mut self.lists, &[item]);
        }
        let name_hash = fnv1a(g.name.as_bytes());
        let fields = [
            self.string_hashed(g.name, name_hash),
            g.gid,
            flags_of(g.listed, g.origin),
            list,
        ];
        put(&mut self.groups, &fields);
        if g.holds_name && g.listed {
            self.group_names.push((name_hash, index));
        }
        if g.holds_id {
            self.group_ids.push((mix(g.gid), index));
        }
    }

    /// The groups (indexes in the order they were added) that list
    /// `member`, each with whether `/etc/group` states it.
    pub fn member(&mut self, member: &str, groups: &[(u32, bool)]) {
        let index = (self.members.len() / MEMBER_SIZE) as u32;
        let list = self.list(
            groups
                .iter()
                .map(|&(g, by_files)| g | if by_files { BY_FILES } else { 0 }),
        );
        let hash = fnv1a(member.as_bytes());
        let name = self.string_hashed(member, hash);
        put(&mut self.members, &[name, list]);
        self.member_names.push((hash, index));
    }

    /// The whole file, control block included, written into one buffer of
    /// its final size.
    pub fn finish(self, generation: u64, coverage: Coverage) -> Vec<u8> {
        let table_len = |keys: &[(u32, u32)]| 4 + Self::buckets(keys) * 4;
        let keys = [
            &self.user_names,
            &self.user_ids,
            &self.group_names,
            &self.group_ids,
            &self.member_names,
        ];
        let records = [
            &self.strings,
            &self.users,
            &self.groups,
            &self.lists,
            &self.members,
        ];
        let lengths: [usize; SECTIONS] = std::array::from_fn(|i| match i {
            0..5 => records[i].len(),
            _ => table_len(keys[i - 5]),
        });
        let counts = [
            self.users.len() / USER_SIZE,
            self.groups.len() / GROUP_SIZE,
            self.members.len() / MEMBER_SIZE,
        ];
        let content_len = HEADER_SIZE + lengths.iter().sum::<usize>();
        let mut file = Vec::with_capacity(CONTROL_SIZE + content_len);
        file.extend_from_slice(&MAGIC);
        put(&mut file, &[VERSION, 0]);
        file.resize(CONTROL_SIZE, 0);
        file.extend_from_slice(&generation.to_le_bytes());
        file.extend_from_slice(&(content_len as u64).to_le_bytes());
        put(&mut file, &[coverage.0]);
        put(&mut file, &counts.map(|n| n as u32));
        let mut offset = HEADER_SIZE;
        for len in lengths {
            put(&mut file, &[offset as u32, len as u32]);
            offset += len;
        }
        for section in records {
            file.extend_from_slice(section);
        }
        for keys in keys {
            Self::table(&mut file, keys);
        }
        file
    }

    fn buckets(keys: &[(u32, u32)]) -> usize {
        (keys.len() * 2).next_power_of_two().max(1)
    }

    /// Appends the hash table of `keys` (hash, record index) to `out`.
    fn table(out: &mut Vec<u8>, keys: &[(u32, u32)]) {
        let buckets = Self::buckets(keys);
        put(out, &[buckets as u32]);
        let start = out.len();
        out.resize(start + buckets * 4, 0);
        let slots = &mut out[start..];
        for &(hash, index) in keys {
            let mut at = hash as usize & (buckets - 1);
            while slots[at * 4..at * 4 + 4] != [0; 4] {
                at = (at + 1) & (buckets - 1);
            }
            slots[at * 4..at * 4 + 4].copy_from_slice(&(index + 1).to_le_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(name: &str) -> ValidName<'_> {
        ValidName::new(name).expect("a valid name")
    }

    const PLAIN: LookupOptions = LookupOptions {
        caller_reads_files: false,
        dynamic_bypass: false,
    };
    const FILES_FIRST: LookupOptions = LookupOptions {
        caller_reads_files: true,
        dynamic_bypass: false,
    };
    const BYPASS: LookupOptions = LookupOptions {
        caller_reads_files: false,
        dynamic_bypass: true,
    };

    #[test]
    fn the_snapshot_file_lies_beside_the_socket() {
        assert_eq!(
            path_for(Path::new("/tmp/x/b.sock")),
            Path::new("/tmp/x/snapshot")
        );
        assert_eq!(path_for(Path::new("b.sock")), Path::new("snapshot"));
    }

    #[test]
    fn the_default_snapshot_path_is_the_default_sockets() {
        assert_eq!(
            path_for(Path::new(crate::DEFAULT_SOCKET_PATH)),
            Path::new(DEFAULT_SNAPSHOT_PATH)
        );
    }

    fn user<'a>(name: &'a str, uid: u32, origin: Origin) -> UserIn<'a> {
        UserIn {
            passwd: Passwd {
                name,
                uid,
                gid: uid,
                gecos: "Real Name",
                home: "/home/x",
                shell: "/bin/sh",
            },
            listed: true,
            origin,
            holds_name: true,
            holds_id: true,
        }
    }

    const FILES: Origin = Origin {
        files: true,
        pid1: false,
    };
    const DYNAMIC: Origin = Origin {
        files: false,
        pid1: true,
    };

    /// root and alice from files, dup (a second line for alice's uid's
    /// neighbour), a dynamic user; wheel from files (alice) with bob from a
    /// membership drop-in.
    pub(crate) fn sample() -> Vec<u8> {
        let mut b = Builder::new();
        b.user(user("root", 0, FILES));
        b.user(user("alice", 1000, FILES));
        b.user(UserIn {
            holds_name: false,
            ..user("alice", 1001, FILES)
        });
        b.user(user("svc", 61200, DYNAMIC));
        b.group(GroupIn {
            name: "wheel",
            gid: 10,
            listed: true,
            origin: FILES,
            holds_name: true,
            holds_id: true,
            members: vec![("alice", true), ("bob", false)],
        });
        b.group(GroupIn {
            name: "svc",
            gid: 61200,
            listed: true,
            origin: DYNAMIC,
            holds_name: true,
            holds_id: true,
            members: vec![],
        });
        b.member("alice", &[(0, true)]);
        b.member("bob", &[(0, false)]);
        b.finish(7, Coverage::new(false, false, true))
    }

    fn content(file: &[u8]) -> &[u8] {
        &file[CONTROL_SIZE..]
    }

    #[test]
    fn written_and_read_back() {
        let file = sample();
        let start: [u8; 12] = file[..12].try_into().unwrap();
        check_control(&start).unwrap();
        let s = Snapfile::parse(content(&file)).unwrap();
        assert_eq!(s.generation(), 7);
        assert!(s.coverage().complete(PLAIN));
        let alice = s.user_by_name(named("alice")).unwrap().unwrap();
        assert_eq!(
            (alice.passwd.uid, alice.passwd.gecos, alice.passwd.home),
            (1000, "Real Name", "/home/x")
        );
        assert_eq!(s.user_by_uid(1001).unwrap().unwrap().passwd.name, "alice");
        assert!(s.user_by_name(named("nobody")).unwrap().is_none());
        assert!(s.user_by_uid(4242).unwrap().is_none());
        let wheel = s.group_by_gid(10).unwrap().unwrap();
        let members = |o| wheel.members(o).collect::<Result<Vec<_>, _>>().unwrap();
        assert_eq!(members(PLAIN), ["alice", "bob"]);
        assert_eq!(members(FILES_FIRST), ["bob"]);
        assert_eq!(s.gids_of("alice", PLAIN).unwrap(), [10]);
        assert!(s.gids_of("alice", FILES_FIRST).unwrap().is_empty());
        assert_eq!(s.gids_of("bob", FILES_FIRST).unwrap(), [10]);
        assert!(s.gids_of("carol", PLAIN).unwrap().is_empty());
        assert_eq!(s.user_at(3).unwrap().origin, DYNAMIC);
        assert_eq!(s.user_count(), 4);
        assert_eq!(s.group_count(), 2);
    }

    #[test]
    fn coverage_says_which_calls_the_file_answers_whole() {
        let only_pid1 = Coverage::new(true, false, true);
        assert!(!only_pid1.complete(PLAIN) && only_pid1.complete(BYPASS));
        assert!(only_pid1.exact_user(FILES, PLAIN));
        assert!(!only_pid1.exact_user(DYNAMIC, PLAIN));
        let service_first = Coverage::new(true, true, false);
        assert!(!service_first.exact_user(FILES, PLAIN));
    }

    #[test]
    fn every_truncation_is_refused_or_reads_safely() {
        let file = sample();
        let full = content(&file);
        for len in 0..full.len() {
            assert!(Snapfile::parse(&full[..len]).is_err(), "truncated at {len}");
        }
    }

    #[test]
    fn corrupt_bytes_never_panic_and_never_yield_invalid_records() {
        let file = sample();
        let full = content(&file).to_vec();
        let mut seed: u64 = 0x1234_5678;
        for _ in 0..20_000 {
            let mut bytes = full.clone();
            for _ in 0..4 {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let at = (seed >> 33) as usize % bytes.len();
                bytes[at] = (seed >> 13) as u8;
            }
            let Ok(s) = Snapfile::parse(&bytes) else {
                continue;
            };
            for name in ["root", "alice", "bob", "wheel", "svc", "x"] {
                if let Ok(Some(u)) = s.user_by_name(named(name)) {
                    assert!(
                        valid_name(u.passwd.name)
                            && valid_gecos(u.passwd.gecos)
                            && valid_path(u.passwd.home)
                    );
                }
                if let Ok(Some(g)) = s.group_by_name(named(name)) {
                    for m in g.members(PLAIN).flatten() {
                        assert!(valid_name(m));
                    }
                }
                let _ = s.gids_of(name, PLAIN);
            }
            for id in [0, 10, 1000, 1001, 61200] {
                let _ = s.user_by_uid(id);
                let _ = s.group_by_gid(id);
            }
        }
    }

    #[test]
    fn a_full_table_ends_its_probe_after_one_round() {
        let file = sample();
        let mut bytes = content(&file).to_vec();
        // Point every slot of user_by_name at record 1 (alice:1000).
        let head = Section(&bytes[..HEADER_SIZE]);
        let offset = head.u32_at(32 + 5 * 8).unwrap() as usize;
        let len = head.u32_at(36 + 5 * 8).unwrap() as usize;
        for slot in (offset + 4..offset + len).step_by(4) {
            bytes[slot..slot + 4].copy_from_slice(&2u32.to_le_bytes());
        }
        let s = Snapfile::parse(&bytes).unwrap();
        assert!(s.user_by_name(named("nobody")).unwrap().is_none());
    }

    #[test]
    fn foreign_control_blocks_are_refused() {
        let mut start: [u8; 12] = sample()[..12].try_into().unwrap();
        start[8] = 2;
        assert_eq!(check_control(&start), Err(Invalid("unknown version")));
        start[0] = b'X';
        assert_eq!(check_control(&start), Err(Invalid("wrong magic")));
    }

    #[test]
    fn the_writer_stores_each_name_and_shell_once_however_many_it_holds() {
        // Enough users to grow the string index several times, each with
        // the same shell and real name and a home of its own: the shell
        // and each name are written once, homes and real names per user.
        let names: Vec<String> = (0..5000).map(|i| format!("u{i}")).collect();
        let homes: Vec<String> = names.iter().map(|n| format!("/home/{n}")).collect();
        let mut b = Builder::new();
        for (i, (name, home)) in names.iter().zip(&homes).enumerate() {
            b.user(UserIn {
                passwd: Passwd {
                    home,
                    ..user(name, i as u32, FILES).passwd
                },
                ..user(name, i as u32, FILES)
            });
        }
        for name in &names {
            b.member(name, &[]);
        }
        let file = b.finish(1, Coverage::default());
        let s = Snapfile::parse(content(&file)).unwrap();
        let head = Section(&content(&file)[..HEADER_SIZE]);
        let strings_len = head.u32_at(36).unwrap() as usize;
        let padded = |s: &str| 4 + s.len().next_multiple_of(4);
        let distinct: usize = names.iter().chain(&homes).map(|s| padded(s)).sum::<usize>()
            + names.len() * padded("Real Name")
            + padded("/bin/sh");
        assert_eq!(strings_len, distinct);
        let last = s.user_by_name(named("u4999")).unwrap().unwrap();
        assert_eq!((last.passwd.uid, last.passwd.home), (4999, "/home/u4999"));
        assert_eq!(s.user_at(17).unwrap().passwd.shell, "/bin/sh");
    }
}
