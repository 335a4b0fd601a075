//! Sending a [`SharedMemory`] handle (and the [`SharedEvent`] exported alongside it) to
//! another process over a Unix socket: the pool's file descriptor travels as `SCM_RIGHTS`
//! ancillary data, everything else as one fixed-size message.
//!
//! ```
//! use std::os::unix::net::UnixStream;
//! use gpuhal_hal::handle_transfer::{receive_shared, send_shared};
//! use gpuhal_hal::{PoolHandle, SharedMemory};
//!
//! let (exporter, importer) = UnixStream::pair()?;
//! let handle = SharedMemory { backend: "mock", pool: PoolHandle::Token(7), allocation: [1; 64], offset: 256, len: 4096 };
//! send_shared(&exporter, &handle, None)?;
//! let (received, event) = receive_shared(&importer)?;
//! assert_eq!((received.offset, received.len, received.allocation), (256, 4096, [1; 64]));
//! assert!(event.is_none());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer, SendAncillaryMessage, SendFlags,
};

use crate::error::{Error, Result};
use crate::sharing::{PoolHandle, SharedEvent, SharedMemory, EXPORT_DATA_LEN};

/// Identifies the message and its layout version.
const MAGIC: [u8; 8] = *b"GPUHALS1";
/// Backend names a message can carry (a handle names its backend by a static string).
const BACKENDS: [&str; 3] = ["mock", "cuda", "vulkan"];

const POOL_FD: u8 = 0;
const POOL_TOKEN: u8 = 1;

/// magic, backend index, pool kind, event present, pool token, offset, len, allocation,
/// event backend index, event data.
const MESSAGE_LEN: usize = 8 + 1 + 1 + 1 + 8 + 8 + 8 + EXPORT_DATA_LEN + 1 + EXPORT_DATA_LEN;

fn io_error(context: &str, source: std::io::Error) -> Error {
    Error::Transfer {
        context: context.to_string(),
        source,
    }
}

fn backend_index(backend: &str) -> Result<u8> {
    BACKENDS
        .iter()
        .position(|b| *b == backend)
        .map(|i| i as u8)
        .ok_or_else(|| Error::invalid("send_shared", format!("unknown backend {backend:?}")))
}

fn backend_name(index: u8) -> Result<&'static str> {
    BACKENDS
        .get(usize::from(index))
        .copied()
        .ok_or_else(|| Error::invalid("receive_shared", format!("unknown backend number {index}")))
}

/// Sends `memory` (and `event`, if given) over `socket`. A file descriptor in the
/// handle is duplicated into the receiving process; the sender keeps its own.
pub fn send_shared(socket: &UnixStream, memory: &SharedMemory, event: Option<&SharedEvent>) -> Result<()> {
    let mut message = Vec::with_capacity(MESSAGE_LEN);
    message.extend_from_slice(&MAGIC);
    message.push(backend_index(memory.backend)?);
    let (kind, token) = match &memory.pool {
        PoolHandle::Fd(_) => (POOL_FD, 0),
        PoolHandle::Token(token) => (POOL_TOKEN, *token),
    };
    message.push(kind);
    message.push(u8::from(event.is_some()));
    message.extend_from_slice(&token.to_le_bytes());
    message.extend_from_slice(&memory.offset.to_le_bytes());
    message.extend_from_slice(&memory.len.to_le_bytes());
    message.extend_from_slice(&memory.allocation);
    match event {
        Some(event) => {
            message.push(backend_index(event.backend)?);
            message.extend_from_slice(&event.data);
        }
        None => message.extend_from_slice(&[0; 1 + EXPORT_DATA_LEN]),
    }
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    let fds;
    if let PoolHandle::Fd(fd) = &memory.pool {
        fds = [fd.as_fd()];
        if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
            return Err(Error::invalid("send_shared", "no room for the file descriptor"));
        }
    }
    let sent = rustix::net::sendmsg(socket, &[IoSlice::new(&message)], &mut control, SendFlags::empty())
        .map_err(|err| io_error("sending a shared memory handle", err.into()))?;
    if sent != message.len() {
        return Err(Error::invalid(
            "send_shared",
            format!("sent {sent} of {} bytes", message.len()),
        ));
    }
    Ok(())
}

