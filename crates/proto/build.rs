//! Compiles every `.proto` under the workspace's `proto/` with protox (a pure-Rust protobuf
//! compiler, so no `protoc` binary is needed) and generates prost messages plus tonic clients and
//! servers. The encoded file descriptor set is written too, for gRPC server reflection, and the
//! topic list of `proto/topics.json` becomes typed constants (`fintech_proto::topics`); a topic
//! whose payload names no message of the contracts fails the build.
//!
//! The contracts import googleapis' `google/api/annotations.proto` (HTTP annotations for the
//! gateway's JSON transcoding). It comes from the pinned PyPI package googleapis-common-protos,
//! which `scripts/install-tools` copies into `.tools/proto/`; `GOOGLEAPIS_PROTO_DIR` points
//! elsewhere. It is never copied into the repository.

use std::path::{Path, PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let mut files = Vec::new();
    collect_protos(&proto_root, &mut files)?;
    files.sort();

    let googleapis = googleapis_dir(&proto_root)?;
    let mut compiler = protox::Compiler::new([&proto_root, &googleapis])?;
    compiler
        .include_imports(true)
        .include_source_info(true)
        .open_files(&files)?;
    let descriptors = compiler.file_descriptor_set();
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    // Encoded by protox itself, not re-encoded from prost-types: prost-types drops the custom
    // method options (`fintech.common.v1.authorization`) that the services read at start-up.
    std::fs::write(
        out_dir.join("fintech_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;

    let messages: Vec<String> = descriptors
        .file
        .iter()
        .flat_map(|file| {
            let package = file.package().to_owned();
            file.message_type
                .iter()
                .map(move |message| format!("{package}.{}", message.name()))
        })
        .collect();
    let topics_file = proto_root.join("topics.json");
    std::fs::write(out_dir.join("topics.rs"), topics_rs(&topics_file, &messages)?)?;
    println!("cargo:rerun-if-changed={}", topics_file.display());

    // prost's `Name` on every message: the protobuf full names carried in event headers come from
    // the contracts, never from string literals.
    let mut config = tonic_prost_build::Config::new();
    config.enable_type_names();
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds_with_config(descriptors, config)?;

    println!("cargo:rerun-if-changed={}", proto_root.display());
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    Ok(())
}

/// Where `google/api/annotations.proto` is: `GOOGLEAPIS_PROTO_DIR`, else `.tools/proto` of the
/// workspace. A clear error when neither has it, naming the command that provides it.
fn googleapis_dir(proto_root: &Path) -> Result<PathBuf, Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-env-changed=GOOGLEAPIS_PROTO_DIR");
    let dir = match std::env::var_os("GOOGLEAPIS_PROTO_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => proto_root.join("../.tools/proto"),
    };
    let annotations = dir.join("google/api/annotations.proto");
    if !annotations.is_file() {
        return Err(format!(
            "{} not found: run scripts/install-tools (it copies google/api/*.proto from the pinned PyPI \
             package googleapis-common-protos), or set GOOGLEAPIS_PROTO_DIR to a directory holding google/api/",
            annotations.display()
        )
        .into());
    }
    println!("cargo:rerun-if-changed={}", annotations.display());
    println!("cargo:rerun-if-changed={}", dir.join("google/api/http.proto").display());
    Ok(dir)
}

fn collect_protos(dir: &Path, files: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_protos(&path, files)?;
        } else if path.extension().is_some_and(|ext| ext == "proto") {
            files.push(path);
        }
    }
    Ok(())
}

/// The Rust constants of `topics.json`.
fn topics_rs(path: &Path, messages: &[String]) -> Result<String, Box<dyn std::error::Error>> {
    let text = std::fs::read_to_string(path)?;
    let json: serde_json::Value = serde_json::from_str(&text)?;
    let topics = json["topics"].as_array().ok_or("topics.json: no \"topics\" array")?;
    let mut out = String::new();
    let mut names = Vec::new();
    for topic in topics {
        let field = |key: &str| -> Result<Option<String>, String> {
            match &topic[key] {
                serde_json::Value::Null => Ok(None),
                serde_json::Value::String(value) => Ok(Some(value.clone())),
                other => Err(format!("topics.json: {key} must be a string or null, got {other}")),
            }
        };
        let name = field("name")?.ok_or("topics.json: a topic without a name")?;
        let partitions = topic["partitions"]
            .as_i64()
            .filter(|partitions| (1..=1000).contains(partitions))
            .ok_or_else(|| format!("topics.json: {name}: partitions must be 1-1000"))?;
        let key = field("key")?.ok_or_else(|| format!("topics.json: {name}: no key"))?;
        let producer = field("producer")?.ok_or_else(|| format!("topics.json: {name}: no producer"))?;
        let payload = field("payload")?;
        let event_type = field("event_type")?;
        if let Some(payload) = &payload
            && !messages.contains(payload)
        {
            return Err(format!("topics.json: {name}: payload {payload} is no message of proto/").into());
        }
        if payload.is_some() != event_type.is_some() {
            return Err(format!("topics.json: {name}: payload and event_type go together").into());
        }
        let constant = name.to_uppercase().replace(['.', '-'], "_");
        let option = |value: &Option<String>| {
            value
                .as_ref()
                .map_or("None".to_owned(), |value| format!("Some({value:?})"))
        };
        out.push_str(&format!(
            "/// `{name}`: key {key}, produced by {producer}.\npub const {constant}: Topic = Topic {{ name: {name:?}, partitions: {partitions}, key: {key:?}, payload: {}, event_type: {}, producer: {producer:?} }};\n",
            option(&payload),
            option(&event_type),
        ));
        names.push(constant);
    }
    out.push_str(&format!(
        "/// Every topic, in the order of `topics.json`.\npub const ALL: &[Topic] = &[{}];\n",
        names.join(", ")
    ));
    Ok(out)
}
