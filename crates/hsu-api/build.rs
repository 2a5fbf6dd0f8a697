//! Generates the gRPC code from `proto/` with a pure-Rust protobuf compiler (`protox`), so
//! building needs no system `protoc`.

use std::path::Path;

// `hsu.core.v1` (what integrated processes serve) is compiled by `hsu-monitoring`, whose
// probes call it.
const PROTOS: [&str; 1] = ["hsu/procman/v1/procman.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let include = Path::new("proto");
    println!("cargo:rerun-if-changed=proto");
    for proto in PROTOS {
        println!("cargo:rerun-if-changed=proto/{proto}");
    }
    let fds = protox::compile(PROTOS, [include])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Clients are built on a caller-supplied channel (`XClient::new(channel)`), so the
        // library needs no tonic transport.
        .build_transport(false)
        .compile_fds(fds)?;
    Ok(())
}
