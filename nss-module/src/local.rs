//! Answers from the snapshot file, before any socket.
//!
//! The file answers a call when its answer is the broker's: a hit when no
//! source the broker would ask outranks it, a miss or a listing when every
//! source the broker would consult for the call is in the file
//! (`snapfile::Coverage`); the caller's options leave out the same records
//! as on the socket (`userdb_proto::visibility`). Otherwise the socket
//! answers. A call that may not talk (PID 1, a generator, the broker's own
//! unit) takes every hit from the file, and a miss there is `NOTFOUND` only
//! where the file is complete.

use userdb_proto::api::LookupOptions;
use userdb_proto::snapfile::{GroupView, Invalid, Snapfile, UserView};
use userdb_proto::visibility;

use crate::client::{Key, Lookup};
use crate::mapped::{self, Mapped};

/// What the file says about one call.
#[derive(Debug, PartialEq, Eq)]
pub enum Local<T> {
    /// The answer.
    Answered(T),
    /// Not there, and the file is complete for the call.
    Missing,
    /// The file cannot answer this call (or there is none): ask the broker.
    Unknown,
}

/// The file for this call, if there is one to use.
fn mapping(lookup: &Lookup) -> Option<Mapped> {
    mapped::current(|| lookup.snapshot_path(), || lookup.now_ms())
}

/// `answer` over the file for this call, while its mapping is held.
fn with_file<R>(lookup: &Lookup, answer: impl FnOnce(&Snapfile) -> Local<R>) -> Local<R> {
    match mapping(lookup) {
        Some(mapped) => answer(mapped.file()),
        None => Local::Unknown,
    }
}

/// Whether the file answers this call whole (members, memberships,
/// listings): it is complete for the options, or the caller may not talk
/// and this is the best answer there is.
fn whole(file: &Snapfile, lookup: &Lookup, options: LookupOptions) -> bool {
    file.coverage().complete(options) || !lookup.may_talk()
}

/// A miss in a file that covers `options`, or else no answer.
fn miss<T>(file: &Snapfile, options: LookupOptions) -> Local<T> {
    if file.coverage().complete(options) {
        Local::Missing
    } else {
        Local::Unknown
    }
}

/// A user by key, handed to `answer` while the mapping is held.
pub fn user<R>(
    lookup: &Lookup,
    key: Key,
    options: LookupOptions,
    answer: impl FnOnce(&UserView) -> R,
) -> Local<R> {
    with_file(lookup, |file| {
        let found = match key {
            Key::Name(name) => file.user_by_name(name),
            Key::Id(uid) => file.user_by_uid(uid),
        };
        match found {
            Ok(Some(user)) if visibility::visible(user.origin, options) => {
                if file.coverage().exact_user(user.origin, options) || !lookup.may_talk() {
                    Local::Answered(answer(&user))
                } else {
                    Local::Unknown
                }
            }
            Ok(_) => miss(file, options),
            Err(_) => Local::Unknown,
        }
    })
}

/// A group by key with the members this caller is answered, handed to
/// `answer` while the mapping is held.
pub fn group<R>(
    lookup: &Lookup,
    key: Key,
    options: LookupOptions,
    answer: impl FnOnce(&GroupView, &[&str]) -> R,
) -> Local<R> {
    with_file(lookup, |file| {
        let found = match key {
            Key::Name(name) => file.group_by_name(name),
            Key::Id(gid) => file.group_by_gid(gid),
        };
        match found {
            Ok(Some(group)) if visibility::visible(group.origin, options) => {
                // Services may state more members: only a complete file knows all.
                if !whole(file, lookup, options) {
                    return Local::Unknown;
                }
                match with_members(group.members(options), |members| answer(&group, members)) {
                    Ok(answered) => Local::Answered(answered),
                    Err(_) => Local::Unknown,
                }
            }
            Ok(_) => miss(file, options),
            Err(_) => Local::Unknown,
        }
    })
}

/// How many members a group may have for them to be gathered on the
/// stack: most groups, so that a hit allocates nothing.
const FEW_MEMBERS: usize = 32;

/// `answer` over every member, or the first member that failed its checks.
fn with_members<'a, R>(
    mut members: impl Iterator<Item = Result<&'a str, Invalid>>,
    answer: impl FnOnce(&[&str]) -> R,
) -> Result<R, Invalid> {
    let mut few = [""; FEW_MEMBERS];
    for (at, slot) in few.iter_mut().enumerate() {
        match members.next() {
            Some(member) => *slot = member?,
            None => return Ok(answer(&few[..at])),
        }
    }
    let mut all = few.to_vec();
    for member in members {
        all.push(member?);
    }
    Ok(answer(&all))
}

