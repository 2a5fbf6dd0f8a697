//! Generates the code of `hsu.core.v1` from `proto/` with a pure-Rust protobuf compiler
//! (`protox`), so building needs no system `protoc`.

use std::path::Path;

const PROTOS: [&str; 1] = ["hsu/core/v1/core.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let include = Path::new("proto");
    println!("cargo:rerun-if-changed=proto");
    for proto in PROTOS {
        println!("cargo:rerun-if-changed=proto/{proto}");
    }
    let fds = protox::compile(PROTOS, [include])?;
    tonic_prost_build::configure()
        // The manager is the client (Shutdown); integrated processes such as testexe serve it.
        .build_server(true)
        .build_client(true)
        // Clients run on a caller-supplied connection, servers on the caller's server: no
        // tonic transport.
        .build_transport(false)
        .compile_fds(fds)?;
    Ok(())
}
