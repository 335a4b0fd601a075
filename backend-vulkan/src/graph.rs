//! Graphs: a capture is a list of transfer operations; an exec is a reusable command
//! buffer recorded from it, resubmitted on a stream's timeline at each launch.

use std::sync::Arc;

use ash::vk;
use gpuhal_hal::{DeviceId, Error, GraphPool, Result};

use crate::device::DeviceShared;
use crate::error::{vk_error, VkResultExt};
use crate::queue::Work;
use crate::stream::VulkanStream;
use crate::VulkanBackend;

/// One captured operation, with regions already resolved to buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    /// `vkCmdCopyBuffer`.
    Copy {
        src: vk::Buffer,
        src_offset: u64,
        dst: vk::Buffer,
        dst_offset: u64,
        len: u64,
    },
    /// `vkCmdFillBuffer` for the 4-byte-aligned middle, copies from the device's pattern
    /// buffer for up to 3 bytes at either end.
    Fill {
        dst: vk::Buffer,
        offset: u64,
        len: u64,
        value: u8,
    },
}

impl Op {
    fn kind(&self) -> &'static str {
        match self {
            Op::Copy { .. } => "copy",
            Op::Fill { .. } => "fill",
        }
    }
}

/// Records `op` into `cmd`.
pub(crate) fn record_op(shared: &DeviceShared, cmd: vk::CommandBuffer, op: &Op) {
    let device = &shared.device;
    match *op {
        Op::Copy {
            src,
            src_offset,
            dst,
            dst_offset,
            len,
        } => {
            if len == 0 {
                return;
            }
            let region = vk::BufferCopy {
                src_offset,
                dst_offset,
                size: len,
            };
            // SAFETY: `cmd` is recording; both buffers are live, the ranges were bounds-checked against them when the op was made, and they do not overlap.
            unsafe { device.cmd_copy_buffer(cmd, src, dst, &[region]) };
        }
        Op::Fill {
            dst,
            offset,
            len,
            value,
        } => {
            if len == 0 {
                return;
            }
            let end = offset + len;
            let body_start = offset.next_multiple_of(4).min(end);
            let body_end = (end / 4 * 4).max(body_start);
            if body_end > body_start {
                // SAFETY: `cmd` is recording; offset and size are multiples of 4 inside the bounds-checked range.
                unsafe {
                    device.cmd_fill_buffer(
                        cmd,
                        dst,
                        body_start,
                        body_end - body_start,
                        u32::from_ne_bytes([value; 4]),
                    )
                };
            }
            let Some(pattern) = shared.pattern.get() else { return };
            for (start, size) in [(offset, body_start - offset), (body_end, end - body_end)] {
                if size == 0 {
                    continue;
                }
                let region = vk::BufferCopy {
                    src_offset: u64::from(value) * 4,
                    dst_offset: start,
                    size,
                };
                // SAFETY: `cmd` is recording; the pattern buffer holds 4 bytes of each value and lives as long as the device; `size` is at most 3.
                unsafe { device.cmd_copy_buffer(cmd, pattern.buffer, dst, &[region]) };
            }
        }
    }
}

/// Orders one transfer after the previous one inside a command buffer.
pub(crate) fn transfer_barrier(device: &ash::Device, cmd: vk::CommandBuffer) {
    let barrier = vk::MemoryBarrier::default()
        .src_access_mask(vk::AccessFlags::TRANSFER_WRITE)
        .dst_access_mask(vk::AccessFlags::TRANSFER_READ | vk::AccessFlags::TRANSFER_WRITE);
    // SAFETY: `cmd` is recording, outside any render pass.
    unsafe {
        device.cmd_pipeline_barrier(
            cmd,
            vk::PipelineStageFlags::TRANSFER,
            vk::PipelineStageFlags::TRANSFER,
            vk::DependencyFlags::empty(),
            &[barrier],
            &[],
            &[],
        )
    };
}

/// A captured graph: its operations and the pool its allocations came from.
pub struct VulkanGraph {
    pub(crate) shared: Arc<DeviceShared>,
    pub(crate) ops: Vec<Op>,
    pub(crate) pool: GraphPool<VulkanBackend>,
}

impl std::fmt::Debug for VulkanGraph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VulkanGraph").field("ops", &self.ops.len()).finish()
    }
}

impl VulkanGraph {
    fn device(&self) -> DeviceId {
        self.shared.id
    }
}

impl gpuhal_hal::Graph<VulkanBackend> for VulkanGraph {
    fn instantiate(&self) -> Result<VulkanGraphExec> {
        let _span = tracing::debug_span!("graph_instantiate", ops = self.ops.len()).entered();
        Ok(VulkanGraphExec {
            shared: self.shared.clone(),
            native: ExecNative::record(&self.shared, &self.ops)?,
            ops: self.ops.clone(),
            pool: self.pool.clone(),
        })
    }

    fn node_count(&self) -> usize {
        self.ops.len()
    }
}

