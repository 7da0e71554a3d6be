//! What a caller's options leave out of the broker's local view, decided
//! here once for both readers of that view: the broker answering over its
//! socket, and the module reading the snapshot file.
//!
//! - With the dynamic bypass (`SYSTEMD_NSS_DYNAMIC_BYPASS=1`, generators),
//!   PID 1's dynamic users and groups are left out, as nss-systemd leaves
//!   out `io.systemd.DynamicUser`: PID 1 checks with it that a name is free.
//! - When the caller reads `/etc/passwd` and `/etc/group` itself
//!   (`callerReadsFiles`: `files` stands before `broker` on its
//!   nsswitch.conf line), records from those files are not listed again,
//!   and neither are the members and memberships those files state.

use crate::api::LookupOptions;

/// Where a record came from, as far as the options care.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Origin {
    /// From `/etc/passwd` or `/etc/group`.
    pub files: bool,
    /// One of PID 1's dynamic users or groups.
    pub pid1: bool,
}

/// Whether a look-up by key may return the record.
pub fn visible(origin: Origin, options: LookupOptions) -> bool {
    !(options.dynamic_bypass && origin.pid1)
}

/// Whether a listing shows the record.
pub fn listed(origin: Origin, options: LookupOptions) -> bool {
    visible(origin, options) && !(options.caller_reads_files && origin.files)
}

/// Whether a member (or a membership) is answered; `by_files`: the
/// `/etc/group` line of the group states it.
pub fn member_answered(by_files: bool, options: LookupOptions) -> bool {
    !(options.caller_reads_files && by_files)
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn each_option_leaves_out_its_own_records() {
        let files = Origin {
            files: true,
            pid1: false,
        };
        let dynamic = Origin {
            files: false,
            pid1: true,
        };
        let dropin = Origin::default();
        assert!(visible(files, FILES_FIRST) && !listed(files, FILES_FIRST));
        assert!(listed(files, PLAIN) && listed(files, BYPASS));
        assert!(!visible(dynamic, BYPASS) && !listed(dynamic, BYPASS));
        assert!(visible(dynamic, FILES_FIRST) && listed(dynamic, FILES_FIRST));
        assert!([PLAIN, FILES_FIRST, BYPASS]
            .iter()
            .all(|o| listed(dropin, *o)));
        assert!(!member_answered(true, FILES_FIRST));
        assert!(member_answered(true, PLAIN) && member_answered(false, FILES_FIRST));
    }
}
