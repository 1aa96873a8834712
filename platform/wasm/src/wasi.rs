//! WASI for guests: what a deployment grants ([`Grants`]), and the linking of WASI p2 with every
//! wait bounded by the call's CPU budget.
//!
//! wasmtime-wasi's synchronous WASI blocks the calling thread inside host code when a guest waits
//! (`pollable.block`, `poll`, the `blocking-*` stream calls): `std::thread::sleep` in a guest is a
//! `subscribe-duration` pollable blocked on. Epoch interruption only fires in guest code, so such a
//! wait would hold the runner's thread — and delete, redeploy and shutdown behind it — for as long
//! as the guest asked. Clocks stay granted (std needs them, and a short sleep is legitimate), but
//! every wait is relinked here to give up when the rest of the call's budget is spent: the call
//! then fails with `CpuTimeout`, exactly as if the guest had spun for that long.

use std::future::Future;
use std::path::PathBuf;
use std::task::Poll;
use std::time::Duration;

use wasmtime::component::{HasData, Linker, Resource, ResourceTable};
use wasmtime_wasi::p2::bindings::sync::io::{poll as sync_poll, streams as sync_streams};
use wasmtime_wasi::p2::{DynInputStream, DynOutputStream, DynPollable, StreamError, StreamResult};
use wasmtime_wasi::runtime::in_tokio;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder};
use wasmtime_wasi_io::bindings::wasi::io::{poll as async_poll, streams as async_streams};

use crate::PluginError;
use crate::host::HostState;

/// What WASI capabilities a deployment grants an instance, whatever its world. Default: none — no
/// environment variables, no filesystem, no network. Clocks and random numbers are always
/// available (Rust's std needs them); waiting on a clock counts against the call's CPU budget.
///
/// The broker sets these per deployment when an operator explicitly allows them (a file connector
/// gets exactly its directory, say); the guest never chooses its own grants.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Grants {
    /// Environment variables the guest sees.
    pub env: Vec<(String, String)>,
    /// Host directories mounted read-only: `(host path, guest path)`.
    pub read_only_dirs: Vec<(PathBuf, String)>,
    /// One host directory mounted read-write: `(host path, guest path)`. The guest can create,
    /// write and delete files under it and nowhere else.
    pub read_write_dir: Option<(PathBuf, String)>,
    /// Let the guest open TCP/UDP sockets and resolve names (with the host's network access).
    pub network: bool,
}

/// How a granted directory may be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DirAccess {
    ReadOnly,
    ReadWrite,
}

impl Grants {
    /// Exactly the directory holding `file` (an absolute path on the broker's host), mounted at the
    /// same path inside the guest so that the guest opens `file` as configured. Nothing else: no
    /// other directory, no environment, no network. `InvalidRequest` if `file` is relative, has no
    /// parent, or its directory does not exist.
    pub fn directory_of(file: &std::path::Path, access: DirAccess) -> Result<Grants, PluginError> {
        if !file.is_absolute() {
            return Err(PluginError::InvalidRequest(format!("{} is not an absolute path", file.display())));
        }
        let dir = file
            .parent()
            .filter(|dir| !dir.as_os_str().is_empty())
            .ok_or_else(|| PluginError::InvalidRequest(format!("{} names no file in a directory", file.display())))?;
        if !dir.is_dir() {
            return Err(PluginError::InvalidRequest(format!("{} is not a directory", dir.display())));
        }
        let guest_path = dir.to_str().ok_or_else(|| PluginError::InvalidRequest(format!("{} is not UTF-8", dir.display())))?.to_owned();
        let mount = (dir.to_path_buf(), guest_path);
        Ok(match access {
            DirAccess::ReadOnly => Grants { read_only_dirs: vec![mount], ..Grants::default() },
            DirAccess::ReadWrite => Grants { read_write_dir: Some(mount), ..Grants::default() },
        })
    }

