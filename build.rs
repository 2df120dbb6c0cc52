//! Compiles `proto/caffe.proto` with protox (pure Rust, no `protoc` needed) into
//! prost types plus an encoded descriptor set that prost-reflect uses to parse
//! the protobuf text format of `.prototxt` files.
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
    Ok(())
}
