//! An mmap'd model file made usable by the device without a copy: the Grace Blackwell
//! (GB10) and Grace Hopper case, where `cuMemHostRegister` is not supported but the device
//! reads pageable host memory directly. Code that treated that error as "copy every
//! range" silently doubled an 80 GiB model; here the path is chosen explicitly, reported,
//! and a copy happens only when the policy allows it.
//!
//! `cargo run --example import_mmap` shows each mock profile's path (coherent: direct
//! access; discrete: page-locked; minimal: refused, then copied when allowed). With
//! `--features cuda` and an NVIDIA driver it imports on the GPU. Map files `MAP_SHARED`
//! (`memmap2::Mmap::map` does): see docs/design.md for why on CUDA.

use std::error::Error;
use std::fs::File;
use std::io::Write;
use std::process::ExitCode;

use gpuhal::mock::{MockBackend, MockConfig, MockDevice, Profile};
use gpuhal::{Backend, Device, Error as HalError, ImportPolicy, MemoryKind, Stream};

/// The size of the stand-in model file.
const FILE_LEN: usize = 8 << 20;
/// Where one tensor starts in the file (rarely on a page boundary).
const TENSOR_OFFSET: u64 = 4096 + 128;
const TENSOR_LEN: u64 = 1 << 20;

fn run<B: Backend>(device: &B::Device, model: &[u8]) -> Result<(), Box<dyn Error>> {
    let stream = device.create_stream()?;
    let name = &device.info().name;
    // Zero-copy paths only (the default): never a silent duplicate of the file.
    let import = match device.import_host(model, ImportPolicy::ZERO_COPY, &stream) {
        Ok(import) => import,
        Err(refused @ HalError::ImportRefused { .. }) => {
            println!("import_mmap on {name}: zero-copy refused: {refused}");
            // The caller decides whether a copy is acceptable, and it is counted.
            device.import_host(model, ImportPolicy::ANY, &stream)?
        }
        Err(other) => return Err(other.into()),
    };
    println!(
        "import_mmap on {name}: {} MiB imported by the {:?} path",
        import.len() >> 20,
        import.path()
    );

    // The import is a device region: copy a tensor out of it, or hand its address to a
    // kernel of your own (`import.device_address()`).
    let tensor = device.allocate(TENSOR_LEN, MemoryKind::Device, &stream)?;
    stream.copy(&import, TENSOR_OFFSET, &tensor, 0, TENSOR_LEN)?;
    let mut host = vec![0; TENSOR_LEN as usize];
    stream.read(&tensor, 0, &mut host)?;
    let start = TENSOR_OFFSET as usize;
    if host[..] != model[start..start + TENSOR_LEN as usize] {
        return Err("the tensor read through the import differs from the file".into());
    }
    let stats = device.import_stats();
    println!(
        "  tensor at offset {TENSOR_OFFSET} read correctly; imports so far: coherent {}, registered {}, copied {} \
         ({} bytes), refused {}",
        stats.coherent, stats.registered, stats.copied, stats.copied_bytes, stats.refused
    );
    Ok(())
}

/// Writes a stand-in model file and maps it.
fn model_file() -> Result<(std::path::PathBuf, memmap2::Mmap), Box<dyn Error>> {
    let path = std::env::temp_dir().join(format!("gpuhal-import-example-{}.bin", std::process::id()));
    let mut file = File::create(&path)?;
    let bytes: Vec<u8> = (0..FILE_LEN).map(|i| (i % 251) as u8).collect();
    file.write_all(&bytes)?;
    file.sync_all()?;
    let file = File::open(&path)?;
    // SAFETY: the file is this process's own and nothing truncates or writes it while mapped.
    let map = unsafe { memmap2::Mmap::map(&file) }?;
    Ok((path, map))
}

fn run_all() -> Result<(), Box<dyn Error>> {
    let (path, map) = model_file()?;
    let outcome = (|| {
        #[cfg(feature = "cuda")]
        if gpuhal::cuda::driver_available() {
            let device = gpuhal::cuda::CudaDevice::open(0)?;
            return run::<gpuhal::cuda::CudaBackend>(&device, &map);
        }
        if std::env::var("GPUHAL_REQUIRE_GPU").is_ok_and(|value| value == "1") {
            return Err("GPUHAL_REQUIRE_GPU=1, but no NVIDIA driver was found (or `cuda` is not compiled in)".into());
        }
        for profile in [Profile::Coherent, Profile::Discrete, Profile::Minimal] {
            let device = MockDevice::open(MockConfig {
                profile,
                ..Default::default()
            })?;
            run::<MockBackend>(&device, &map)?;
        }
        Ok(())
    })();
    drop(map);
    let _ = std::fs::remove_file(&path);
    outcome
}

fn main() -> ExitCode {
    match run_all() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("import_mmap: {error}");
            ExitCode::FAILURE
        }
    }
}
