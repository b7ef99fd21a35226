//! Listening sockets: one SO_REUSEPORT socket per worker per address, so the kernel spreads
//! connections over cores without a shared accept queue.

use std::io;
use std::net::{SocketAddr, TcpListener};

use socket2::{Domain, Socket, Type};

/// Why the listeners could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// Another process holds the address.
    #[error("listen {0}: address already in use (is another Portcullis or another server running on it?)")]
    InUse(SocketAddr),
    /// Any other socket error.
    #[error("listen {0}: {1}")]
    Io(SocketAddr, io::Error),
}

const BACKLOG: i32 = 4096;

fn socket(addr: SocketAddr, reuse_port: bool) -> io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    if reuse_port {
        s.set_reuse_port(true)?;
    }
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    Ok(s)
}

/// Open `workers` listeners on each address; `result[i]` belongs to worker `i`.
///
/// SO_REUSEPORT would let a second process join the same port silently and take a share of its
/// connections, so the address is first bound once without it: if that fails, someone holds it.
pub fn bind_all(
    addrs: &[SocketAddr],
    workers: usize,
) -> Result<Vec<Vec<TcpListener>>, ListenError> {
    let mut per_worker: Vec<Vec<TcpListener>> = (0..workers).map(|_| Vec::new()).collect();
    for &addr in addrs {
        match socket(addr, false) {
            Ok(probe) => drop(probe),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => return Err(ListenError::InUse(addr)),
            Err(e) => return Err(ListenError::Io(addr, e)),
        }
        let mut bound = addr;
        for list in per_worker.iter_mut() {
            let s = socket(bound, true).map_err(|e| match e.kind() {
                io::ErrorKind::AddrInUse => ListenError::InUse(addr),
                _ => ListenError::Io(addr, e),
            })?;
            s.listen(BACKLOG).map_err(|e| ListenError::Io(addr, e))?;
            // With port 0 the first socket picks the port and the rest join it.
            if bound.port() == 0 {
                bound = s
                    .local_addr()
                    .ok()
                    .and_then(|a| a.as_socket())
                    .unwrap_or(addr);
            }
            list.push(s.into());
        }
    }
    Ok(per_worker)
}
