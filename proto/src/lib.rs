//! Quiver's own protobuf messages and gRPC services.
//!
//! * [`cluster`]: the control plane between coordinator and executors (membership, heartbeats,
//!   executor status).
//! * [`frontdoor`]: the opaque tickets and prepared-statement handles the Flight SQL front door
//!   hands to clients.
//!
//! The Rust code under `src/gen/` is generated from `proto/*.proto` and checked in, so building
//! Quiver never needs `protoc`. The test `generated_code_is_up_to_date` regenerates it and fails on
//! any difference; run it with `QUIVER_REGENERATE_PROTO=1` to rewrite the checked-in files.

// Generated code: not ours to lint.
#[allow(unreachable_pub, missing_docs, clippy::all, clippy::clone_on_ref_ptr)]
pub mod cluster {
    include!("gen/quiver.cluster.v1.rs");
}

#[allow(unreachable_pub, missing_docs, clippy::all, clippy::clone_on_ref_ptr)]
pub mod frontdoor {
    include!("gen/quiver.frontdoor.v1.rs");
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    const PROTOS: &[&str] = &["proto/cluster.proto", "proto/frontdoor.proto"];

    #[test]
    fn generated_code_is_up_to_date() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let out = tempfile::tempdir().expect("temp dir");
        let protos: Vec<_> = PROTOS.iter().map(|p| root.join(p)).collect();
        tonic_prost_build::configure()
            .build_client(true)
            .build_server(true)
            .out_dir(out.path())
            .compile_protos(&protos, &[root.join("proto")])
            .expect("protoc must be installed (Debian: protobuf-compiler) to check generated code");

        let checked_in = root.join("src/gen");
        let regenerate = std::env::var_os("QUIVER_REGENERATE_PROTO").is_some();
        for entry in std::fs::read_dir(out.path()).expect("read out dir") {
            let entry = entry.expect("dir entry");
            let fresh = std::fs::read_to_string(entry.path()).expect("read generated");
            let target = checked_in.join(entry.file_name());
            if regenerate {
                std::fs::write(&target, &fresh).expect("write generated");
                continue;
            }
            let current = std::fs::read_to_string(&target).unwrap_or_default();
            assert!(
                current == fresh,
                "{} is stale: run `QUIVER_REGENERATE_PROTO=1 cargo test -p quiver-proto`",
                target.display()
            );
        }
    }
}
