//! The service manager's side of `sd_notify`, for the tests that start
//! userdb-brokerd themselves.

use std::io::ErrorKind;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Child;
use std::time::Duration;

/// The socket a broker started with `NOTIFY_SOCKET=path` reports to.
pub fn socket(path: &Path) -> UnixDatagram {
    let notify = UnixDatagram::bind(path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    notify
}

/// Waits for `broker`'s `READY=1` (10 s at the most), and kills it when
/// none comes, so that a failed test leaves no daemon behind. A receive
/// with a timeout fails with `EINTR` when the test process was stopped and
/// continued meanwhile, even without a signal handler: it is tried again.
pub fn wait_ready(notify: &UnixDatagram, broker: &mut Child) {
    let mut buf = [0u8; 64];
    let received = loop {
        match notify.recv(&mut buf) {
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            received => break received,
        }
    };
    if !matches!(received, Ok(n) if &buf[..n] == b"READY=1") {
        let _ = broker.kill();
        let _ = broker.wait();
        panic!("no READY=1 from userdb-brokerd: {received:?}");
    }
}