/// Receives a handle [`send_shared`] sent, with its event if one was sent.
pub fn receive_shared(socket: &UnixStream) -> Result<(SharedMemory, Option<SharedEvent>)> {
    const OPERATION: &str = "receive_shared";
    let mut message = [0u8; MESSAGE_LEN];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let received = rustix::net::recvmsg(
        socket,
        &mut [IoSliceMut::new(&mut message)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )
    .map_err(|err| io_error("receiving a shared memory handle", err.into()))?;
    let mut fd: Option<OwnedFd> = None;
    for ancillary in control.drain() {
        if let RecvAncillaryMessage::ScmRights(fds) = ancillary {
            for received_fd in fds {
                // More than one descriptor is not a message of ours: the extras close here.
                fd.get_or_insert(received_fd);
            }
        }
    }
    if received.bytes != MESSAGE_LEN || message[..8] != MAGIC {
        return Err(Error::invalid(
            OPERATION,
            format!(
                "received {} bytes that are not a gpuhal shared memory handle",
                received.bytes
            ),
        ));
    }
    let u64_at = |at: usize| {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&message[at..at + 8]);
        u64::from_le_bytes(bytes)
    };
    let backend = backend_name(message[8])?;
    let pool = match (message[9], fd) {
        (POOL_FD, Some(fd)) => PoolHandle::Fd(fd),
        (POOL_FD, None) => {
            return Err(Error::invalid(
                OPERATION,
                "the handle names a file descriptor, but none came with it",
            ))
        }
        (POOL_TOKEN, _) => PoolHandle::Token(u64_at(11)),
        (other, _) => return Err(Error::invalid(OPERATION, format!("unknown pool handle kind {other}"))),
    };
    let mut allocation = [0u8; EXPORT_DATA_LEN];
    allocation.copy_from_slice(&message[35..35 + EXPORT_DATA_LEN]);
    let memory = SharedMemory {
        backend,
        pool,
        allocation,
        offset: u64_at(19),
        len: u64_at(27),
    };
    let event_at = 35 + EXPORT_DATA_LEN;
    let event = if message[10] != 0 {
        let mut data = [0u8; EXPORT_DATA_LEN];
        data.copy_from_slice(&message[event_at + 1..event_at + 1 + EXPORT_DATA_LEN]);
        Some(SharedEvent {
            backend: backend_name(message[event_at])?,
            data,
        })
    } else {
        None
    };
    Ok((memory, event))
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    #[test]
    fn a_pool_file_descriptor_and_an_event_cross_the_socket() {
        let (exporter, importer) = UnixStream::pair().unwrap();
        // A socket pair stands in for the pool's descriptor: what the receiver gets must
        // be a working duplicate of it.
        let (mut pool_end, far_end) = UnixStream::pair().unwrap();
        let event = SharedEvent {
            backend: "cuda",
            data: [9; EXPORT_DATA_LEN],
        };
        let memory = SharedMemory {
            backend: "cuda",
            pool: PoolHandle::Fd(OwnedFd::from(far_end)),
            allocation: [3; EXPORT_DATA_LEN],
            offset: 512,
            len: 1 << 20,
        };
        send_shared(&exporter, &memory, Some(&event)).unwrap();
        let (received, received_event) = receive_shared(&importer).unwrap();
        assert_eq!(received_event, Some(event));
        assert_eq!(
            (received.backend, received.offset, received.len, received.allocation),
            ("cuda", 512, 1 << 20, [3; EXPORT_DATA_LEN])
        );
        let PoolHandle::Fd(fd) = received.pool else {
            panic!("the descriptor did not arrive: {:?}", received.pool);
        };
        drop(memory);
        let mut duplicate = UnixStream::from(fd);
        duplicate.write_all(b"pool").unwrap();
        let mut seen = [0u8; 4];
        pool_end.read_exact(&mut seen).unwrap();
        assert_eq!(&seen, b"pool");
    }

    #[test]
    fn a_message_that_is_not_a_handle_is_refused() {
        let (mut sender, receiver) = UnixStream::pair().unwrap();
        sender.write_all(b"not a handle").unwrap();
        assert!(matches!(receive_shared(&receiver), Err(Error::InvalidArgument { .. })));
    }
}
