//! One answer per NSS call: from the snapshot file when it can answer
//! (`local`), otherwise from the broker over its socket (`client`), the
//! socket's answer kept for glibc's retry with a larger buffer (`retry`).
//! A call that may not talk and that the file cannot answer is `UNAVAIL`.

use userdb_proto::api::LookupOptions;
use userdb_proto::names::ValidName;
use userdb_proto::record::{GroupRecord, Passwd, UserRecord};

use crate::client::{Failure, Key, Lookup};
use crate::enumerate::Opened;
use crate::local::{self, Listing, Local};
use crate::nsswitch::Database;
use crate::retry::{Retry, RetryKey};

/// The answers kept for glibc's retry with a larger buffer, per database.
static PASSWD_RETRY: Retry<(UserRecord, bool)> = Retry::new();
static GROUP_RETRY: Retry<(GroupRecord, bool)> = Retry::new();
static SHADOW_RETRY: Retry<(UserRecord, bool)> = Retry::new();
static GSHADOW_RETRY: Retry<(GroupRecord, bool)> = Retry::new();

fn retry_key(key: Key) -> RetryKey {
    match key {
        Key::Name(name) => RetryKey::Name(name.as_str().to_owned()),
        Key::Id(id) => RetryKey::Id(id),
    }
}

/// The file's answer, or `None` to ask the broker (if this call may talk).
fn settled<R>(lookup: &Lookup, local: Local<Result<R, Failure>>) -> Option<Result<R, Failure>> {
    match local {
        Local::Answered(result) => Some(result),
        Local::Missing => Some(Err(Failure::NOT_FOUND)),
        Local::Unknown if !lookup.may_talk() => Some(Err(Failure::DECLINED)),
        Local::Unknown => None,
    }
}

/// `getpwnam_r` / `getpwuid_r`.
pub fn user(
    lookup: &Lookup,
    key: Key,
    write: impl Fn(&Passwd) -> Result<(), Failure>,
) -> Result<(), Failure> {
    let options = lookup.options(Database::Passwd);
    if let Some(done) = settled(
        lookup,
        local::user(lookup, key, options, |u| write(&u.passwd)),
    ) {
        return done;
    }
    PASSWD_RETRY.answer(
        retry_key(key),
        lookup.now_ms(),
        || lookup.user(key, Database::Passwd),
        |(user, _)| write(&user.passwd()),
    )
}

/// `getgrnam_r` / `getgrgid_r`: name, gid and the members to list.
pub fn group(
    lookup: &Lookup,
    key: Key,
    write: impl Fn(&str, u32, &[&str]) -> Result<(), Failure>,
) -> Result<(), Failure> {
    let options = lookup.options(Database::Group);
    let local = local::group(lookup, key, options, |g, members| {
        write(g.name, g.gid, members)
    });
    if let Some(done) = settled(lookup, local) {
        return done;
    }
    GROUP_RETRY.answer(
        retry_key(key),
        lookup.now_ms(),
        || lookup.group(key, Database::Group),
        |(group, _)| {
            let members: Vec<&str> = group.members.iter().map(String::as_str).collect();
            write(&group.name, group.gid, &members)
        },
    )
}

/// `getspnam_r`: privileged data come only over the socket, for root.
pub fn shadow(
    lookup: &Lookup,
    name: ValidName<'_>,
    write: impl Fn(&UserRecord, bool) -> Result<(), Failure>,
) -> Result<(), Failure> {
    SHADOW_RETRY.answer(
        RetryKey::Name(name.as_str().to_owned()),
        lookup.now_ms(),
        || lookup.user(Key::Name(name), Database::Shadow),
        |(user, incomplete)| write(user, *incomplete),
    )
}

/// `getsgnam_r`: as `shadow`.
pub fn gshadow(
    lookup: &Lookup,
    name: ValidName<'_>,
    write: impl Fn(&GroupRecord, bool) -> Result<(), Failure>,
) -> Result<(), Failure> {
    GSHADOW_RETRY.answer(
        RetryKey::Name(name.as_str().to_owned()),
        lookup.now_ms(),
        || lookup.group(Key::Name(name), Database::Gshadow),
        |(group, incomplete)| write(group, *incomplete),
    )
}

/// `initgroups_dyn`: the gids of the groups that list `user`.
pub fn gids(lookup: &Lookup, user: &str) -> Result<Vec<u32>, Failure> {
    let options = lookup.options(Database::Initgroups);
    let local = match local::gids_of(lookup, user, options) {
        Local::Answered(gids) => Local::Answered(Ok(gids)),
        Local::Missing => Local::Missing,
        Local::Unknown => Local::Unknown,
    };
    if let Some(done) = settled(lookup, local) {
        return done;
    }
    lookup.membership_gids(user)
}

/// The file's listing for `database` when it holds it whole, else the
/// broker's (`fetch`).
fn open_listing<T>(
    lookup: &Lookup,
    database: Database,
    from_file: fn(&Lookup, LookupOptions) -> Option<Listing>,
    fetch: impl FnOnce() -> Result<Vec<(T, bool)>, Failure>,
) -> Result<Opened<T>, Failure> {
    if let Some(listing) = from_file(lookup, lookup.options(database)) {
        return Ok(Opened::File(listing));
    }
    Ok(Opened::Fetched(
        fetch()?.into_iter().map(|(record, _)| record).collect(),
    ))
}

/// `setpwent`.
pub fn open_users(lookup: &Lookup) -> Result<Opened<UserRecord>, Failure> {
    open_listing(lookup, Database::Passwd, Listing::users, || {
        lookup.all_users(Database::Passwd)
    })
}

/// `setgrent`.
pub fn open_groups(lookup: &Lookup) -> Result<Opened<GroupRecord>, Failure> {
    open_listing(lookup, Database::Group, Listing::groups, || {
        lookup.all_groups(Database::Group)
    })
}

/// `setspent`: over the socket only, and only whole.
pub fn open_shadow(lookup: &Lookup) -> Result<Opened<UserRecord>, Failure> {
    let users = lookup.all_users(Database::Shadow)?;
    if users.iter().any(|(_, incomplete)| *incomplete) {
        return Err(Failure::NOT_PRIVILEGED);
    }
    Ok(Opened::Fetched(
        users.into_iter().map(|(user, _)| user).collect(),
    ))
}
