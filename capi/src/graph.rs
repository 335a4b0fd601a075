//! Graph pools, captured graphs and their executable instances.

use gpuhal::{AnyGraph, AnyGraphExec, AnyGraphPool, DynDevice, DynGraph, DynGraphExec, DynGraphPool};
use parking_lot::Mutex;

use crate::device::{GpuhalMemoryStats, DEVICES};
use crate::ffi::{produce, write_out};
use crate::handles::{GpuhalDevice, GpuhalGraph, GpuhalGraphExec, GpuhalGraphPool, GpuhalStream, Table};
use crate::status::{guard, GpuhalStatus, InFunction};
use crate::stream::stream;

/// Every live graph pool.
pub static POOLS: Table<AnyGraphPool> = Table::new("graph pool");
/// Every live captured graph.
pub static GRAPHS: Table<AnyGraph> = Table::new("graph");
/// Every live executable graph (update needs it exclusively).
pub static EXECS: Table<Mutex<AnyGraphExec>> = Table::new("graph exec");

/// A new graph pool on `device`: captures begun with the same pool share its memory, so
/// several captures (one per batch size) need about as much as the largest.
///
/// # Safety
///
/// `out` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn gpuhal_graph_pool_create(device: GpuhalDevice, out: *mut GpuhalGraphPool) -> GpuhalStatus {
    const F: &str = "gpuhal_graph_pool_create";
    guard(F, || {
        let make = || {
            let pool = DEVICES.get(F, device.id)?.device.graph_pool();
            let id = POOLS.insert(pool);
            Ok(GpuhalGraphPool { id })
        };
        // SAFETY: the caller passes `out` valid for a write (null is refused before anything is made).
        unsafe { produce(F, out, make) }
    })
}

/// The memory a graph pool holds (live: captures' kept outputs; idle: reusable).
///
/// # Safety
///
/// `out` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn gpuhal_graph_pool_stats(pool: GpuhalGraphPool, out: *mut GpuhalMemoryStats) -> GpuhalStatus {
    const F: &str = "gpuhal_graph_pool_stats";
    guard(F, || {
        let stats = POOLS.get(F, pool.id)?.stats().into();
        // SAFETY: the caller passes it valid for a write (null is refused).
        unsafe { write_out(F, "out", out, stats) }
    })
}

/// Releases the caller's hold on a pool; its memory goes back to the device's cache once
/// no graph or kept buffer uses it.
#[no_mangle]
pub extern "C" fn gpuhal_graph_pool_destroy(pool: GpuhalGraphPool) -> GpuhalStatus {
    guard("gpuhal_graph_pool_destroy", || {
        POOLS.remove("gpuhal_graph_pool_destroy", pool.id).map(drop)
    })
}

/// `*nodes` receives the number of operations captured.
///
/// # Safety
///
/// `nodes` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn gpuhal_graph_node_count(graph: GpuhalGraph, nodes: *mut u64) -> GpuhalStatus {
    const F: &str = "gpuhal_graph_node_count";
    guard(F, || {
        let count = GRAPHS.get(F, graph.id)?.node_count() as u64;
        // SAFETY: the caller passes it valid for a write (null is refused).
        unsafe { write_out(F, "nodes", nodes, count) }
    })
}

/// Makes an executable graph of `graph`.
///
/// # Safety
///
/// `out` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn gpuhal_graph_instantiate(graph: GpuhalGraph, out: *mut GpuhalGraphExec) -> GpuhalStatus {
    const F: &str = "gpuhal_graph_instantiate";
    guard(F, || {
        let make = || {
            let exec = GRAPHS.get(F, graph.id)?.instantiate().in_function(F)?;
            let id = EXECS.insert(Mutex::new(exec));
            Ok(GpuhalGraphExec { id })
        };
        // SAFETY: the caller passes `out` valid for a write (null is refused before anything is made).
        unsafe { produce(F, out, make) }
    })
}

/// Destroys a captured graph (its executable instances keep working).
#[no_mangle]
pub extern "C" fn gpuhal_graph_destroy(graph: GpuhalGraph) -> GpuhalStatus {
    guard("gpuhal_graph_destroy", || {
        GRAPHS.remove("gpuhal_graph_destroy", graph.id).map(drop)
    })
}

/// Enqueues one replay of `exec` on `stream`.
#[no_mangle]
pub extern "C" fn gpuhal_graph_exec_launch(exec: GpuhalGraphExec, stream: GpuhalStream) -> GpuhalStatus {
    const F: &str = "gpuhal_graph_exec_launch";
    guard(F, || {
        let on = self::stream(F, stream)?;
        EXECS.get(F, exec.id)?.lock().launch(&on.stream).in_function(F)
    })
}

/// Gives `exec` the parameters of `graph`, a capture of the same shape
/// (`GPUHAL_STATUS_CAPTURE` otherwise, and `exec` is unchanged).
#[no_mangle]
pub extern "C" fn gpuhal_graph_exec_update(exec: GpuhalGraphExec, graph: GpuhalGraph) -> GpuhalStatus {
    const F: &str = "gpuhal_graph_exec_update";
    guard(F, || {
        let graph = GRAPHS.get(F, graph.id)?;
        EXECS.get(F, exec.id)?.lock().update(&graph).in_function(F)
    })
}

/// Destroys an executable graph.
#[no_mangle]
pub extern "C" fn gpuhal_graph_exec_destroy(exec: GpuhalGraphExec) -> GpuhalStatus {
    guard("gpuhal_graph_exec_destroy", || {
        EXECS.remove("gpuhal_graph_exec_destroy", exec.id).map(drop)
    })
}
