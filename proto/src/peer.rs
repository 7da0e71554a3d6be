//! Who is on the other end of a Unix socket, from the kernel (`SO_PEERCRED`),
//! not from anything the peer says: the broker asks it of its clients (who
//! may see privileged data) and of the services it queries (which are served
//! by PID 1), the module of the broker it connected to (only root's, or the
//! caller's own, is believed).

use std::io;
use std::os::fd::AsRawFd;

/// Credentials of the peer process as of `connect()`/`listen()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
}

impl Peer {
    /// Only root may see password hashes and shadow fields.
    pub fn privileged(&self) -> bool {
        self.uid == 0
    }

    pub fn of<S: AsRawFd>(socket: &S) -> io::Result<Peer> {
        let mut cred = libc::ucred {
            pid: 0,
            uid: u32::MAX,
            gid: u32::MAX,
        };
        let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
        // SAFETY: `cred` is a valid, writable ucred and `len` holds its size.
        let rc = unsafe {
            libc::getsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERCRED,
                (&mut cred as *mut libc::ucred).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Peer {
            pid: cred.pid,
            uid: cred.uid,
            gid: cred.gid,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn socketpair_peer_is_this_process() {
        let (a, _b) = UnixStream::pair().unwrap();
        let peer = Peer::of(&a).unwrap();
        assert_eq!(peer.pid, std::process::id() as i32);
        // SAFETY: getuid has no preconditions.
        assert_eq!(peer.uid, unsafe { libc::getuid() });
        assert_eq!(peer.privileged(), peer.uid == 0);
    }
}