/// The gids of the groups that list `user`, for `initgroups`.
pub fn gids_of(lookup: &Lookup, user: &str, options: LookupOptions) -> Local<Vec<u32>> {
    with_file(lookup, |file| {
        if !whole(file, lookup, options) {
            return Local::Unknown;
        }
        match file.gids_of(user, options) {
            Ok(gids) if gids.is_empty() => miss(file, options),
            Ok(gids) => Local::Answered(gids),
            Err(_) => Local::Unknown,
        }
    })
}

/// One step of a listing.
#[derive(Debug, PartialEq, Eq)]
pub enum Step<R> {
    /// An entry was handed out; what handing it out returned.
    Handed(R),
    /// The listing is over.
    End,
    /// A record failed its checks: the listing cannot go on.
    Corrupt,
}

/// A listing over one generation of the file, from `set*ent` to `end*ent`.
pub struct Listing {
    mapped: Mapped,
    options: LookupOptions,
    next: usize,
}

impl Listing {
    /// A listing of the file's users, if it holds the whole listing for
    /// this caller (or the caller may not talk) and every record in it is
    /// sound.
    pub fn users(lookup: &Lookup, options: LookupOptions) -> Option<Listing> {
        Listing::open(lookup, options, |file| file.check_users())
    }

    /// As [`Listing::users`], for groups.
    pub fn groups(lookup: &Lookup, options: LookupOptions) -> Option<Listing> {
        Listing::open(lookup, options, |file| file.check_groups())
    }

    fn open(
        lookup: &Lookup,
        options: LookupOptions,
        check: impl FnOnce(&Snapfile) -> Result<(), Invalid>,
    ) -> Option<Listing> {
        let mapped = mapping(lookup)?;
        let file = mapped.file();
        if !whole(file, lookup, options) || check(file).is_err() {
            return None;
        }
        Some(Listing {
            mapped,
            options,
            next: 0,
        })
    }

    /// Hands the next user to `answer`; moves on only when it returns
    /// `Ok`, so a retry with a larger buffer gets the same entry.
    pub fn next_user<E>(
        &mut self,
        answer: impl FnOnce(&UserView) -> Result<(), E>,
    ) -> Step<Result<(), E>> {
        let file = self.mapped.file();
        while self.next < file.user_count() {
            let Ok(user) = file.user_at(self.next) else {
                return Step::Corrupt;
            };
            if user.listed && visibility::listed(user.origin, self.options) {
                let result = answer(&user);
                if result.is_ok() {
                    self.next += 1;
                }
                return Step::Handed(result);
            }
            self.next += 1;
        }
        Step::End
    }

    /// As [`Listing::next_user`], for groups with their members.
    pub fn next_group<E>(
        &mut self,
        answer: impl FnOnce(&GroupView, &[&str]) -> Result<(), E>,
    ) -> Step<Result<(), E>> {
        let file = self.mapped.file();
        while self.next < file.group_count() {
            let Ok(group) = file.group_at(self.next) else {
                return Step::Corrupt;
            };
            if group.listed && visibility::listed(group.origin, self.options) {
                let Ok(result) = with_members(group.members(self.options), |members| {
                    answer(&group, members)
                }) else {
                    return Step::Corrupt;
                };
                if result.is_ok() {
                    self.next += 1;
                }
                return Step::Handed(result);
            }
            self.next += 1;
        }
        Step::End
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(count: usize) -> Vec<String> {
        (0..count).map(|i| format!("m{i}")).collect()
    }

    #[test]
    fn members_are_handed_over_whole_on_the_stack_or_past_it() {
        for count in [0, 1, FEW_MEMBERS - 1, FEW_MEMBERS, FEW_MEMBERS + 1, 1000] {
            let all = names(count);
            let handed = with_members(all.iter().map(|m| Ok(m.as_str())), |members| {
                members.iter().map(|m| m.to_string()).collect::<Vec<_>>()
            });
            assert_eq!(handed, Ok(all), "{count} members");
        }
    }

    #[test]
    fn a_member_that_fails_its_checks_fails_the_group() {
        for bad_at in [0, FEW_MEMBERS - 1, FEW_MEMBERS, FEW_MEMBERS + 5] {
            let all = names(FEW_MEMBERS + 10);
            let members = all.iter().enumerate().map(|(i, m)| {
                if i == bad_at {
                    Err(Invalid("invalid name"))
                } else {
                    Ok(m.as_str())
                }
            });
            let mut answered = false;
            let handed = with_members(members, |_| answered = true);
            assert_eq!(handed, Err(Invalid("invalid name")), "bad member {bad_at}");
            assert!(!answered, "answered despite bad member {bad_at}");
        }
    }
}
