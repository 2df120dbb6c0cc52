//! Compiles `proto/caffe.proto` with protox (pure Rust, no `protoc` needed) into
//! prost types plus an encoded descriptor set that prost-reflect uses to parse
//! the protobuf text format of `.prototxt` files. With the `cuda` feature it
//! also compiles the fused GPU kernels (`src/train/fused.cu`) to PTX with nvcc.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/caffe.proto");
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let fds = protox::compile(["proto/caffe.proto"], ["proto"])?;
    let descriptor_path = out.join("caffe_descriptor.bin");
    std::fs::write(&descriptor_path, prost::Message::encode_to_vec(&fds))?;
    prost_build::Config::new()
        .enable_type_names()
        .compile_fds(fds)?;
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        compile_ptx(&out)?;
    }
    compile_host_kernels();
    warn_without_nasm();
    Ok(())
}

/// mozjpeg-sys quietly builds libjpeg-turbo without its SIMD code when
/// `nasm` is missing on x86: the same pixels, but JPEG decoding at about
/// 40% of the speed. Say so once at build time.
fn warn_without_nasm() {
    let x86 = matches!(
        std::env::var("CARGO_CFG_TARGET_ARCH").as_deref(),
        Ok("x86_64" | "x86")
    );
    let found = std::process::Command::new("nasm")
        .arg("-v")
        .output()
        .is_ok_and(|o| o.status.success());
    if x86 && !found {
        println!(
            "cargo:warning=nasm not found: libjpeg-turbo is built without SIMD (JPEG decoding \
             ~2.5x slower, same pixels); install nasm (apt-get install nasm) and rebuild"
        );
    }
}

/// The same kernels as host C++ (one thread sweeping every element, see
/// `src/train/fused_host.h`), linked so unit tests can check them against
/// their CPU twins on a machine without a GPU.
fn compile_host_kernels() {
    println!("cargo:rerun-if-changed=src/train/fused.cu");
    println!("cargo:rerun-if-changed=src/train/fused_host.h");
    let mut build = cc::Build::new();
    build.cpp(true).warnings(false).file("src/train/fused.cu");
    if build.get_compiler().is_like_msvc() {
        // cl.exe (Windows' MSVC toolchain, not built here): /TP reads the
        // .cu file as C++, /FI includes the shim first; it fuses no
        // multiply-add unless asked to (/fp:contract).
        build.flag("/TP").flag("/FIsrc/train/fused_host.h");
    } else {
        build
            .flag("-x")
            .flag("c++")
            .flag("-include")
            .flag("src/train/fused_host.h")
            .flag("-ffp-contract=off");
    }
    build.compile("fused_host");
}

/// `nvcc --ptx` for the compute capability in `CUDA_COMPUTE_CAP` (default
/// 80: PTX that any sm_80+ driver JIT-compiles). `--fmad=false` keeps each
/// multiply and add separately rounded, as in the CPU twins.
fn compile_ptx(out: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    let src = "src/train/fused.cu";
    println!("cargo:rerun-if-changed={src}");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "80".into());
    let cap = cap.trim().replace('.', "");
    let nvcc = match std::env::var_os("CUDA_HOME") {
        Some(home) => PathBuf::from(home).join("bin").join("nvcc"),
        None => PathBuf::from("nvcc"),
    };
    let ptx = out.join("fused.ptx");
    let status = std::process::Command::new(&nvcc)
        .args(["--ptx", "-O3", "--fmad=false", "-std=c++17"])
        .arg(format!("--gpu-architecture=compute_{cap}"))
        .arg(src)
        .arg("-o")
        .arg(&ptx)
        .status()
        .map_err(|e| {
            format!(
                "cannot run {} ({e}); set CUDA_HOME or put nvcc on PATH (see ../shared/cuda)",
                nvcc.display()
            )
        })?;
    if !status.success() {
        return Err(format!("{} failed on {src}", nvcc.display()).into());
    }
    Ok(())
}