    /// The instance's WASI context: stdin closed; stdout and stderr accept and discard everything
    /// (a bounded buffer would make `eprintln!` panic once full — guests log through `host.log`);
    /// then exactly what the grants say.
    pub(crate) fn wasi_ctx(&self) -> Result<WasiCtx, PluginError> {
        let mut builder = WasiCtxBuilder::new();
        for (key, value) in &self.env {
            builder.env(key, value);
        }
        let mut mount = |host_path: &PathBuf, guest_path: &str, perms| {
            builder
                .preopened_dir(host_path, guest_path, perms)
                .map(|_| ())
                .map_err(|e| PluginError::InvalidRequest(format!("granting {}: {e:#}", host_path.display())))
        };
        for (host_path, guest_path) in &self.read_only_dirs {
            mount(host_path, guest_path, FsPerms::ReadOnly)?;
        }
        if let Some((host_path, guest_path)) = &self.read_write_dir {
            mount(host_path, guest_path, FsPerms::ReadWrite)?;
        }
        builder.allow_tcp(self.network).allow_udp(self.network).allow_ip_name_lookup(self.network);
        if self.network {
            builder.inherit_network();
        }
        Ok(builder.build())
    }
}

/// The error a WASI wait that would outlast the call's budget traps with; `sandbox` maps it to
/// `CpuTimeout`.
#[derive(Debug, thiserror::Error)]
#[error("the guest blocked in a WASI wait for longer than the rest of its CPU budget")]
pub(crate) struct WaitOutlastsBudget;

/// Link WASI p2 (synchronous), then replace every call that can block with one bounded by the
/// remaining budget of the current call.
pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_sync(linker)?;
    linker.allow_shadowing(true);
    sync_poll::add_to_linker::<HostState, BoundedWaits<'static>>(linker, bounded_waits)?;
    sync_streams::add_to_linker::<HostState, BoundedWaits<'static>>(linker, bounded_waits)?;
    linker.allow_shadowing(false);
    Ok(())
}

/// The resource table with the time the current call has left, for the duration of one WASI call.
struct BoundedWaits<'a> {
    table: &'a mut ResourceTable,
    remaining: Duration,
}

impl HasData for BoundedWaits<'static> {
    type Data<'a> = BoundedWaits<'a>;
}

fn bounded_waits(state: &mut HostState) -> BoundedWaits<'_> {
    BoundedWaits { remaining: state.clock.remaining(), table: &mut state.table }
}

/// Run a WASI wait to completion, or give up once `remaining` has passed. A wait that is ready at
/// once (a write to the discarded stdout, a pollable that already fired) completes even with no
/// time left, and without setting a timer: those are most calls (a timer on each made 10 000
/// `eprintln!`s about a third slower).
fn bounded<F: Future>(remaining: Duration, wait: F) -> Result<F::Output, WaitOutlastsBudget> {
    in_tokio(async {
        let mut wait = std::pin::pin!(wait);
        if let Poll::Ready(done) = std::future::poll_fn(|cx| Poll::Ready(wait.as_mut().poll(cx))).await {
            return Ok(done);
        }
        tokio::time::timeout(remaining, wait).await.map_err(|_| WaitOutlastsBudget)
    })
}

fn bounded_stream<T>(remaining: Duration, wait: impl Future<Output = StreamResult<T>>) -> StreamResult<T> {
    bounded(remaining, wait).unwrap_or_else(|e| Err(StreamError::Trap(wasmtime::Error::new(e))))
}

impl sync_poll::Host for BoundedWaits<'_> {
    fn poll(&mut self, pollables: Vec<Resource<DynPollable>>) -> wasmtime::Result<Vec<u32>> {
        bounded(self.remaining, async_poll::Host::poll(&mut *self.table, pollables))?
    }
}

impl sync_poll::HostPollable for BoundedWaits<'_> {
    fn ready(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<bool> {
        sync_poll::HostPollable::ready(&mut *self.table, pollable)
    }

    fn block(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        bounded(self.remaining, async_poll::HostPollable::block(&mut *self.table, pollable))?
    }

    fn drop(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        sync_poll::HostPollable::drop(&mut *self.table, pollable)
    }
}

impl sync_streams::Host for BoundedWaits<'_> {
    fn convert_stream_error(&mut self, error: StreamError) -> wasmtime::Result<sync_streams::StreamError> {
        sync_streams::Host::convert_stream_error(&mut *self.table, error)
    }
}