/// A reusable command buffer and the pool it came from.
pub(crate) struct ExecNative {
    shared: Arc<DeviceShared>,
    pool: vk::CommandPool,
    pub(crate) cmd: vk::CommandBuffer,
}

impl ExecNative {
    fn record(shared: &Arc<DeviceShared>, ops: &[Op]) -> Result<Arc<ExecNative>> {
        let info = vk::CommandPoolCreateInfo::default().queue_family_index(shared.queue_family);
        // SAFETY: valid create info; the pool is destroyed in `Drop`.
        let pool = unsafe { shared.device.create_command_pool(&info, None) }
            .vk("vkCreateCommandPool", || "creating a graph exec's command pool".into())?;
        // From here `Drop` cleans up.
        let mut native = ExecNative {
            shared: shared.clone(),
            pool,
            cmd: vk::CommandBuffer::null(),
        };
        let alloc = vk::CommandBufferAllocateInfo::default()
            .command_pool(pool)
            .level(vk::CommandBufferLevel::PRIMARY)
            .command_buffer_count(1);
        // SAFETY: the pool is ours and unused by any other thread.
        let cmds = unsafe { shared.device.allocate_command_buffers(&alloc) }.vk("vkAllocateCommandBuffers", || {
            "allocating a graph command buffer".into()
        })?;
        native.cmd = cmds
            .into_iter()
            .next()
            .ok_or_else(|| Error::invalid("instantiate", "vkAllocateCommandBuffers returned no command buffer"))?;
        // Reusable, and launchable again before an earlier launch has finished.
        let begin = vk::CommandBufferBeginInfo::default().flags(vk::CommandBufferUsageFlags::SIMULTANEOUS_USE);
        // SAFETY: the command buffer is fresh.
        unsafe { shared.device.begin_command_buffer(native.cmd, &begin) }
            .vk("vkBeginCommandBuffer", || "recording a graph".into())?;
        for (index, op) in ops.iter().enumerate() {
            if index > 0 {
                transfer_barrier(&shared.device, native.cmd);
            }
            record_op(shared, native.cmd, op);
        }
        // SAFETY: the command buffer is recording.
        unsafe { shared.device.end_command_buffer(native.cmd) }
            .map_err(|r| vk_error("recording a graph", "vkEndCommandBuffer", r))?;
        Ok(Arc::new(native))
    }
}

impl Drop for ExecNative {
    fn drop(&mut self) {
        // SAFETY: every batch that submitted the command buffer holds this `Arc` until it has completed, so none is pending; destroying the pool frees the buffer.
        unsafe { self.shared.device.destroy_command_pool(self.pool, None) };
    }
}

/// An instantiated graph. Keeps its graph pool (the captured allocations) alive.
pub struct VulkanGraphExec {
    shared: Arc<DeviceShared>,
    native: Arc<ExecNative>,
    ops: Vec<Op>,
    pool: GraphPool<VulkanBackend>,
}

impl std::fmt::Debug for VulkanGraphExec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VulkanGraphExec").field("ops", &self.ops.len()).finish()
    }
}

impl VulkanGraphExec {
    /// The graph pool the exec's captured allocations live in.
    pub fn pool(&self) -> &GraphPool<VulkanBackend> {
        &self.pool
    }
}

impl gpuhal_hal::GraphExec<VulkanBackend> for VulkanGraphExec {
    fn launch(&self, stream: &VulkanStream) -> Result<()> {
        gpuhal_hal::check_device("launch", "stream", self.shared.id, stream.device_id_raw())?;
        if stream.append_captured(&self.ops) {
            return Ok(());
        }
        let native = self.native.clone();
        stream.native().submit(|_| {
            Ok(Work {
                foreign_cmd: Some(native.cmd),
                keep: vec![native],
                ..Work::default()
            })
        })?;
        Ok(())
    }

    fn update(&mut self, graph: &VulkanGraph) -> Result<()> {
        let _span = tracing::debug_span!("graph_update", ops = graph.ops.len()).entered();
        gpuhal_hal::check_device("update", "graph", self.shared.id, graph.device())?;
        if graph.ops.len() != self.ops.len() {
            return Err(Error::GraphUpdate {
                reason: format!(
                    "the exec has {} operations, the new graph {}",
                    self.ops.len(),
                    graph.ops.len()
                ),
            });
        }
        if let Some(index) = (0..self.ops.len()).find(|&i| self.ops[i].kind() != graph.ops[i].kind()) {
            return Err(Error::GraphUpdate {
                reason: format!(
                    "operation {index} is a {} in the exec but a {} in the new graph",
                    self.ops[index].kind(),
                    graph.ops[index].kind()
                ),
            });
        }
        // Launches in flight keep the old command buffer; later ones use the new one.
        self.native = ExecNative::record(&self.shared, &graph.ops)?;
        self.ops = graph.ops.clone();
        self.pool = graph.pool.clone();
        Ok(())
    }
}
