//! Compiles Arbiter's subset of Envoy's ext_authz v3 API without a system `protoc`:
//! `protox` parses the files in `proto/`, `tonic-prost-build` writes the message and
//! service code, and `pbjson-build` writes the protobuf JSON mapping used by
//! `arbiter eval` and by the tests that check the input document.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/envoy/service/auth/v3/external_auth.proto",
        "proto/envoy/service/auth/v3/attribute_context.proto",
    ];
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(protos, ["proto"])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);

    // A request's headers, a dozen or so small strings decoded per request:
    // a BTreeMap takes them with fewer allocations and no hashing.
    let headers = ".envoy.service.auth.v3.AttributeContext.HttpRequest.headers";
    tonic_prost_build::configure()
        .btree_map(headers)
        .build_server(true)
        .build_client(true)
        .compile_well_known_types(true)
        .extern_path(".google.protobuf", "::pbjson_types")
        .include_file("protos.rs")
        .out_dir(&out_dir)
        .compile_fds(descriptors.clone())?;

    let descriptor_path = out_dir.join("descriptors.bin");
    std::fs::write(
        &descriptor_path,
        prost::Message::encode_to_vec(&descriptors),
    )?;
    pbjson_build::Builder::new()
        .register_descriptors(&std::fs::read(&descriptor_path)?)?
        // pbjson takes a message: HttpRequest's only map is its headers.
        .btree_map([".envoy.service.auth.v3.AttributeContext.HttpRequest"])
        .out_dir(&out_dir)
        .build(&[".envoy", ".google.rpc"])?;
    Ok(())
}
