//! Host imports that exist only for this crate's tests (feature `test-host-imports`, turned on by
//! the crate's dev-dependency on itself; never in the broker). `sluice-test:host-wait/sleep` is
//! what the `fixtures/host-wait` guest imports: a host call that waits, standing in for the coming
//! `sql` capability waiting on a database, to show that such waits are not charged to the guest's
//! CPU budget.

use std::time::Duration;

use wasmtime::StoreContextMut;
use wasmtime::component::Linker;

use crate::host::HostState;

pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.instance("sluice-test:host-wait/sleep")?.func_wrap("sleep-ms", |mut store: StoreContextMut<'_, HostState>, (ms,): (u32,)| {
        store.data_mut().uncharged(|_| std::thread::sleep(Duration::from_millis(u64::from(ms))));
        Ok(())
    })
}