impl sync_streams::HostInputStream for BoundedWaits<'_> {
    fn drop(&mut self, stream: Resource<DynInputStream>) -> wasmtime::Result<()> {
        sync_streams::HostInputStream::drop(&mut *self.table, stream)
    }

    fn read(&mut self, stream: Resource<DynInputStream>, len: u64) -> StreamResult<Vec<u8>> {
        sync_streams::HostInputStream::read(&mut *self.table, stream, len)
    }

    fn blocking_read(&mut self, stream: Resource<DynInputStream>, len: u64) -> StreamResult<Vec<u8>> {
        bounded_stream(self.remaining, async_streams::HostInputStream::blocking_read(&mut *self.table, stream, len))
    }

    fn skip(&mut self, stream: Resource<DynInputStream>, len: u64) -> StreamResult<u64> {
        sync_streams::HostInputStream::skip(&mut *self.table, stream, len)
    }

    fn blocking_skip(&mut self, stream: Resource<DynInputStream>, len: u64) -> StreamResult<u64> {
        bounded_stream(self.remaining, async_streams::HostInputStream::blocking_skip(&mut *self.table, stream, len))
    }

    fn subscribe(&mut self, stream: Resource<DynInputStream>) -> wasmtime::Result<Resource<DynPollable>> {
        sync_streams::HostInputStream::subscribe(&mut *self.table, stream)
    }
}

impl sync_streams::HostOutputStream for BoundedWaits<'_> {
    fn drop(&mut self, stream: Resource<DynOutputStream>) -> wasmtime::Result<()> {
        sync_streams::HostOutputStream::drop(&mut *self.table, stream)
    }

    fn check_write(&mut self, stream: Resource<DynOutputStream>) -> StreamResult<u64> {
        sync_streams::HostOutputStream::check_write(&mut *self.table, stream)
    }

    fn write(&mut self, stream: Resource<DynOutputStream>, bytes: Vec<u8>) -> StreamResult<()> {
        sync_streams::HostOutputStream::write(&mut *self.table, stream, bytes)
    }

    fn blocking_write_and_flush(&mut self, stream: Resource<DynOutputStream>, bytes: Vec<u8>) -> StreamResult<()> {
        bounded_stream(self.remaining, async_streams::HostOutputStream::blocking_write_and_flush(&mut *self.table, stream, bytes))
    }

    fn blocking_write_zeroes_and_flush(&mut self, stream: Resource<DynOutputStream>, len: u64) -> StreamResult<()> {
        bounded_stream(self.remaining, async_streams::HostOutputStream::blocking_write_zeroes_and_flush(&mut *self.table, stream, len))
    }

    fn subscribe(&mut self, stream: Resource<DynOutputStream>) -> wasmtime::Result<Resource<DynPollable>> {
        sync_streams::HostOutputStream::subscribe(&mut *self.table, stream)
    }

    fn write_zeroes(&mut self, stream: Resource<DynOutputStream>, len: u64) -> StreamResult<()> {
        sync_streams::HostOutputStream::write_zeroes(&mut *self.table, stream, len)
    }

    fn flush(&mut self, stream: Resource<DynOutputStream>) -> StreamResult<()> {
        sync_streams::HostOutputStream::flush(&mut *self.table, stream)
    }

    fn blocking_flush(&mut self, stream: Resource<DynOutputStream>) -> StreamResult<()> {
        bounded_stream(self.remaining, async_streams::HostOutputStream::blocking_flush(&mut *self.table, stream))
    }

    fn splice(&mut self, dst: Resource<DynOutputStream>, src: Resource<DynInputStream>, len: u64) -> StreamResult<u64> {
        sync_streams::HostOutputStream::splice(&mut *self.table, dst, src, len)
    }

    fn blocking_splice(&mut self, dst: Resource<DynOutputStream>, src: Resource<DynInputStream>, len: u64) -> StreamResult<u64> {
        bounded_stream(self.remaining, async_streams::HostOutputStream::blocking_splice(&mut *self.table, dst, src, len))
    }
}
