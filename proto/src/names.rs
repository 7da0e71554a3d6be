//! What may appear in a passwd/group line. Both ends apply these checks: the
//! broker when it reads a source, the module again before it packs an answer
//! into the caller's buffer, so a lying broker cannot corrupt a passwd line.

/// Longest user or group name accepted (LOGIN_NAME_MAX less the NUL).
pub const MAX_NAME_LEN: usize = 255;
/// Longest GECOS, home directory or shell accepted.
pub const MAX_FIELD_LEN: usize = 4096;

/// A user or group name safe for every NSS consumer: not empty, no control
/// characters, none of `:` `,` `/`, no leading `-`, no surrounding
/// white space, not purely numeric (it would read as an id), not `.`/`..`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name != "."
        && name != ".."
        && !name.starts_with('-')
        && !name.starts_with(char::is_whitespace)
        && !name.ends_with(char::is_whitespace)
        && !name.bytes().all(|b| b.is_ascii_digit())
        && !contains_refused(name, &NAME_REFUSED)
}

/// A name that passed [`valid_name`]: a record found under these bytes
/// needs no second check of its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValidName<'a>(&'a str);

impl<'a> ValidName<'a> {
    pub fn new(name: &'a str) -> Option<ValidName<'a>> {
        valid_name(name).then_some(ValidName(name))
    }

    pub fn as_str(self) -> &'a str {
        self.0
    }
}

/// What a byte is to a field check: fine, refused, or the start of a
/// character beyond ASCII (decoded and checked as a character).
const FINE: u8 = 0;
const REFUSED: u8 = 1;
const BEYOND_ASCII: u8 = 2;

/// The byte table of a field that refuses C0 controls, DEL and `extra`.
const fn refusing(extra: &[u8]) -> [u8; 256] {
    let mut table = [FINE; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = if b < 0x20 || b == 0x7f {
            REFUSED
        } else if b >= 0x80 {
            BEYOND_ASCII
        } else {
            FINE
        };
        b += 1;
    }
    let mut i = 0;
    while i < extra.len() {
        table[extra[i] as usize] = REFUSED;
        i += 1;
    }
    table
}

static NAME_REFUSED: [u8; 256] = refusing(b":,/");
static FIELD_REFUSED: [u8; 256] = refusing(b":");

/// Whether `text` holds a control character (C0, DEL or C1) or a byte the
/// table refuses. Every look-up checks the fields it hands out, so ASCII,
/// the common case, costs one table look-up per byte, without decoding.
fn contains_refused(text: &str, table: &[u8; 256]) -> bool {
    for (at, &byte) in text.as_bytes().iter().enumerate() {
        match table[usize::from(byte)] {
            FINE => {}
            REFUSED => return true,
            // All before `at` is ASCII, so `at` starts a character.
            _ => {
                return text.get(at..).is_none_or(|rest| {
                    rest.chars().any(|c| {
                        c.is_control()
                            || u8::try_from(c).is_ok_and(|b| table[usize::from(b)] == REFUSED)
                    })
                })
            }
        }
    }
    false
}

/// A GECOS (real name) field: no `:`, no control characters (which covers
/// newline and NUL).
pub fn valid_gecos(gecos: &str) -> bool {
    gecos.len() <= MAX_FIELD_LEN && !contains_refused(gecos, &FIELD_REFUSED)
}

/// A home directory or shell: not empty, no `:` or control characters. A
/// relative path is allowed: glibc's `files` serves one as it is written,
/// and it cannot corrupt a passwd line.
pub fn valid_path(path: &str) -> bool {
    !path.is_empty() && path.len() <= MAX_FIELD_LEN && !contains_refused(path, &FIELD_REFUSED)
}

/// A password hash field for shadow/gshadow: no `:` or control characters.
pub fn valid_hash(hash: &str) -> bool {
    hash.len() <= MAX_FIELD_LEN && !contains_refused(hash, &FIELD_REFUSED)
}

/// A uid or gid that NSS can carry: not the 16-bit and 32-bit "invalid" ids.
pub fn valid_id(id: u32) -> bool {
    id != u32::from(u16::MAX) && id != u32::MAX
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_refused_in_ascii_and_beyond() {
        for bad in ["a\u{7f}b", "a\u{85}b", "caf\u{e9}\u{9f}", "a\tb", "x:y"] {
            assert!(!valid_path(bad), "{bad:?}");
            assert!(!valid_gecos(bad), "{bad:?}");
        }
        for ok in ["/home/jos\u{e9}", "/bin/sh", "Jos\u{e9} \u{d6}rn"] {
            assert!(valid_path(ok), "{ok:?}");
        }
        assert!(!valid_name("jos\u{e9}:x"));
        assert!(!valid_name("a\u{2f}b"));
    }

    #[test]
    fn names() {
        for ok in ["root", "alice", "a.b-c_d", "Domain Users", "x1", "user$"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in [
            "", ".", "..", "-x", "123", "a:b", "a,b", "a/b", "a\nb", "a\0b", " a", "a ",
        ] {
            assert!(!valid_name(bad), "{bad:?}");
        }
        assert!(!valid_name(&"a".repeat(256)));
        assert!(valid_name(&"a".repeat(255)));
    }

    #[test]
    fn gecos_and_paths() {
        assert!(valid_gecos("Alice Smith,,,"));
        assert!(valid_gecos(""));
        assert!(!valid_gecos("Evil:0:0"));
        assert!(!valid_gecos("a\nb"));
        assert!(!valid_gecos("a\0b"));
        assert!(valid_path("/home/alice"));
        assert!(valid_path("home"));
        assert!(!valid_path("/a:b"));
        assert!(!valid_path(""));
    }

    #[test]
    fn ids() {
        assert!(valid_id(0));
        assert!(valid_id(65534));
        assert!(!valid_id(65535));
        assert!(!valid_id(u32::MAX));
    }
}
