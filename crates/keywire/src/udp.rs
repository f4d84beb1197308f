//! Binding the node's UDP socket.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};

use socket2::{Domain, Protocol, Socket, Type};

/// Socket buffer size asked of the kernel (it may grant less: net.core.rmem_max/wmem_max).
/// 4 MiB holds a full QUIC congestion window at 1 Gbit/s and 30 ms.
const SOCKET_BUFFER: usize = 4 << 20;

/// Binds `addr`. For `[::]`, one dual-stack socket (IPV6_V6ONLY off) serves IPv6 and IPv4; if the
/// host has no IPv6, it falls back to `0.0.0.0` on the same port.
pub(crate) fn bind(addr: SocketAddr) -> io::Result<UdpSocket> {
    let result = bind_exact(addr);
    match result {
        Err(e) if addr.ip().is_unspecified() && addr.is_ipv6() && no_ipv6(&e) => {
            bind_exact(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), addr.port()))
        }
        other => other,
    }
}

fn no_ipv6(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EAFNOSUPPORT) | Some(libc::EADDRNOTAVAIL)
    )
}

fn bind_exact(addr: SocketAddr) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        // Dual stack only on the wildcard: a specific IPv6 address cannot take IPv4 traffic.
        socket.set_only_v6(!addr.ip().is_unspecified())?;
    }
    // Best effort: a smaller buffer only costs throughput.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}
