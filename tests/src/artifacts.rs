//! Where `cargo build --release` put the binaries under test.

use std::path::{Path, PathBuf};

/// The workspace root (the parent of this package).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// `<target>/release`, honouring `CARGO_TARGET_DIR` (relative to the
/// workspace root when relative, as cargo resolves it there in .ci/run).
pub fn release_dir() -> PathBuf {
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if Path::new(&dir).is_absolute() => PathBuf::from(dir),
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("target"),
    };
    target.join("release")
}

fn artifact(name: &str) -> PathBuf {
    let path = release_dir().join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --release` first",
        path.display()
    );
    path
}

/// The NSS module as built (installed as `libnss_broker.so.2`).
pub fn module() -> PathBuf {
    artifact("libnss_broker.so")
}

pub fn brokerd() -> PathBuf {
    artifact("userdb-brokerd")
}

pub fn brokerctl() -> PathBuf {
    artifact("userdb-brokerctl")
}

/// The test helper that calls glibc's look-ups directly (`tests/src/bin/nss-probe.rs`).
pub fn probe() -> PathBuf {
    artifact("nss-probe")
}
