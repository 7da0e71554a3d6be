//! A throw-away root directory with `etc/passwd`, `etc/group`, `etc/shadow`,
//! `etc/gshadow` and the userdb drop-in directories, for the broker's
//! `--root` and for bind-mounting over `/etc` in the lookup namespace.

use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::{json, Value};

/// A directory under `std::env::temp_dir()`, removed with everything in it on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
    /// A tmpfs is mounted on it (unmounted on drop).
    tmpfs: bool,
}

impl TempDir {
    /// Same, on a tmpfs of its own: hundreds of thousands of files are
    /// written without a journal and are gone at once with the unmount.
    pub fn on_tmpfs() -> Self {
        let mut dir = TempDir::new();
        let target = std::ffi::CString::new(dir.path.as_os_str().as_bytes())
            .unwrap_or_else(|_| panic!("NUL in {}", dir.path.display()));
        // SAFETY: every argument is a valid NUL-terminated string.
        let rc = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV,
                c"mode=0755,size=8g,nr_inodes=4m".as_ptr().cast(),
            )
        };
        assert_eq!(
            rc,
            0,
            "mount a tmpfs on {}: {}",
            dir.path.display(),
            std::io::Error::last_os_error()
        );
        dir.tmpfs = true;
        dir
    }

    pub fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        // Short: sockets live in here and sun_path holds 108 bytes.
        let path = std::env::temp_dir().join(format!(
            "ubt-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        if path.exists() {
            let _ = fs::remove_dir_all(&path);
        }
        create_dir(&path);
        TempDir { path, tmpfs: false }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Default for TempDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if self.tmpfs {
            if let Ok(target) = std::ffi::CString::new(self.path.as_os_str().as_bytes()) {
                // SAFETY: `target` is a valid NUL-terminated path. Detached,
                // so a broker still holding a file there cannot keep it.
                unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
            }
        }
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// Creates `dir` and its parents world-readable, so that lookups made as
/// nobody (uid 65534) can reach the socket and the module.
fn create_dir(dir: &Path) {
    fs::create_dir_all(dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", dir.display()));
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) {
    fs::write(path, bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

/// `lines` as file content, each ended by a newline.
fn lines_text(lines: &[&str]) -> String {
    lines.iter().map(|l| format!("{l}\n")).collect()
}

/// A FIFO at `path` (mode 0644), as `mkfifo` makes it.
pub fn make_fifo(path: &Path) {
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .unwrap_or_else(|_| panic!("NUL in {}", path.display()));
    // SAFETY: `c_path` is a valid NUL-terminated path for the call.
    let rc = unsafe { libc::mkfifo(c_path.as_ptr(), 0o644) };
    assert_eq!(
        rc,
        0,
        "mkfifo {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

/// The userdb drop-in directories, in systemd's priority order (earlier wins).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropinDir {
    Etc,
    Run,
    RunHost,
    UsrLocalLib,
    UsrLib,
}

impl DropinDir {
    pub const ALL: [DropinDir; 5] = [
        DropinDir::Etc,
        DropinDir::Run,
        DropinDir::RunHost,
        DropinDir::UsrLocalLib,
        DropinDir::UsrLib,
    ];

    /// Path below the root.
    pub fn relative(self) -> &'static str {
        match self {
            DropinDir::Etc => "etc/userdb",
            DropinDir::Run => "run/userdb",
            DropinDir::RunHost => "run/host/userdb",
            DropinDir::UsrLocalLib => "usr/local/lib/userdb",
            DropinDir::UsrLib => "usr/lib/userdb",
        }
    }
}

/// `/etc/passwd` of the fixture before a test adds to it: a realistic Debian base.
pub const BASE_PASSWD: [&str; 6] = [
    "root:x:0:0:root:/root:/bin/bash",
    "daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin",
    "bin:x:2:2:bin:/bin:/usr/sbin/nologin",
    "sys:x:3:3:sys:/dev:/usr/sbin/nologin",
    "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin",
    "filesuser:x:1000:1000:Files User,,,:/home/filesuser:/bin/bash",
];

pub const BASE_GROUP: [&str; 9] = [
    "root:x:0:",
    "daemon:x:1:",
    "bin:x:2:",
    "sys:x:3:",
    "adm:x:4:filesuser",
    "wheel:x:10:filesuser",
    "users:x:100:",
    "nogroup:x:65534:",
    "filesuser:x:1000:",
];

/// The hash `filesuser` has in the fixture's `/etc/shadow`.
pub const FILESUSER_HASH: &str = "$6$filessalt$Wq0yT9mJfFilesUserHashOnlyRootMaySee";

pub const BASE_SHADOW: [&str; 6] = [
    "root:*:19000:0:99999:7:::",
    "daemon:*:19000:0:99999:7:::",
    "bin:*:19000:0:99999:7:::",
    "sys:*:19000:0:99999:7:::",
    "nobody:*:19000:0:99999:7:::",
    "filesuser:$6$filessalt$Wq0yT9mJfFilesUserHashOnlyRootMaySee:19000:0:99999:7:::",
];

pub const BASE_GSHADOW: [&str; 9] = [
    "root:*::",
    "daemon:*::",
    "bin:*::",
    "sys:*::",
    "adm:*::filesuser",
    "wheel:!::filesuser",
    "users:*::",
    "nogroup:*::",
    "filesuser:!::",
];

/// A fixture root plus scratch space (socket, logs, module link) next to it.
#[derive(Debug)]
pub struct Fixture {
    dir: TempDir,
    root: PathBuf,
}

impl Fixture {
    /// A root holding the `BASE_*` files and empty drop-in directories.
    pub fn new() -> Self {
        Self::in_dir(TempDir::new())
    }

    /// Same, on a tmpfs of its own: for trees of hundreds of thousands of files.
    pub fn on_tmpfs() -> Self {
        Self::in_dir(TempDir::on_tmpfs())
    }

    fn in_dir(dir: TempDir) -> Self {
        let root = dir.path().join("root");
        create_dir(&root.join("etc"));
        for d in DropinDir::ALL {
            create_dir(&root.join(d.relative()));
        }
        let fixture = Fixture { dir, root };
        fixture.write_lines("etc/passwd", &BASE_PASSWD, 0o644);
        fixture.write_lines("etc/group", &BASE_GROUP, 0o644);
        fixture.write_lines("etc/shadow", &BASE_SHADOW, 0o600);
        fixture.write_lines("etc/gshadow", &BASE_GSHADOW, 0o600);
        fixture
    }

    /// The directory given to the broker as `--root`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Scratch space beside the root, removed with the fixture.
    pub fn scratch(&self) -> &Path {
        self.dir.path()
    }

    /// Where the test's broker (real or fake) listens.
    pub fn socket_path(&self) -> PathBuf {
        self.scratch().join("io.userdb.Broker")
    }

    /// Where a broker on [`Fixture::socket_path`] publishes its snapshot file.
    pub fn snapshot_path(&self) -> PathBuf {
        userdb_proto::snapfile::path_for(&self.socket_path())
    }

    /// Removes the snapshot file a broker left, so that the module asks
    /// the socket again.
    pub fn remove_snapshot(&self) {
        match fs::remove_file(self.snapshot_path()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("remove {}: {e}", self.snapshot_path().display()),
        }
    }

    fn write_lines(&self, relative: &str, lines: &[&str], mode: u32) {
        write_file(
            &self.root.join(relative),
            lines_text(lines).as_bytes(),
            mode,
        );
    }

    fn append_line(&self, relative: &str, line: &str) {
        let path = self.root.join(relative);
        let mut file = fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        writeln!(file, "{line}").unwrap_or_else(|e| panic!("append {}: {e}", path.display()));
    }

    /// `etc/DB` below the root.
    pub fn etc_path(&self, db: &str) -> PathBuf {
        self.root.join("etc").join(db)
    }

    /// Replaces `etc/DB` whole by writing a new file and renaming it over
    /// the old one, as shadow-utils does.
    pub fn replace_etc_file<S: AsRef<str>>(&self, db: &str, lines: &[S]) {
        let text: String = lines.iter().map(|l| format!("{}\n", l.as_ref())).collect();
        self.replace_etc_bytes(db, text.as_bytes());
    }

    /// Same, with any bytes (not necessarily UTF-8, not necessarily lines).
    pub fn replace_etc_bytes(&self, db: &str, bytes: &[u8]) {
        let staging = self.etc_path(&format!("{db}+"));
        let mode = if db.contains("shadow") { 0o600 } else { 0o644 };
        write_file(&staging, bytes, mode);
        self.rename_over_etc(db, &staging);
    }

    /// Renames `from` (anything: a FIFO, a sparse file) over `etc/DB`.
    pub fn rename_over_etc(&self, db: &str, from: &Path) {
        let path = self.etc_path(db);
        fs::rename(from, &path).unwrap_or_else(|e| panic!("rename to {}: {e}", path.display()));
    }

    /// Appends a raw line to `etc/passwd`.
    pub fn passwd_line(&self, line: &str) -> &Self {
        self.append_line("etc/passwd", line);
        self
    }

    pub fn dropin_path(&self, dir: DropinDir, file_name: &str) -> PathBuf {
        self.root.join(dir.relative()).join(file_name)
    }

    /// Writes a drop-in file whole: written beside it under a name no reader
    /// looks at, then renamed, as package managers do.
    pub fn dropin_raw(&self, dir: DropinDir, file_name: &str, bytes: &[u8]) -> PathBuf {
        self.write_dropin(dir, file_name, bytes, 0o644)
    }

    fn write_dropin(&self, dir: DropinDir, file_name: &str, bytes: &[u8], mode: u32) -> PathBuf {
        let path = self.dropin_path(dir, file_name);
        let staging = self.dropin_path(dir, &format!(".{file_name}.staging"));
        write_file(&staging, bytes, mode);
        fs::rename(&staging, &path).unwrap_or_else(|e| panic!("rename to {}: {e}", path.display()));
        path
    }

    /// A symlink `link_name` in `dir` to `target` (replacing what was there).
    pub fn dropin_link(&self, dir: DropinDir, link_name: &str, target: &str) {
        let link = self.dropin_path(dir, link_name);
        let _ = fs::remove_file(&link);
        symlink(target, &link).unwrap_or_else(|e| panic!("symlink {}: {e}", link.display()));
    }

    /// `NAME.user` holding `record`, and the `UID.user` symlink to it.
    /// `record` must carry `userName` and `uid`.
    pub fn dropin_user(&self, dir: DropinDir, record: &Value) -> &Self {
        let name = record["userName"]
            .as_str()
            .expect("fixture user needs userName");
        let uid = record["uid"].as_u64().expect("fixture user needs uid");
        let file_name = format!("{name}.user");
        self.dropin_raw(dir, &file_name, record.to_string().as_bytes());
        self.dropin_link(dir, &format!("{uid}.user"), &file_name);
        self
    }

    /// `NAME.user-privileged` (mode 0600) holding `{"privileged": privileged}`.
    pub fn dropin_user_privileged(&self, dir: DropinDir, name: &str, privileged: &Value) -> &Self {
        let content = json!({ "privileged": privileged }).to_string();
        self.write_dropin(
            dir,
            &format!("{name}.user-privileged"),
            content.as_bytes(),
            0o600,
        );
        self
    }

    /// `NAME.group-privileged` (mode 0600) holding `{"privileged": privileged}`.
    pub fn dropin_group_privileged(&self, dir: DropinDir, name: &str, privileged: &Value) -> &Self {
        let content = json!({ "privileged": privileged }).to_string();
        self.write_dropin(
            dir,
            &format!("{name}.group-privileged"),
            content.as_bytes(),
            0o600,
        );
        self
    }

    /// `NAME.group` holding `record`, and the `GID.group` symlink to it.
    pub fn dropin_group(&self, dir: DropinDir, record: &Value) -> &Self {
        let name = record["groupName"]
            .as_str()
            .expect("fixture group needs groupName");
        let gid = record["gid"].as_u64().expect("fixture group needs gid");
        let file_name = format!("{name}.group");
        self.dropin_raw(dir, &file_name, record.to_string().as_bytes());
        self.dropin_link(dir, &format!("{gid}.group"), &file_name);
        self
    }

    /// A `USER:GROUP.membership` file. Its content is not read, but it holds
    /// `{}`: systemd lists drop-ins with CONF_FILES_FILTER_MASKED, so an
    /// empty file would mask the name rather than state the membership.
    pub fn dropin_membership(&self, dir: DropinDir, user: &str, group: &str) -> &Self {
        self.dropin_raw(dir, &format!("{user}:{group}.membership"), b"{}");
        self
    }

    /// Masks `file_name` in `dir` with a symlink to /dev/null, as systemd allows.
    pub fn mask_with_dev_null(&self, dir: DropinDir, file_name: &str) -> &Self {
        self.dropin_link(dir, file_name, "/dev/null");
        self
    }

    /// PID 1's directory of dynamic users below the root.
    pub fn dynamic_uid_dir(&self) -> PathBuf {
        self.root.join("run/systemd/dynamic-uid")
    }

    /// The two links PID 1 keeps for a dynamic user it allocated:
    /// `direct:NAME` -> UID and `direct:UID` -> NAME (the directory is
    /// created if missing).
    pub fn dynamic_user(&self, name: &str, uid: u32) -> &Self {
        let dir = self.dynamic_uid_dir();
        create_dir(&dir);
        for (link, target) in [
            (name.to_owned(), uid.to_string()),
            (uid.to_string(), name.to_owned()),
        ] {
            let link = dir.join(format!("direct:{link}"));
            symlink(&target, &link).unwrap_or_else(|e| panic!("symlink {}: {e}", link.display()));
        }
        self
    }

    /// Removes a dynamic user's links, as PID 1 does when its unit stops.
    pub fn remove_dynamic_user(&self, name: &str, uid: u32) {
        for key in [name.to_owned(), uid.to_string()] {
            let link = self.dynamic_uid_dir().join(format!("direct:{key}"));
            fs::remove_file(&link).unwrap_or_else(|e| panic!("rm {}: {e}", link.display()));
        }
    }

    pub fn remove_dropin(&self, dir: DropinDir, file_name: &str) {
        let path = self.dropin_path(dir, file_name);
        fs::remove_file(&path).unwrap_or_else(|e| panic!("rm {}: {e}", path.display()));
    }
}

impl Default for Fixture {
    fn default() -> Self {
        Self::new()
    }
}

/// A drop-in user record with nothing but what a passwd line needs: gid
/// equal to the uid, no real name, home `/home/NAME`, shell `/bin/sh`.
pub fn plain_user(name: &str, uid: u32) -> Value {
    json!({
        "userName": name, "uid": uid, "gid": uid,
        "homeDirectory": format!("/home/{name}"), "shell": "/bin/sh",
    })
}

/// The passwd line of [`plain_user`].
pub fn plain_passwd_line(name: &str, uid: u32) -> String {
    format!("{name}:x:{uid}:{uid}::/home/{name}:/bin/sh")
}
