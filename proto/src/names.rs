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
        && !name
            .chars()
            .any(|c| c.is_control() || matches!(c, ':' | ',' | '/'))
}

/// A GECOS (real name) field: no `:`, no control characters (which covers
/// newline and NUL).
pub fn valid_gecos(gecos: &str) -> bool {
    gecos.len() <= MAX_FIELD_LEN && !gecos.chars().any(|c| c.is_control() || c == ':')
}

/// A home directory or shell: not empty, no `:` or control characters. A
/// relative path is allowed: glibc's `files` serves one as it is written,
/// and it cannot corrupt a passwd line.
pub fn valid_path(path: &str) -> bool {
    !path.is_empty()
        && path.len() <= MAX_FIELD_LEN
        && !path.chars().any(|c| c.is_control() || c == ':')
}

/// A password hash field for shadow/gshadow: no `:` or control characters.
pub fn valid_hash(hash: &str) -> bool {
    hash.len() <= MAX_FIELD_LEN && !hash.chars().any(|c| c.is_control() || c == ':')
}

/// A uid or gid that NSS can carry: not the 16-bit and 32-bit "invalid" ids.
pub fn valid_id(id: u32) -> bool {
    id != u32::from(u16::MAX) && id != u32::MAX
}

#[cfg(test)]
mod tests {
    use super::*;

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
